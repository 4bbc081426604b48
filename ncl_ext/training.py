"""The one training loop every ncl_ext recipe uses.

Built on Hugging Face Accelerate, so the same code runs on a CPU, one GPU, or many GPUs
and nodes (``accelerate launch`` or ``torchrun``, DDP with sync-BN). It adds what a
contrastive run needs and nothing else: LARS / SGD / AdamW from timm with bias and
norm parameters excluded from weight decay, a warmup + cosine schedule (timm), gradient
accumulation, mixed precision, a tqdm progress bar, JSONL/CSV logs of the loss and of
the feature statistics that NCL changes (sparsity, active dimensions, effective rank),
atomic safetensors checkpoints (:mod:`ncl_ext.checkpoint`) and exact resume.

A recipe supplies the model, a batch source and a ``compute_loss(model, batch)``
function that returns the loss, or a dict with ``"loss"`` and optionally ``"features"``
(whose statistics are logged) and other scalars to log.

Examples:
    >>> import torch
    >>> from ncl_ext.training import TrainConfig, Trainer, TensorBatches
    >>> model = torch.nn.Linear(4, 2)
    >>> data = TensorBatches(torch.randn(32, 4), batch_size=8)
    >>> def compute_loss(model, batch):
    ...     return model(batch).pow(2).mean()
    >>> config = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", warmup_epochs=0, progress=False)
    >>> result = Trainer(model, compute_loss, data, config, output_dir=None).fit()
    >>> len(result.history) > 0
    True
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ncl_ext.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, write_text_atomically
from ncl_ext.log import logger, progress

__all__ = [
    "BatchSource",
    "TensorBatches",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "differing_keys",
    "make_accelerator",
    "read_history",
    "seed_everything",
]

OPTIMIZERS = ("lars", "sgd", "adamw")
LOG_COLUMNS_FIRST = ("epoch", "step", "lr", "loss")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every recipe.

    ``lr`` is the learning rate actually used (recipes apply the ``batch / 256`` scaling
    rule themselves); ``warmup_epochs`` may be fractional; the warm-up starts at
    ``warmup_start_lr`` (``None``: ``lr / 1000``) and the cosine ends at ``min_lr``.

    LARS is timm's ``Lars`` with ``trust_coeff=lars_trust_coeff`` and ``trust_clip=lars_clip``,
    and biases and normalisation weights in a group without weight decay, which timm's LARS
    also leaves out of the trust ratio: the update of solo-learn's LARS with ``eta``,
    ``clip_lr`` and ``exclude_bias_n_norm``, which the official NCL configs use
    (``eta: 0.02, clip_lr: True, exclude_bias_n_norm: True``).

    The loop watches what NCL can go wrong on: it warns once when fewer than
    ``min_active_fraction`` of the feature dimensions fire in a logged batch (collapse onto a
    few units) and when more than ``max_dead_row_fraction`` of its samples have no active
    unit at all. ``name`` labels the progress bar and the log messages.
    """

    epochs: int = 100
    lr: float = 0.3
    optimizer: str = "lars"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lars_trust_coeff: float = 0.02
    lars_clip: bool = True
    warmup_epochs: float = 10.0
    warmup_start_lr: float | None = None
    min_lr: float = 0.0
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every: int = 200  # batches between checkpoints (taken at the next optimizer step)
    log_every: int = 10
    sync_batchnorm: bool = True
    progress: bool = True
    name: str = "train"
    min_active_fraction: float = 0.1
    max_dead_row_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; expected one of {PRECISIONS}")
        for name in ("epochs", "grad_accum_steps", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected an integer >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}; expected a positive learning rate")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r}; expected >= 0")

    def optimizer_summary(self) -> dict[str, Any]:
        """The optimizer and schedule these settings build, as ``--dry-run`` shows them."""
        start = self.lr * 1e-3 if self.warmup_start_lr is None else self.warmup_start_lr
        summary = {
            "name": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "schedule": (
                f"linear warm-up over {self.warmup_epochs:g} epochs from {start:g}, "
                f"then cosine to {self.min_lr:g}, per step"
            ),
            "no_weight_decay": "biases and normalisation weights (1-D parameters)",
        }
        if self.optimizer != "adamw":
            summary["momentum"] = self.momentum
        if self.optimizer == "lars":
            summary.update(
                trust_coefficient=self.lars_trust_coeff,
                trust_clip=self.lars_clip,
                lars_excludes="biases and normalisation weights (no trust ratio, no weight decay)",
                implementation="timm.optim.Lars",
            )
        if self.max_grad_norm:
            summary["max_grad_norm"] = self.max_grad_norm
        return summary


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs between two settings mappings.

    Examples:
        >>> differing_keys({"epochs": 6, "lr": 0.1}, {"epochs": 8, "lr": 0.1})
        ['epochs: 6 -> 8']
    """
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


class BatchSource(Protocol):
    """What the loop iterates: ``len()`` batches per epoch, resumable at any batch."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield the batches of ``epoch`` from index ``start`` on, the same on every call."""
        ...


class TensorBatches:
    """Shuffled mini-batches of tensors already in memory (a minimal :class:`BatchSource`).

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, so resuming at
    any batch reproduces the uninterrupted run. Yields one tensor, or a tuple when
    several tensors are given.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0, drop_last: bool = True) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("tensors must be one or more tensors with the same first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected >= 1")
        self.tensors, self.batch_size, self.seed, self.drop_last = tensors, batch_size, seed, drop_last

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.tensors[0]), generator=generator)
        for index in range(start, len(self)):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            picked = tuple(t[rows.to(t.device)] for t in self.tensors)
            yield picked[0] if len(picked) == 1 else picked


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(device: str | None = None, mixed_precision: str = "no", compile: bool = False) -> Any:
    """An ``accelerate.Accelerator`` for one run.

    ``device`` is ``None`` (the best available, or the one ``accelerate launch`` /
    ``torchrun`` assigns to this process), ``"cpu"``, ``"cuda"`` or ``"mps"``; choose
    GPUs with ``CUDA_VISIBLE_DEVICES``. ``compile`` compiles the model with TorchInductor.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device not in (None, "cpu", "cuda", "mps"):
        raise ValueError(
            f"device={device!r}; expected cpu, cuda or mps (pick GPUs with CUDA_VISIBLE_DEVICES, "
            "or launch several processes with accelerate launch / torchrun)"
        )
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r}; expected one of {PRECISIONS}")
    # Accelerate keeps one global state per process; a notebook or a test may run several
    # recipes with different precisions in one process, so start each from a clean state.
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision, cpu=device == "cpu", dynamo_backend="inductor" if compile else "no"
    )


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer ``config.optimizer`` over ``model``, with biases and norm weights in a no-decay group.

    For LARS this is the update of solo-learn's LARS (``eta=lars_trust_coeff``,
    ``clip_lr=lars_clip``, ``exclude_bias_n_norm=True``): see :class:`TrainConfig`.
    """
    from timm.optim import create_optimizer_v2

    extra = {"momentum": config.momentum} if config.optimizer != "adamw" else {}
    if config.optimizer == "lars":
        extra.update(trust_coeff=config.lars_trust_coeff, trust_clip=config.lars_clip)
    return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **extra)


LossFunction = Callable[[nn.Module, Any], "torch.Tensor | dict[str, Any]"]


class Trainer:
    """Train ``model`` with ``compute_loss`` on ``batches``; checkpoint into ``output_dir``.

    Args:
        model: the module to train (wrapped for DDP / mixed precision by Accelerate).
        compute_loss: ``(model, batch) -> loss`` or ``-> {"loss": ..., "features": ...}``.
        batches: a :class:`BatchSource` (already sharded per process when distributed),
            or a ``torch.utils.data.DataLoader`` (sharded by Accelerate).
        config: :class:`TrainConfig`.
        output_dir: where ``checkpoints/``, ``log.jsonl`` and ``log.csv`` go; ``None``
            trains without checkpoints or logs (quick experiments, tests).
        accelerator: an ``accelerate.Accelerator``; one is created when not given.
        evaluate_epoch: optional ``(model, epoch) -> {metric: number}`` run at the end of
            every epoch (model in eval mode, on every process); its metrics are added to
            that epoch's last log record, so they are saved and survive a resume.
    """

    def __init__(
        self,
        model: nn.Module,
        compute_loss: LossFunction,
        batches: BatchSource | torch.utils.data.DataLoader,
        config: TrainConfig,
        output_dir: str | os.PathLike | None,
        accelerator: Any = None,
        evaluate_epoch: Callable[[nn.Module, int], dict[str, float]] | None = None,
    ) -> None:
        if config.warmup_epochs > config.epochs:
            logger.warning(
                f"[{config.name}] warmup_epochs={config.warmup_epochs:g} is longer than epochs={config.epochs}: "
                "the learning rate never reaches its peak"
            )
        self.config = config
        self.compute_loss = compute_loss
        self.evaluate_epoch = evaluate_epoch
        self.accelerator = accelerator or make_accelerator(mixed_precision=config.mixed_precision)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        distributed_gpu = self.accelerator.num_processes > 1 and self.accelerator.device.type == "cuda"
        if distributed_gpu and config.sync_batchnorm:  # torch's SyncBatchNorm runs on GPUs only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.optimizer = build_optimizer(model, config)
        if isinstance(batches, torch.utils.data.DataLoader):
            batches = _DataLoaderBatches(self.accelerator.prepare(batches), self.accelerator)
        self.batches = batches
        if len(batches) < 1:
            raise ValueError("the training data yields no batch per epoch: lower batch_size or add data")
        self.updates_per_epoch = math.ceil(len(batches) / config.grad_accum_steps)
        self.scheduler = self._build_scheduler()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    def _build_scheduler(self) -> Any:
        from timm.scheduler import CosineLRScheduler

        config = self.config
        return CosineLRScheduler(
            self.optimizer,
            t_initial=config.epochs * self.updates_per_epoch,
            warmup_t=round(config.warmup_epochs * self.updates_per_epoch),
            warmup_lr_init=config.lr * 1e-3 if config.warmup_start_lr is None else config.warmup_start_lr,
            lr_min=config.min_lr,
            t_in_epochs=False,
        )

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.output_dir / "checkpoints" if self.output_dir is not None else None

    def fit(self) -> TrainResult:
        """Train to ``config.epochs``, resuming from the last checkpoint if there is one."""
        config, accelerator = self.config, self.accelerator
        state = self._resume()
        resumed_from = state["step"] if state["step"] else None
        history: list[dict[str, float]] = state["history"]
        if state.get("finished"):
            return TrainResult(accelerator.unwrap_model(self.model), history, resumed_from)

        total = config.epochs * len(self.batches)
        bar = progress(
            desc=f"train {config.name}", total=total, initial=state["step"], unit="batch",
            enabled=config.progress and accelerator.is_main_process,
        )
        self.model.train()
        step, update = state["step"], state["update"]
        saved_at = step
        started = time.perf_counter()
        for epoch in range(state["epoch"], config.epochs):
            first = step - epoch * len(self.batches)
            for index, batch in enumerate(self.batches.batches(epoch, start=first), start=first):
                last_in_update = (index + 1) % config.grad_accum_steps == 0 or index + 1 == len(self.batches)
                output = self._train_step(batch, sync=last_in_update)
                step += 1
                if last_in_update:
                    update += 1
                    self.scheduler.step_update(update)
                if step % config.log_every == 0 or index + 1 == len(self.batches):
                    record = self._log_record(output, epoch, step, started)
                    history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                bar.update(1)
                at_boundary = index + 1 == len(self.batches)
                if at_boundary and self.evaluate_epoch is not None:
                    history[-1].update(self._evaluate(epoch))
                if last_in_update and (step - saved_at >= config.checkpoint_every or at_boundary):
                    next_epoch = epoch + 1 if at_boundary else epoch
                    self._save(step, update, next_epoch, history, finished=step == total)
                    saved_at = step
        bar.close()
        accelerator.wait_for_everyone()
        return TrainResult(accelerator.unwrap_model(self.model), history, resumed_from)

    def _evaluate(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate_epoch(self.accelerator.unwrap_model(self.model), epoch)
        self.model.train()
        return {key: float(value) for key, value in metrics.items()}

    def _train_step(self, batch: Any, sync: bool) -> dict[str, Any]:
        accum = self.config.grad_accum_steps
        context = self.accelerator.no_sync(self.model) if not sync else nullcontext()
        with context:
            output = self.compute_loss(self.model, batch)
            output = output if isinstance(output, dict) else {"loss": output}
            self.accelerator.backward(output["loss"] / accum)
        if sync:
            if self.config.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return output

    def _log_record(self, output: dict[str, Any], epoch: int, step: int, started: float) -> dict[str, float]:
        loss = float(output["loss"].detach())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at epoch {epoch}, step {step}; "
                "lower the learning rate, or use mixed_precision='no', and re-run to resume from the last checkpoint"
            )
        record = {"epoch": epoch, "step": step, "lr": self.optimizer.param_groups[0]["lr"], "loss": loss}
        for key, value in output.items():
            if key == "features" and value is not None:
                record.update(_feature_statistics(value.detach()))
                self._watch_features(record)
            elif key != "loss" and isinstance(value, (torch.Tensor, float, int)):
                record[key] = float(value)
        record["seconds"] = round(time.perf_counter() - started, 3)
        return record

    def _watch_features(self, record: dict[str, float]) -> None:
        """Warn once per run when the logged batch shows NCL's failure modes (few active units, dead samples)."""
        config, warned = self.config, self.__dict__.setdefault("_warned", set())
        if record["active_dims"] < config.min_active_fraction * record["num_dims"] and "dims" not in warned:
            warned.add("dims")
            logger.warning(
                f"[{config.name}] only {record['active_dims']:.0f} of {record['num_dims']:.0f} feature dimensions fire "
                f"at step {record['step']} (below {config.min_active_fraction:.0%}): the non-negative head is "
                "collapsing; try nonneg=rep_relu, a lower learning rate or a higher temperature"
            )
        if record["dead_rows"] > config.max_dead_row_fraction and "rows" not in warned:
            warned.add("rows")
            logger.warning(
                f"[{config.name}] {record['dead_rows']:.0%} of the samples in the batch at step {record['step']} have "
                "no active feature (all-zero rows get no gradient through the normalisation)"
            )

    def _save(self, step: int, update: int, epoch: int, history: list, finished: bool) -> None:
        self.accelerator.wait_for_everyone()
        if self.checkpoint_dir is None or not self.accelerator.is_main_process:
            return
        trainer_state = {
            "step": step, "update": update, "epoch": epoch, "finished": finished, "history": history,
            "settings": self._settings(),
        }
        extra_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
        }
        save_checkpoint(self.checkpoint_dir, self.accelerator.unwrap_model(self.model), trainer_state, extra_state)
        _write_logs(self.output_dir, history)

    def _resume(self) -> dict[str, Any]:
        fresh = {"step": 0, "update": 0, "epoch": 0, "history": []}
        if self.checkpoint_dir is None or latest_checkpoint(self.checkpoint_dir) is None:
            return fresh
        state = load_checkpoint(self.checkpoint_dir, self.accelerator.unwrap_model(self.model))
        differences = differing_keys(state.get("settings", {}), self._settings())
        if differences:
            raise ValueError(
                f"the checkpoints in {self.checkpoint_dir} were trained with other settings "
                f"({'; '.join(differences)}); train into a new output folder, or delete that one to start over"
            )
        extra = state.pop("extra_state")
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        _set_rng_state(extra["rng"])
        if self.accelerator.is_main_process and not state.get("finished"):
            where = f"step {state['step']} (epoch {state['epoch']}) in {self.checkpoint_dir}"
            logger.info(f"[{self.config.name}] resuming from {where}")
        return state

    def _settings(self) -> dict[str, Any]:
        """What decides the trained weights: the optimisation settings and the batches per epoch."""
        ignored = ("checkpoint_every", "log_every", "progress", "name", "min_active_fraction", "max_dead_row_fraction")
        settings = {key: value for key, value in asdict(self.config).items() if key not in ignored}
        return {**settings, "batches_per_epoch": len(self.batches)}


class _DataLoaderBatches:
    """A prepared DataLoader seen as a :class:`BatchSource` (reshuffled per epoch, skippable)."""

    def __init__(self, loader: torch.utils.data.DataLoader, accelerator: Any) -> None:
        self.loader, self.accelerator = loader, accelerator

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        return iter(self.accelerator.skip_first_batches(self.loader, start) if start else self.loader)


def _feature_statistics(features: torch.Tensor) -> dict[str, float]:
    """The NCL effects on one batch (:func:`ncl_ext.analysis.metrics.batch_statistics`), its width and dead rows."""
    from ncl_ext.analysis.metrics import batch_statistics

    features = features.flatten(1)
    dead_rows = (features.abs().amax(dim=1) <= 0).float().mean()
    return {**batch_statistics(features), "num_dims": float(features.shape[1]), "dead_rows": float(dead_rows)}


def _rng_state() -> dict[str, Any]:
    """Every random generator's state, as tensors and plain values (``weights_only`` loadable)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def read_history(output_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The log records a :class:`Trainer` wrote to ``output_dir/log.jsonl`` (empty if none)."""
    path = Path(output_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_logs(output_dir: Path, history: list[dict[str, float]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    columns = sorted({key for record in history for key in record}, key=_column_order)
    with open(output_dir / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _column_order(column: str) -> tuple[int, str]:
    first = LOG_COLUMNS_FIRST
    return (first.index(column) if column in first else len(first), column)
