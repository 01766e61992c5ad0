"""The commands: thin Hydra entry points (`python -m spellm_exp.<command>`, or the `spellm-*` console scripts).

Nothing imports a module of this folder; each one only reads its config, calls the library and turns the
library's config errors into a one-line message. What they share is here.
"""

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from spellm_exp.config import register_configs
from spellm_exp.errors import SpellmError
from spellm_exp.provenance import command_line

register_configs()  # before any entry point composes its config
# the Rust tokenizer's worker threads (a batch of prompts is encoded in parallel) stay around and compete with
# torch's threads: on 2 cores that moved a batch-8 decode-step ratio from 0.73 to 0.96. Off unless asked for.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger(__name__)


TRACEBACK_SWITCH = "SPELLM_TRACEBACK"  # =1: a command's own errors end in their traceback too (debugging)


@contextmanager
def exit_on(*errors: type[Exception]) -> Iterator[None]:
    """Bad input ends the command with a one-line message naming the fix (exit status 1), not a traceback: the
    project's own errors (spellm_exp.errors.SpellmError) always, and the other `errors` named."""
    try:
        yield
    except (SpellmError, *errors) as err:
        if os.environ.get(TRACEBACK_SWITCH) == "1":
            raise
        raise SystemExit(f"error: {err}") from None


def write_as_command(write: Callable[[DictConfig, str], list[Path]], cfg: DictConfig, module: str,
                     errors: tuple[type[Exception], ...] = (ValueError,)) -> None:
    """Run a table builder as the command `python -m <module>`, and log the files it wrote."""
    with exit_on(*errors):
        paths = write(cfg, command_line(module))
    for path in paths:
        log.info("wrote %s", path)
