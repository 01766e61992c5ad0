"""`python -m spellm_exp.evaluate`, the documented form of the command in spellm_exp/cli/evaluate.py."""

from spellm_exp.cli.evaluate import main

if __name__ == "__main__":
    main()
