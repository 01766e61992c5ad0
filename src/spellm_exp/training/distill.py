"""A distillation run: check the config, build the Lightning Trainer, distil a SpeLLM, write its summary.

`distil(cfg, run_dir)` is what `python -m spellm_exp.train` runs, and what the experiments call for each
SpeLLM they need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import (
    CharsetConfig,
    DataConfig,
    HeadInit,
    HeadKind,
    HeadsConfig,
    LossConfig,
    Trainable,
    TrainConfig,
    model_config,
    typed,
)
from spellm_exp.core.charset import (
    SpellingError,
    TokenSpellings,
    build_alphabet,
    check_charset,
)
from spellm_exp.core.heads import (
    FACTORISED_KINDS,
    SIZE_FIELD,
    build_heads,
    check_rest,
    check_rest_outside,
    check_tail,
    settings_dict,
)
from spellm_exp.core.losses import resolve_objective, token_samples
from spellm_exp.core.spellm import META_FILE, CheckpointError, SpeLLM, checkpoint_folder, model_config_dict
from spellm_exp.data.datamodule import DistillDataModule, check_data_config
from spellm_exp.data.features import FeatureStore, TargetStore, feature_key
from spellm_exp.errors import SpellmError
from spellm_exp.provenance import provenance
from spellm_exp.teachers import TeacherConfigError, check_model_config, load_teacher
from spellm_exp.training.callbacks import (
    FlushLogsAtCheckpoints,
    ReplicaCheck,
    SpeLLMExport,
    TrainingClock,
    progress_bars,
)
from spellm_exp.training.distributed import check_launch
from spellm_exp.training.loggers import ResumableCSVLogger, build_loggers
from spellm_exp.training.module import DistillModule, DivergedError, exact_rest_tokens
from spellm_exp.training.run_folder import (
    DIVERGED,
    FINISHED,
    RUN_FILE,
    RUN_OUTPUTS,
    claimed_run_folder,
    write_run,
)

log = logging.getLogger(__name__)


class ConfigError(SpellmError, ValueError):
    """A run config that cannot work; raised before anything heavy loads."""


def check_train_config(cfg: DictConfig) -> None:
    """Every check that needs no weights, so a bad override fails in a second, not after loading."""
    try:
        charset: CharsetConfig = typed(CharsetConfig, cfg.charset)
        check_charset(charset.kind.value, charset.size, cfg.k)
        check_model_config(model_config(cfg))
        check_data_config(typed(DataConfig, cfg.data))
        train, loss = typed(TrainConfig, cfg.train), typed(LossConfig, cfg.loss)
        heads: HeadsConfig = typed(HeadsConfig, cfg.heads)
        HeadInit(cfg.heads_init)
        objective = resolve_objective(loss.objective, heads.kind)
    except (SpellingError, TeacherConfigError, ValueError) as err:
        raise ConfigError(str(err)) from err
    except Exception as err:  # omegaconf validation errors name the key and the allowed values
        raise ConfigError(str(err).splitlines()[0]) from err
    if loss.temperature <= 0 or loss.ce_weight < 0 or loss.chunk_elements < 1:
        raise ConfigError("loss.temperature must be > 0, loss.ce_weight >= 0 and loss.chunk_elements >= 1.")
    check_heads_config(heads, loss, objective)
    if train.lr <= 0:
        raise ConfigError(f"train.lr={train.lr} must be > 0.")
    if train.cache_features and train.trainable is not Trainable.heads:
        raise ConfigError(f"train.cache_features=true needs a frozen backbone (train.trainable=heads, not "
                          f"{train.trainable.value}); drop one of the two overrides.")
    if train.init_from is not None and checkpoint_folder(train.init_from) is None:
        raise ConfigError(f"train.init_from={train.init_from} is not a SpeLLM checkpoint or a training run folder "
                          f"(no {META_FILE} in it or in its spellm/ subfolder).")
    for name in train.freeze_heads:  # the parts of a head type do not depend on its sizes: probe a tiny one
        try:
            build_heads(heads, 2, 4, max(4, heads.tail_rank + 1)).part(name)  # wide enough for a factored tail
        except ValueError as err:
            raise ConfigError(f"train.freeze_heads: {err}") from err
    if train.cache_targets and not train.cache_features:
        raise ConfigError("train.cache_targets=true computes the targets from the cached backbone outputs: add "
                          "train.cache_features=true.")


def check_heads_config(heads: HeadsConfig, loss: LossConfig, objective: str) -> None:
    field = SIZE_FIELD.get(heads.kind)
    if field is not None and getattr(heads, field) < 1:
        raise ConfigError(f"heads.{field}={getattr(heads, field)} must be >= 1.")
    if heads.kind is HeadKind.shortlist:
        try:
            check_rest_outside(heads.rest_outside, check_rest(heads.rest))
            check_tail(heads.tail_rank, heads.exact_rows, heads.shortlist, hidden_size=None)  # d: when it loads
        except ValueError as err:
            raise ConfigError(str(err)) from err
    elif heads.tail_rank or heads.exact_rows:
        raise ConfigError(f"heads.tail_rank and heads.exact_rows factor a shortlist's rows: they need heads=shortlist "
                          f"(here heads={heads.kind.value}); drop them.")
    rest_field = SIZE_FIELD.get(heads.rest) if heads.kind is HeadKind.shortlist else None
    if rest_field is not None and getattr(heads, rest_field) < 1:
        raise ConfigError(f"heads.{rest_field}={getattr(heads, rest_field)} must be >= 1.")
    if objective == "token" and heads.kind not in FACTORISED_KINDS:
        if loss.top_k < 1 or loss.tail_samples < 0:
            raise ConfigError(f"loss.top_k={loss.top_k} must be >= 1 and loss.tail_samples={loss.tail_samples} "
                              ">= 0 for the token objective of heads that do not factorise.")
        if loss.temperature != 1.0:
            raise ConfigError(f"loss.temperature={loss.temperature}: heads={heads.kind.value} has no per-position "
                              "logits to soften; use loss.temperature=1.")
    if loss.exact_rest and (heads.kind is not HeadKind.shortlist or HeadKind(heads.rest) not in FACTORISED_KINDS
                            or objective != "token"):
        raise ConfigError("loss.exact_rest=true is the token objective's exact part for a shortlist's product rest: "
                          f"it needs heads=shortlist with heads.rest=linear or mlp (here heads={heads.kind.value}, "
                          f"heads.rest={HeadKind(heads.rest).value}, objective {objective}); set loss.exact_rest=false.")
    if heads.context_tokens and heads.kind is not HeadKind.shortlist:
        raise ConfigError(f"heads.context_tokens=true adds the seen tokens to a shortlist's softmax: it needs "
                          f"heads=shortlist (here heads={heads.kind.value}); set heads.context_tokens=false.")
    if heads.context_tokens and loss.exact_rest:
        raise ConfigError("heads.context_tokens=true takes the seen tokens out of the rest, which loss.exact_rest's "
                          "cached rest targets still hold; set loss.exact_rest=false.")
    read = settings_dict(heads)  # the fields this head type reads (what its checkpoint records)
    ignored = [f"heads.{f.name}={getattr(heads, f.name)}" for f in fields(HeadsConfig)
               if f.name not in read and getattr(heads, f.name) != f.default]
    if ignored:  # an option the type would drop silently (the specific checks above said why where they could)
        raise ConfigError(f"{', '.join(ignored)}: not read by the head type as configured ({read}); drop it, or "
                          "choose the head type that reads it (conf/heads/; a shortlist's heads.exact_rows needs "
                          "heads.tail_rank).")


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """The Lightning checkpoint to go on from: `ckpt_path`, or for `last` the run folder's own. A run that stopped
    before its first checkpoint starts again from step 0 in its folder (its partial outputs cleared)."""
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        return str(last)
    partial = [name for name in RUN_OUTPUTS if name != RUN_FILE and (run_dir / name).exists()]
    if partial and rank_zero_only.rank == 0:  # (the other ranks start once rank 0 is training)
        log.info("%s: no checkpoint yet; starting this run again from step 0 (clearing %s)", run_dir, partial)
        for path in (run_dir / name for name in partial):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return None


def checkpoint_step(path: str, module: DistillModule) -> int:
    """The step of the Lightning checkpoint to resume from, checked to be this run's: one of another run (another
    k, alphabet or head type) fails here with one line, not with a state-dict size mismatch inside Lightning."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # no copy of a backbone
        state, step = checkpoint["state_dict"], int(checkpoint["global_step"])
    except Exception as err:  # a truncated or foreign file: pickle, zip and key errors alike
        raise CheckpointError(f"ckpt_path: {path} is not a readable Lightning checkpoint ({err}); resume from "
                              "another checkpoint, or distil again without ckpt_path.") from None
    own = {name: p.shape for name, p in module.named_parameters() if p.requires_grad}
    wrong = [f"{name} {tuple(state[name].shape)} (this run: {tuple(shape)})" for name, shape in own.items()
             if name in state and state[name].shape != shape]
    missing = [name for name in own if name not in state]
    found = ([f"other shapes: {', '.join(wrong[:3])}"] if wrong else []) + (
        [f"it lacks {', '.join(missing[:3])}"] if missing else [])
    if found:
        raise CheckpointError(f"ckpt_path: {path} was written by another run: {'; '.join(found)}. Resume with that "
                              "run's own overrides (k, charset, heads), or distil again without ckpt_path.")
    return step


def _write_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes into a job's folder (.hydra/: config, hydra, overrides), written once the run holds the
    folder (train.yaml turns Hydra's own writing off, which happens before any check); only when `run_dir` is
    the running Hydra job's own folder."""
    if not HydraConfig.initialized() or Path(HydraConfig.get().runtime.output_dir).resolve() != run_dir.resolve():
        return
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}), folder / "hydra.yaml")


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list) -> pl.Trainer:
    """The Lightning Trainer of `cfg.trainer` (conf/trainer/*.yaml); no weights are loaded yet."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator} needs a CUDA GPU and a CUDA build of torch; "
                          f"this machine has none (torch {torch.__version__}). Use trainer=cpu (the default), or "
                          "trainer=ddp trainer.accelerator=cpu trainer.precision=32-true trainer.devices=N for "
                          "several CPU processes.")
    try:
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg, run_dir), callbacks=callbacks,
                                          default_root_dir=str(run_dir))
    except (InstantiationException, ValueError, RuntimeError) as err:  # Lightning's errors are ValueErrors
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        raise ConfigError(f"{cause} The trainer configs are in conf/trainer/: trainer=cpu (default), trainer=gpu, "
                          "trainer=ddp trainer.devices=N, trainer=fsdp trainer.devices=N.") from err
    try:
        check_launch(trainer)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return trainer


def distil(cfg: DictConfig, run_dir: Path) -> dict:
    """Distil as `cfg` says, writing into `run_dir` (which this run holds while it writes: training.run_folder);
    returns the summary. A diverged run (a non-finite loss) raises DivergedError and leaves no SpeLLM export."""
    check_train_config(cfg)
    with claimed_run_folder(run_dir, cfg, resume=cfg.ckpt_path == "last") as record:
        if rank_zero_only.rank == 0:
            _write_hydra_files(cfg, run_dir)
        try:
            summary = _distil(cfg, run_dir)
        except DivergedError:
            if rank_zero_only.rank == 0:
                shutil.rmtree(run_dir / "spellm", ignore_errors=True)  # an earlier export is not this run's result
                write_run(run_dir, {**record, "status": DIVERGED})
            raise
        if rank_zero_only.rank == 0:
            write_run(run_dir, {**record, "status": FINISHED, "seconds": summary["seconds"]})
    return summary


def _distil(cfg: DictConfig, run_dir: Path) -> dict:
    ckpt_path = _resume_path(cfg, run_dir)
    started_provenance = provenance(OmegaConf.to_container(cfg, resolve=True))
    every = cfg.checkpoint.every_n_train_steps
    replicas, clock = ReplicaCheck(), TrainingClock()
    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1,
                                 every_n_train_steps=every),
                 SpeLLMExport(run_dir / "spellm", every_n_train_steps=every), replicas, clock,
                 FlushLogsAtCheckpoints(every), *progress_bars(cfg.trainer.enable_progress_bar)]
    trainer = build_trainer(cfg, run_dir, callbacks)
    pl.seed_everything(cfg.seed, workers=True)

    teacher = load_teacher(model_config(cfg))
    data_cfg: DataConfig = typed(DataConfig, cfg.data)
    if data_cfg.cache_dir is None:
        data_cfg.cache_dir = cfg.paths.cache_dir
    datamodule = DistillDataModule(teacher.tokenizer, data_cfg)
    counts = datamodule.train_token_counts()
    charset: CharsetConfig = typed(CharsetConfig, cfg.charset)
    # every rank counts the same cached blocks, so every rank builds this same alphabet and table
    alphabet = build_alphabet(charset.kind.value, charset.size, TokenSpellings.from_tokenizer(teacher.tokenizer),
                              counts, charset.escape)
    spellm = SpeLLM.build(teacher, alphabet, cfg.k, init=cfg.heads_init, seed=cfg.seed,
                          heads=typed(HeadsConfig, cfg.heads), counts=counts)
    copied = []
    if cfg.train.init_from:
        copied = spellm.init_heads_from(checkpoint_folder(cfg.train.init_from))
        log.info("heads: %d tensors start from %s: %s", len(copied), cfg.train.init_from, ", ".join(copied))
    if getattr(spellm.heads, "tail_rank", 0) and "tail_in" not in copied and HeadInit(cfg.heads_init) is \
            HeadInit.unembedding_mean:
        fit_tail_to_hidden_states(spellm, datamodule)
    coverage = spellm.spelling.coverage(counts[: spellm.spelling.vocab_size])
    log.info("alphabet: %s, |Sigma|=%d, k=%d; coverage %s", alphabet.kind.value, alphabet.size, cfg.k, coverage)

    train_cfg: TrainConfig = typed(TrainConfig, cfg.train)
    loss_cfg: LossConfig = typed(LossConfig, cfg.loss)
    features = feature_store(cfg, teacher, datamodule) if train_cfg.cache_features else None
    targets = target_store(features, spellm, loss_cfg, datamodule) if train_cfg.cache_targets else None
    module = DistillModule(spellm, train_cfg, loss_cfg, features, targets)
    if ckpt_path is not None:
        step = checkpoint_step(ckpt_path, module)
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.keep_rows_before(step)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.global_step == 0:  # trainer.max_steps=0: the starting heads (train.init_from's) as this config sets them
        callbacks[1].export(trainer, module)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    blocks_per_step = trainer.accumulate_grad_batches * data_cfg.batch_size * trainer.world_size
    summary = {
        "teacher": teacher.info.as_dict(),
        "k": cfg.k,
        "alphabet": {"kind": alphabet.kind.value, "sigma": alphabet.size},
        "heads": {**settings_dict(spellm.heads.settings()), "params": spellm.heads.num_parameters(),
                  "decode_flops": spellm.heads.decode_flops(), "loss_objective": module.objective},
        "trainable": train_cfg.trainable.value,
        "coverage": coverage,
        "steps": trainer.global_step,
        "tokens_seen": trainer.global_step * blocks_per_step * data_cfg.block_size,
        "seconds": round(clock.seconds, 1),  # the run's interrupted attempts included
        "val": metrics,
        "devices": {"accelerator": type(trainer.accelerator).__name__, "strategy": type(trainer.strategy).__name__,
                    "world_size": trainer.world_size, "precision": trainer.precision},
        "replicas": replicas.report,
        "spellm_checkpoint": str(run_dir / "spellm"),
        "provenance": started_provenance,
    }
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info("wrote %s", run_dir / "summary.json")
    return summary


TAIL_FIT_BLOCKS = 32  # ~4k positions: E[h h^T] of a d <= 1k model is well estimated


@torch.no_grad()
def fit_tail_to_hidden_states(spellm: SpeLLM, datamodule: DistillDataModule) -> None:
    """A factored list tail (heads.tail_rank) := the best rank-r product of its teacher rows for the logits of the
    frozen backbone's hidden states on the first training blocks (core.low_rank.data_aware): a plain SVD keeps
    little of what those logits depend on (results/list_rank.md)."""
    blocks = datamodule.train_blocks[:TAIL_FIT_BLOCKS].to(spellm.spellable.device)
    hidden = torch.cat([spellm.backbone(blocks[i: i + datamodule.cfg.batch_size])[0].flatten(0, 1).float()
                        for i in range(0, len(blocks), datamodule.cfg.batch_size)])
    spellm.heads.fit_rows(spellm.causal_lm.get_output_embeddings().weight.detach(), hidden.T @ hidden / len(hidden))
    log.info("heads: the list's tail (rank %d) fitted to %d hidden states", spellm.heads.tail_rank, len(hidden))


def feature_store(cfg: DictConfig, teacher, datamodule: DistillDataModule) -> FeatureStore:
    """The teacher's cached backbone outputs for these blocks, shared by every run that uses them."""
    # where the weights are cached and which attention kernel runs do not change what the backbone computes
    teacher_config = {k: v for k, v in model_config_dict(teacher.config).items()
                      if k not in ("cache_dir", "attn_implementation", "device")}
    key = {"teacher": teacher_config, "teacher_info": teacher.info.as_dict(),
           "blocks": datamodule.blocks_key(), "val_blocks": datamodule.cfg.val_blocks}
    folder = Path(cfg.paths.features_dir).expanduser() / feature_key(key)
    return FeatureStore(folder, datamodule.n_blocks, datamodule.cfg.block_size, teacher.info.hidden_size, key)


def target_store(features: FeatureStore, spellm: SpeLLM, loss: LossConfig, datamodule: DistillDataModule
                 ) -> TargetStore:
    """The teacher's targets on the cached features, for this spelling table and these loss settings."""
    top_k, tail_samples = token_samples(loss, spellm.heads.kind)
    key = {"features": features.meta["key"], "spelling": spellm.spelling.fingerprint(),
           "temperature": loss.temperature, "top_k": top_k, "tail_samples": tail_samples}
    rest = exact_rest_tokens(spellm, loss)
    if rest is not None:  # which tokens are the rest's: the shortlist's choice (only then in the key: older stores)
        key["rest_tokens"] = hashlib.sha256(rest.cpu().numpy().tobytes()).hexdigest()[:16]
    return TargetStore(features.folder / "targets" / feature_key(key), datamodule.n_blocks,
                       datamodule.cfg.block_size, spellm.k, spellm.alphabet.size, top_k, tail_samples, key,
                       exact_rest=rest is not None)
