"""`python -m spellm_exp.train`, the documented form of the command in spellm_exp/cli/train.py."""

from spellm_exp.cli.train import main

if __name__ == "__main__":
    main()
