"""`python -m spellm_exp.results_index [results_dir]` (`spellm-results-index`): regenerate results/README.md, the
index of every table and plot with the command that wrote it and when."""

import sys

from spellm_exp.reporting.index import write_index


def main() -> None:
    print(write_index(sys.argv[1] if len(sys.argv) > 1 else "results"))


if __name__ == "__main__":
    main()
