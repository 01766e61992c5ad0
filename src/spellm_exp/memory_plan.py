"""`python -m spellm_exp.memory_plan`, the documented form of the command in spellm_exp/cli/memory_plan.py."""

from spellm_exp.cli.memory_plan import main

if __name__ == "__main__":
    main()
