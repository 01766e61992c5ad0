"""`python -m spellm_exp.table3`, the documented form of the command in spellm_exp/cli/table3.py."""

from spellm_exp.cli.table3 import main

if __name__ == "__main__":
    main()
