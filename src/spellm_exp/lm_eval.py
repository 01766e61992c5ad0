"""`python -m spellm_exp.lm_eval`, the documented form of the command in spellm_exp/cli/lm_eval.py."""

from spellm_exp.cli.lm_eval import main

if __name__ == "__main__":
    main()
