"""`python -m spellm_exp.bench_distill`, the documented form of the command in spellm_exp/cli/bench_distill.py."""

from spellm_exp.cli.bench_distill import main

if __name__ == "__main__":
    main()
