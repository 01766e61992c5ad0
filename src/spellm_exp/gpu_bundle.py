"""`python -m spellm_exp.gpu_bundle`, the documented form of the command in spellm_exp/cli/gpu_bundle.py."""

from spellm_exp.cli.gpu_bundle import main

if __name__ == "__main__":
    main()
