"""`python -m spellm_exp.bench`, the documented form of the command in spellm_exp/cli/bench.py."""

from spellm_exp.cli.bench import main

if __name__ == "__main__":
    main()
