"""`python -m spellm_exp.describe`, the documented form of the command in spellm_exp/cli/describe.py."""

from spellm_exp.cli.describe import main

if __name__ == "__main__":
    main()
