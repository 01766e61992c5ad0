"""`python -m spellm_exp.results_index`, the documented form of the command in spellm_exp/cli/results_index.py."""

from spellm_exp.cli.results_index import main

if __name__ == "__main__":
    main()
