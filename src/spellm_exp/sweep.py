"""`python -m spellm_exp.sweep`, the documented form of the command in spellm_exp/cli/sweep.py."""

from spellm_exp.cli.sweep import main

if __name__ == "__main__":
    main()
