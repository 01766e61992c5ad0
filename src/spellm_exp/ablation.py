"""`python -m spellm_exp.ablation`, the documented form of the command in spellm_exp/cli/ablation.py."""

from spellm_exp.cli.ablation import main

if __name__ == "__main__":
    main()
