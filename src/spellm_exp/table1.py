"""`python -m spellm_exp.table1`, the documented form of the command in spellm_exp/cli/table1.py."""

from spellm_exp.cli.table1 import main

if __name__ == "__main__":
    main()
