"""`python -m spellm_exp.table2`, the documented form of the command in spellm_exp/cli/table2.py."""

from spellm_exp.cli.table2 import main

if __name__ == "__main__":
    main()
