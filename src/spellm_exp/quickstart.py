"""`python -m spellm_exp.quickstart`, the documented form of the command in spellm_exp/cli/quickstart.py."""

from spellm_exp.cli.quickstart import main

if __name__ == "__main__":
    main()
