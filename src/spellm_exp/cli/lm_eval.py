"""`python -m spellm_exp.lm_eval <lm-eval arguments>` (`spellm-lm-eval`): the harness's own CLI, with
`--model spellm` registered.

lm-eval 0.4.13 discovers models only from its own registry (it has no entry-point plugins), so this
imports our model (which registers "spellm") and hands every argument to the harness unchanged:

    python -m spellm_exp.lm_eval --model spellm --model_args checkpoint=outputs/train/<run> \\
        --tasks arc_easy --include_path <folder from spellm_exp.evaluation.tasks.write_task_yamls> --limit 50
"""

from lm_eval.__main__ import cli_evaluate

import spellm_exp.evaluation.harness  # noqa: F401  (registers the "spellm" model)


def main() -> None:
    cli_evaluate()


if __name__ == "__main__":
    main()
