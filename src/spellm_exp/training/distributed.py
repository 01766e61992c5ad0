"""What multi-device distillation needs beyond Lightning's own strategies (conf/trainer/{ddp,fsdp}.yaml).

- `wrap_decoder_layers`: the FSDP auto-wrap policy of conf/trainer/fsdp.yaml: one FSDP unit per
  transformer block, for every Hugging Face family (their blocks are all `*DecoderLayer`);
- `full_weights`: gathers FSDP-sharded weights for an export that reads them on rank 0;
- `check_launch`: refuses a set-up that Lightning would launch wrongly, before any weights load;
- `check_same_on_every_rank`: every rank builds the alphabet and spelling table from the same cached
  blocks; this proves they agree before any step runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def wrap_decoder_layers(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: descend everywhere, wrap each decoder block in its own unit (the root unit
    keeps the embeddings, the final norm and the SpeLLM heads)."""
    return recurse or type(module).__name__.endswith("DecoderLayer")


def full_weights(trainer: pl.Trainer) -> AbstractContextManager:
    """Inside this context rank 0 sees whole parameters; a collective under FSDP, so every rank enters it."""
    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False, rank0_only=True)
    return nullcontext()


def spawns_script_copies(trainer: pl.Trainer) -> bool:
    """True when Lightning will start this script again for the other devices of this node (its
    subprocess launcher), as opposed to torchrun/SLURM having started every process already."""
    from lightning.pytorch.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    launcher = trainer.strategy.launcher
    return (isinstance(launcher, _SubprocessScriptLauncher) and trainer.num_devices > 1
            and not trainer.strategy.cluster_environment.creates_processes_externally)


def check_launch(trainer: pl.Trainer) -> None:
    """Lightning starts the extra processes of a multi-device run by re-running this command; inside a
    Hydra multirun (-m) every copy would run the whole sweep again."""
    if spawns_script_copies(trainer) and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            f"trainer.devices={trainer.num_devices} inside a Hydra multirun (-m): Lightning starts the other "
            "devices' processes by re-running the command, which would re-run the whole sweep. Start the sweep "
            "under torchrun, which starts every process itself and runs the jobs in step: torchrun "
            "--nproc_per_node=N -m spellm_exp.train -m ... hydra.sweep.dir=<one folder for all processes>; "
            "or run the jobs one by one without -m.")


def check_same_on_every_rank(what: str, fingerprint: str, all_gather: Callable[[torch.Tensor], torch.Tensor],
                             device: torch.device) -> None:
    """Raise unless every rank holds the same `fingerprint` (a hex digest) of `what`."""
    mine = torch.tensor([int(fingerprint[:15], 16)], dtype=torch.int64, device=device)
    gathered = all_gather(mine).flatten().tolist()
    if len(set(gathered)) > 1:
        raise RuntimeError(f"The ranks built different {what} ({len(set(gathered))} versions): they must read the "
                           "same data and config. Check that every node sees the same paths.cache_dir contents "
                           "and overrides.")
