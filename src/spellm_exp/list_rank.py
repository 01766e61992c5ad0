"""`python -m spellm_exp.list_rank`, the documented form of the command in spellm_exp/cli/list_rank.py."""

from spellm_exp.cli.list_rank import main

if __name__ == "__main__":
    main()
