"""`python -m spellm_exp.coverage`, the documented form of the command in spellm_exp/cli/coverage.py."""

from spellm_exp.cli.coverage import main

if __name__ == "__main__":
    main()
