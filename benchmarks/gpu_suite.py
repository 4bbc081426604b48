"""One command, one GPU, at most 8 minutes: how fast SimCLR / NCL trains and what it learns, measured in one go.

Usage::

    python benchmarks/gpu_suite.py                          # on a CUDA GPU, offline digits stand-in
    python benchmarks/gpu_suite.py --data-root ~/data       # ... with CIFAR-10 (cifar-10-batches-py/ under it)
    python benchmarks/gpu_suite.py --cpu-smoke              # reduced sizes on the CPU (checks the script, ~1 minute)
    python benchmarks/gpu_suite.py --device cpu --sections folder   # one section at full size on the CPU

Sections (each in its own process, with its own time limit; a failure or a time-out is
written into the table and the next section still runs):

- ``throughput``: SimCLR ResNet-18 (CIFAR stem, :mod:`ncl_ext.models`) at 32 px, batch 512,
  bf16 autocast, channels_last, ``torch.compile``; uint8 images resident on the GPU and
  augmented there (:class:`~ncl_ext.data.images.ResidentBatches`). Whole 50,000-image epochs
  are timed, CL and NCL alternating, synchronising only at epoch ends: images per second,
  seconds per epoch, the NCL / CL epoch-time ratio, peak memory; compile warm-up separately;
  and the host-device synchronisations one step makes (``torch.cuda.set_sync_debug_mode``).
  Model, projector, non-negative map, temperature and LARS settings are the vision-ssl
  ``cifar10`` preset's; the learning rate is held at its peak (no schedule).
- ``loss_tiling``: :class:`~ncl_ext.losses.InfoNCELoss` forward + backward at batch 4,096 and
  8,192, tiled (``chunk_size``) against untiled: time, peak memory, and the difference of the
  values and gradients.
- ``ssl``: the vision-ssl ``cifar10`` preset end to end (``run_recipe``) for a few epochs, CL
  and NCL: linear probe, kNN, sparsity, semantic consistency, precision@10 with all, the
  top-25% expected-activation and random 25% of the dimensions.
- ``supervised``: the supervised-nce ``cifar10`` preset (ResNet-18): CE, NCE, CE + MLP, NCE + MLP,
  test accuracy after every epoch.
- ``folder``: 3,000 PNG digits at 16 px as an image folder, small CNN: epoch time through
  DataLoader workers against decoded once and kept resident
  (:func:`~ncl_ext.data.images.decode_image_folder`).

Data: with ``--data-root`` holding CIFAR-10 (python version) the ``ssl`` and ``supervised``
sections use it; otherwise scikit-learn's 1,797 digits upscaled to 32 px RGB and written in
the CIFAR-10 python format, so the same presets run unchanged (the script always runs).

``--cpu-smoke`` runs every section on the CPU at toy sizes (small CNN, 8 px, a few steps):
it checks that the script works, its numbers are not performance figures.

Writes ``benchmarks/results/gpu_suite_<device>.md`` and ``.json`` (``--results-dir`` to change),
after every section, stating the device, the torch version and where each number was measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import pickle
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STARTED = time.time()  # the budget counts from here (torch and ncl_ext are imported later)
RESULTS = Path(__file__).resolve().parent / "results"
SECTION_ORDER = ("throughput", "loss_tiling", "ssl", "supervised", "folder")
SUPERVISED_ROWS = ("ce", "nce", "ce_mlp", "nce_mlp")
SSL_METRICS = (
    ("linear_probe_acc", "linear probe"), ("knn_acc", "kNN"), ("sparsity", "sparsity"),
    ("semantic_consistency", "semantic consistency"), ("precision@10", "P@10 all dims"),
    ("precision@10_ea25", "P@10 EA top 25%"), ("precision@10_random25", "P@10 random 25%"),
    ("active_dims", "active dims"),
)
TARGET_EPOCH_SECONDS, TARGET_NCL_OVER_CL = 2.0, 1.02


# ------------------------------------------------------------------ sizes


@dataclass
class Plan:
    """Every size and time limit of one suite run (the GPU defaults, or the reduced CPU smoke check)."""

    smoke: bool
    budget_seconds: float
    torch_threads: int | None = None  # CPU threads of each section (None: torch's default)
    # (a) throughput
    image_size: int = 32
    batch_size: int = 512
    dataset_size: int = 50_000
    rounds: int = 3  # timed epochs per model
    warmup_steps: int = 3  # untimed steps per model after compilation
    compile: bool = True
    bf16: bool = True
    channels_last: bool = True
    throughput_backbone: str | None = None  # None: the cifar10 preset's
    throughput_projector: tuple[int, ...] | None = None
    # (a') loss tiling
    loss_batches: tuple[int, ...] = (4096, 8192)
    loss_dim: int = 256
    loss_chunk: int = 1024
    loss_repeats: int = 5
    # (b), (c) recipes: extra overrides, and epochs per data source
    recipe_overrides: dict[str, list[str]] = field(default_factory=dict)
    # Chosen to fit the time caps on one H100/H200-class GPU (estimates: change with --ssl-epochs / --supervised-epochs)
    ssl_epochs: dict[str, int] = field(default_factory=lambda: {"cifar10": 6, "digits": 50})
    supervised_epochs: dict[str, int] = field(default_factory=lambda: {"cifar10": 3, "digits": 20})
    digits_subset: tuple[int, int] | None = None  # (train, test) images of the stand-in
    # (e) image folder
    folder_images: int = 3000
    folder_size: int = 16
    folder_batch: int = 256
    folder_workers: int = 8
    # seconds: the most a section may take, and the least worth starting it with
    caps: dict[str, float] = field(
        default_factory=lambda: {"throughput": 200, "loss_tiling": 45, "ssl": 190, "supervised": 120, "folder": 60}
    )
    minimums: dict[str, float] = field(
        default_factory=lambda: {"throughput": 60, "loss_tiling": 15, "ssl": 45, "supervised": 30, "folder": 20}
    )

    @classmethod
    def gpu(cls, budget_seconds: float = 480) -> Plan:
        return cls(smoke=False, budget_seconds=budget_seconds)

    @classmethod
    def cpu_smoke(cls, budget_seconds: float = 300) -> Plan:
        tiny_ssl = ["backbone=small_cnn", "projector=64,32", "batch_size=32", "probe_epochs=5", "knn_k=5",
                    "random_draws=2", "top_images=4"]
        tiny_supervised = ["backbone=small_cnn_signed", "projector=32,16", "batch_size=32"]
        shared = ["image_size=8", "mixed_precision=no", "channels_last=false", "eval_batch_size=128"]
        return cls(
            smoke=True, budget_seconds=budget_seconds, torch_threads=1,  # toy tensors: a second thread only waits
            image_size=8, batch_size=16, dataset_size=64, rounds=2, warmup_steps=1, compile=False, bf16=False,
            channels_last=False, throughput_backbone="small_cnn", throughput_projector=(64, 32),
            loss_batches=(256, 512), loss_dim=32, loss_chunk=64, loss_repeats=2,
            recipe_overrides={"ssl": tiny_ssl + shared, "supervised": tiny_supervised + shared},
            ssl_epochs={"cifar10": 1, "digits": 1}, supervised_epochs={"cifar10": 2, "digits": 2},
            digits_subset=(128, 64),
            folder_images=50, folder_size=8, folder_batch=25, folder_workers=0,
            caps={name: 120 for name in SECTION_ORDER}, minimums={name: 5 for name in SECTION_ORDER},
        )


# ------------------------------------------------------------------ data shared by the sections


def cifar10_folder(root: str | None) -> Path | None:
    """The CIFAR-10 python-batch folder under ``root`` (or ``root`` itself), if its files are there."""
    if root is None:
        return None
    for folder in (Path(root).expanduser(), Path(root).expanduser() / "cifar-10-batches-py"):
        if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def write_digits_as_cifar10(folder: Path, subset: tuple[int, int] | None = None) -> tuple[int, int]:
    """scikit-learn's digits (the ``load_digits`` split), upscaled to 32 px RGB, as CIFAR-10 python batches.

    Bilinear upscaling with PIL, the grey level copied into the three channels; returns (train, test) sizes.
    Uses numpy and PIL only: the suite's parent process must not run torch kernels before it forks.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    train_index, test_index = train_test_split(
        np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=0
    )  # the split of ncl_ext.data.load_digits
    if subset is not None:
        train_index, test_index = train_index[: subset[0]], test_index[: subset[1]]

    def rows(index: np.ndarray) -> np.ndarray:
        big = np.stack([np.asarray(Image.fromarray(pixels[i]).resize((32, 32), Image.BILINEAR)) for i in index])
        return np.repeat(big[:, None], 3, axis=1).reshape(len(index), 3 * 32 * 32)  # R, G, B planes

    folder = folder / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(train_index, 5), start=1):
        _pickle(folder / f"data_batch_{number}", {"data": rows(part), "labels": digits.target[part].tolist()})
    _pickle(folder / "test_batch", {"data": rows(test_index), "labels": digits.target[test_index].tolist()})
    _pickle(folder / "batches.meta", {"label_names": [str(d) for d in range(10)], "num_vis": 3072})
    return len(train_index), len(test_index)


def _pickle(path: Path, content: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def write_digit_pngs(root: Path, count: int, size: int, test_fraction: float = 0.2) -> tuple[int, int]:
    """``count`` training and ``count * test_fraction`` test PNGs of the digits at ``size`` px (RGB), by class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    by_class = [np.flatnonzero(digits.target == label) for label in range(10)]
    # classes in turn (0, 1, ..., 9, 0, ...), so that any 10 consecutive images hold every class
    order = [by_class[position % 10][position // 10 % len(by_class[position % 10])] for position in range(10 * 180)]
    test_count = max(10, round(count * test_fraction))
    for split, number, offset in (("train", count, 0), ("val", test_count, count)):
        for index in range(number):
            source = order[(offset + index) % len(order)]  # the digits, cycled
            folder = root / split / str(digits.target[source])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[source]).resize((size, size), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{index}.png")
    return count, test_count


# ------------------------------------------------------------------ what a section gets


@dataclass
class Section:
    """What a section's process receives: the plan, the device, the data, its deadline, and a way to save results."""

    plan: Plan
    device: str
    data: dict[str, Any]
    deadline: float  # time.time() by which the section must be done
    save: Callable[[dict[str, Any]], None]
    result: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.time()

    def update(self, **values: Any) -> None:
        """Record ``values`` and save the result so far (a section killed later keeps what it finished)."""
        self.result.update(values)
        self.save(self.result)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ (a) throughput


def section_throughput(section: Section) -> None:
    """SimCLR epochs of CL and NCL, alternating, timed with a synchronisation at each epoch end only."""
    import torch
    from timm.optim import create_optimizer_v2

    from ncl_ext.data.augment import CIFAR10_MEAN, CIFAR10_STD, simclr_batch_augmentation
    from ncl_ext.data.images import ResidentBatches, ResidentImages, load_cifar
    from ncl_ext.losses import InfoNCELoss
    from ncl_ext.models import ContrastiveModel, build_backbone
    from ncl_ext.recipes import resolve_config

    plan, device = section.plan, section.device
    preset, _ = resolve_config("vision-ssl", "cifar10")
    backbone = plan.throughput_backbone or preset.backbone
    projector = plan.throughput_projector or preset.projector
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True

    cifar = cifar10_folder(section.data.get("data_root"))
    if cifar is not None and not plan.smoke:
        images = load_cifar(cifar).train
        source = f"CIFAR-10 training images ({len(images)})"
    else:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (plan.dataset_size, 3, plan.image_size, plan.image_size), dtype=torch.uint8,
                               generator=generator)
        images = ResidentImages(pixels, torch.zeros(plan.dataset_size, dtype=torch.int64), ["none"], CIFAR10_MEAN,
                                CIFAR10_STD)
        source = f"{plan.dataset_size} random uint8 images (the same work as CIFAR-10)"
    images = images.to(device)
    augmentation = simclr_batch_augmentation(plan.image_size, images.mean, images.std)
    batches = ResidentBatches(images, plan.batch_size, augmentation, seed=0)
    lr = preset.base_lr * plan.batch_size / 256
    autocast_dtype = torch.bfloat16 if plan.bf16 else None
    section.update(
        settings={
            "backbone": backbone, "projector": list(projector), "ncl_map": preset.nonneg, "image_size": plan.image_size,
            "batch_size": plan.batch_size, "steps_per_epoch": len(batches),
            "images_per_epoch": len(batches) * plan.batch_size, "data": source,
            "precision": "bf16 autocast" if plan.bf16 else "float32", "channels_last": plan.channels_last,
            "compile": plan.compile, "optimizer": f"timm LARS (eta {preset.lars_eta}, clip {preset.lars_clip}), "
            f"lr {lr:g} held constant, weight decay {preset.weight_decay:g}",
            "loss": f"InfoNCELoss(temperature={preset.temperature}, check_finite=False)",
        }
    )

    def build(nonneg: str | None, compile_model: bool) -> dict[str, Any]:
        torch.manual_seed(0)
        model = ContrastiveModel(
            build_backbone(backbone, in_channels=3), projector_dims=projector, nonneg=nonneg,
            input_shape=(3, plan.image_size, plan.image_size),
        ).to(device)
        if plan.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = create_optimizer_v2(
            model, opt="lars", lr=lr, weight_decay=preset.weight_decay, momentum=preset.momentum,
            trust_coeff=preset.lars_eta, trust_clip=preset.lars_clip,
        )
        forward = torch.compile(model) if compile_model else model
        criterion = InfoNCELoss(temperature=preset.temperature, check_finite=False)

        def step(view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
            both = torch.cat([view1, view2])
            if plan.channels_last:
                both = both.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                projections = forward(both).projections
            z1, z2 = projections.float().chunk(2)
            loss = criterion(z1, z2)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        return {"step": step, "epoch_seconds": [], "peak_bytes": 0, "loss": None}

    def warm_up(run: dict[str, Any]) -> float:
        synchronize(device)
        started = time.perf_counter()
        for index, (view1, view2, _) in enumerate(batches.batches(epoch=10_000)):
            if index == plan.warmup_steps + 1:
                break
            run["step"](view1, view2)  # the first step compiles
        synchronize(device)
        return time.perf_counter() - started

    modes = {"cl": None, "ncl": preset.nonneg}
    runs = {name: build(nonneg, plan.compile) for name, nonneg in modes.items()}
    warmup = {}
    try:
        for name, run in runs.items():
            warmup[name] = warm_up(run)
    except Exception as error:  # noqa: BLE001 -- without a working compiler, still measure eagerly
        if not plan.compile:
            raise
        section.update(compile_error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
        section.result["settings"]["compile"] = "failed, so eager (see compile_error)"
        runs = {name: build(nonneg, False) for name, nonneg in modes.items()}
        warmup = {name: warm_up(run) for name, run in runs.items()}
    section.update(warmup_seconds=warmup, warmup_steps=plan.warmup_steps + 1)

    images_per_epoch = len(batches) * plan.batch_size
    for epoch in range(plan.rounds):
        last_round = sum(run["epoch_seconds"][-1] for run in runs.values() if run["epoch_seconds"])
        if epoch and section.remaining() < 2 * last_round + 10:  # keep time for the synchronisation check
            break
        for run in runs.values():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            started = time.perf_counter()
            for view1, view2, _ in batches.batches(epoch):
                loss = run["step"](view1, view2)
            synchronize(device)
            run["epoch_seconds"].append(time.perf_counter() - started)
            run["loss"] = loss
            if cuda:
                run["peak_bytes"] = max(run["peak_bytes"], torch.cuda.max_memory_allocated())
        section.update(runs=_throughput_summary(runs, images_per_epoch))
    section.update(runs=_throughput_summary(runs, images_per_epoch), sync_points=_sync_points(runs, batches, device))


def _throughput_summary(runs: dict[str, dict[str, Any]], images_per_epoch: int) -> dict[str, Any]:
    summary = {}
    for name, run in runs.items():
        if not run["epoch_seconds"]:
            continue
        best = min(run["epoch_seconds"])
        summary[name] = {
            "epoch_seconds": run["epoch_seconds"],
            "best_epoch_seconds": best,
            "images_per_second": images_per_epoch / best,
            "seconds_per_50k_images": 50_000 / (images_per_epoch / best),
            "peak_memory_gib": run["peak_bytes"] / 2**30 if run["peak_bytes"] else None,
            "last_loss": float(run["loss"]) if run["loss"] is not None else None,  # read once, after timing
        }
    if "cl" in summary and "ncl" in summary:
        cl, ncl = runs["cl"]["epoch_seconds"], runs["ncl"]["epoch_seconds"]
        summary["ncl_over_cl"] = {
            "best": min(ncl) / min(cl),
            "median": statistics.median(ncl) / statistics.median(cl),
        }
    return summary


def _sync_points(runs: dict[str, dict[str, Any]], batches: Any, device: str) -> dict[str, Any]:
    """The host-device synchronisations of one training step per model (batch included), by source line (CUDA)."""
    import torch

    if device != "cuda":
        return {"checked": False, "why": "only a CUDA device reports synchronisations"}
    found: dict[str, int] = {}
    for name, run in runs.items():
        steps = batches.batches(epoch=20_000)
        first = next(steps)
        run["step"](first[0], first[1])  # fill the allocator caches before watching
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                view1, view2, _ = next(steps)  # the batch (index, augmentation) and the step both watched
                run["step"](view1, view2)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        for warning in caught:
            if "synchroniz" in str(warning.message):
                where = f"{Path(warning.filename).name}:{warning.lineno}"
                found[f"{name} {where}"] = found.get(f"{name} {where}", 0) + 1
    synchronize(device)
    return {"checked": True, "per_step": found}


# ------------------------------------------------------------------ (a') tiled InfoNCE


def section_loss_tiling(section: Section) -> None:
    """InfoNCE forward + backward, untiled against ``chunk_size`` tiles: time, memory, same numbers."""
    import torch

    from ncl_ext.losses import InfoNCELoss

    plan, device = section.plan, section.device
    cuda = device == "cuda"
    rows = []
    section.update(settings={"dim": plan.loss_dim, "chunk_size": plan.loss_chunk, "repeats": plan.loss_repeats,
                             "loss": "InfoNCELoss(temperature=0.2, nonneg='relu'), float32"}, rows=rows)
    for batch in plan.loss_batches:
        generator = torch.Generator().manual_seed(batch)
        z1 = torch.randn(batch, plan.loss_dim, generator=generator).to(device).requires_grad_()
        z2 = torch.randn(batch, plan.loss_dim, generator=generator).to(device).requires_grad_()
        outputs = {}
        for variant, chunk in (("untiled", None), ("tiled", plan.loss_chunk)):
            if section.remaining() < 5:
                break
            criterion = InfoNCELoss(temperature=0.2, nonneg="relu", chunk_size=chunk)
            times, peak = [], None
            for repeat in range(plan.loss_repeats + 1):  # the first call warms up
                z1.grad = z2.grad = None
                synchronize(device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    baseline = torch.cuda.memory_allocated()
                started = time.perf_counter()
                loss = criterion(z1, z2)
                loss.backward()
                synchronize(device)
                if repeat:
                    times.append(time.perf_counter() - started)
                if cuda:
                    peak = max(peak or 0, torch.cuda.max_memory_allocated() - baseline)
            outputs[variant] = (loss.detach(), z1.grad.clone(), z2.grad.clone())
            rows.append({
                "batch": batch, "variant": variant, "chunk_size": chunk,
                "milliseconds": 1000 * statistics.median(times),
                "peak_extra_mib": peak / 2**20 if peak is not None else None,
            })
        if len(outputs) == 2:
            (loss_a, g1a, g2a), (loss_b, g1b, g2b) = outputs["untiled"], outputs["tiled"]
            rows[-1]["loss_difference"] = float((loss_a - loss_b).abs())
            rows[-1]["gradient_difference"] = float(max((g1a - g1b).abs().max(), (g2a - g2b).abs().max()))
        section.update(rows=rows)
        del z1, z2, outputs
        if cuda:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ (b) self-supervised, (c) supervised


def _recipe_data(section: Section) -> tuple[str, str, str]:
    """``(data_root, key, description)`` of the data the recipe sections train on."""
    data = section.data
    return data["recipe_root"], data["recipe_data"], data["recipe_description"]


def section_ssl(section: Section) -> None:
    """The vision-ssl cifar10 preset, CL then NCL, for a budgeted number of epochs."""
    from ncl_ext.recipes import resolve_config, run_recipe

    plan = section.plan
    root, key, description = _recipe_data(section)
    epochs = plan.ssl_epochs[key]
    preset, _ = resolve_config("vision-ssl", "cifar10")
    warmup = preset.warmup_epochs * epochs / preset.epochs  # the preset's share of warm-up
    overrides = [f"epochs={epochs}", f"warmup_epochs={warmup:g}", *plan.recipe_overrides.get("ssl", [])]
    section.update(settings={"preset": "vision-ssl cifar10", "data": description, "overrides": overrides}, runs={})
    _run_recipe_rows(section, "vision-ssl", ("cl", "ncl"), root, overrides, run_recipe)


def section_supervised(section: Section) -> None:
    """The supervised-nce cifar10 preset, its four rows, for a budgeted number of epochs."""
    from ncl_ext.recipes import run_recipe

    plan = section.plan
    root, key, description = _recipe_data(section)
    overrides = [f"epochs={plan.supervised_epochs[key]}", *plan.recipe_overrides.get("supervised", [])]
    section.update(settings={"preset": "supervised-nce cifar10", "data": description, "overrides": overrides}, runs={})
    _run_recipe_rows(section, "supervised-nce", SUPERVISED_ROWS, root, overrides, run_recipe)


def _run_recipe_rows(
    section: Section, recipe: str, rows: tuple[str, ...], root: str, overrides: list[str], run_recipe: Callable
) -> None:
    """Train ``rows`` one at a time into one folder; skip a row when the slowest so far would not fit the time left."""
    with tempfile.TemporaryDirectory(prefix=f"gpu-suite-{recipe}-") as output:
        slowest = 0.0
        for row in rows:
            if slowest and section.remaining() < 1.1 * slowest:
                section.result["runs"][row] = {"skipped": f"time budget: {section.remaining():.0f} s left, "
                                                          f"the slowest run so far took {slowest:.0f} s"}
                section.update()
                continue
            started = time.perf_counter()
            results = run_recipe(recipe, preset="cifar10", overrides=[*overrides, f"runs={row}"], data_root=root,
                                 output=output, device=section.device)
            seconds = time.perf_counter() - started
            slowest = max(slowest, seconds)
            metrics = dict(results["runs"][row])
            metrics["wall_seconds"] = seconds
            section.result["runs"][row] = metrics
            section.update(provenance=results["provenance"])


# ------------------------------------------------------------------ (e) image folder


def section_folder(section: Section) -> None:
    """One folder of PNG digits, small CNN: seconds per epoch read by DataLoader workers, resident, and with no data
    work at all (one pre-made batch repeated: the floor the training step itself sets)."""
    import dataclasses

    from ncl_ext.data.image_data import ImageData
    from ncl_ext.recipes import resolve_config, vision_ssl
    from ncl_ext.training import make_accelerator, read_history

    plan, device = section.plan, section.device
    root = Path(section.data["folder_root"])
    workers = min(plan.folder_workers, os.cpu_count() or 1)
    overrides = [
        "backbone=small_cnn", "projector=256,128", f"image_size={plan.folder_size}", "epochs=2",
        f"batch_size={plan.folder_batch}", f"num_workers={workers}", "mixed_precision=no", "channels_last=false",
        "runs=ncl", "warmup_epochs=0",
    ]
    config, _ = resolve_config("vision-ssl", "imagefolder", overrides, data_root=str(root), device=device)
    section.update(
        settings={"images": section.data["folder_counts"], "image_size": plan.folder_size, "num_workers": workers,
                  "overrides": overrides},
        paths={},
    )
    for path, budget in (("dataloader", 0), ("resident", None), ("no data work", None)):
        if section.remaining() < 10:
            break
        data_settings = types.SimpleNamespace(**dataclasses.asdict(config))
        if budget is not None:  # a budget of 0 MiB keeps the folder on the DataLoader path
            data_settings.resident_budget_mb = budget
        started = time.perf_counter()
        data = ImageData(data_settings, make_accelerator(device, config.mixed_precision, config.compile))
        prepare_seconds = time.perf_counter() - started
        if path == "no data work":
            batches = data.training_batches()
            data.training_batches = lambda augmentation=None, source=batches: _RepeatedBatch(source)
        with tempfile.TemporaryDirectory(prefix="gpu-suite-folder-") as output:
            started = time.perf_counter()
            vision_ssl.train(config, "ncl", data, Path(output))
            train_seconds = time.perf_counter() - started
            ends = {}
            for record in read_history(output):  # "seconds" since training started, at each logged step
                ends[record["epoch"]] = record["seconds"]
        section.result["paths"][path] = {
            "resident": data.resident, "prepare_seconds": prepare_seconds, "train_seconds": train_seconds,
            "epoch_seconds": [ends[0], ends[1] - ends[0]],
        }
        section.update()


class _RepeatedBatch:
    """The first batch of ``source``, made once and yielded ``len(source)`` times per epoch (a Trainer batch source)."""

    def __init__(self, source: Any) -> None:
        self.batch, self.count = next(iter(source.batches(epoch=0))), len(source)

    def __len__(self) -> int:
        return self.count

    def batches(self, epoch: int, start: int = 0) -> Any:
        return (self.batch for _ in range(start, self.count))


SECTIONS: dict[str, Callable[[Section], None]] = {
    "throughput": section_throughput,
    "loss_tiling": section_loss_tiling,
    "ssl": section_ssl,
    "supervised": section_supervised,
    "folder": section_folder,
}


# ------------------------------------------------------------------ running the sections


def _child(name: str, plan: Plan, device: str, data: dict[str, Any], deadline: float, path: str) -> None:
    """A section's process: run it, saving what it finished and, on failure, the error."""
    logging.getLogger("ncl_ext").setLevel(logging.WARNING)  # no progress bars in the suite's output
    if plan.torch_threads is not None:
        import torch

        torch.set_num_threads(plan.torch_threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    state: dict[str, Any] = {"result": {}}

    def save(result: dict[str, Any]) -> None:
        state["result"] = result
        _write_json(Path(path), {"result": result})

    try:
        SECTIONS[name](Section(plan, device, data, deadline, save))
    except BaseException as error:  # noqa: BLE001 -- every failure must reach the table
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _write_json(Path(path), {
            "result": state["result"], "error": f"{type(error).__name__}: {message}",
            "traceback": traceback.format_exc()[-3000:],
        })
        sys.exit(1)


def _write_json(path: Path, content: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content, indent=2, default=_jsonable))
    partial.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def preload_modules() -> None:
    """Import what the sections use, so that forked sections start with it loaded (imports run no torch kernel)."""
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import timm.optim  # noqa: F401

    import ncl_ext.analysis  # noqa: F401
    import ncl_ext.recipes.supervised_nce  # noqa: F401
    import ncl_ext.recipes.vision_ssl  # noqa: F401


def run_section(
    name: str, plan: Plan, device: str, data: dict[str, Any], timeout: float, scratch: Path, start_method: str
) -> dict:
    """Run section ``name`` in its own process for at most ``timeout`` seconds; its status, time and result."""
    context = multiprocessing.get_context(start_method)
    path = scratch / f"{name}.json"
    started = time.time()
    process = context.Process(target=_child, args=(name, plan, device, data, started + timeout, str(path)))
    process.start()
    process.join(timeout)
    timed_out = process.is_alive()
    if timed_out:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
    seconds = time.time() - started
    content = json.loads(path.read_text()) if path.is_file() else {}
    outcome = {"seconds": round(seconds, 1), "result": content.get("result", {})}
    if timed_out:
        outcome.update(status="timed out", note=f"stopped after its {timeout:.0f} s limit; results so far kept")
    elif content.get("error"):
        outcome.update(status="failed", note=content["error"], traceback=content.get("traceback"))
    elif process.exitcode != 0:
        outcome.update(status="failed", note=f"the process ended with exit code {process.exitcode}")
    else:
        outcome.update(status="ok")
    return outcome


def device_slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: the device part of the results' file names."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def environment(device: str) -> dict[str, Any]:
    """Device, versions and machine of this run (the parent touches CUDA only on a GPU run)."""
    import torch

    from ncl_ext.recipes.provenance import provenance

    info: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": provenance(device)["git_commit"], "platform": platform.platform(),
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with cifar-10-batches-py (optional)")
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on the CPU: checks the script only")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu runs the full sizes on the CPU (slow: meant for single sections, e.g. folder)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where gpu_suite_<device>.md/.json go")
    parser.add_argument("--budget-seconds", type=float, default=None, help="wall-time budget (default 480; smoke 300)")
    parser.add_argument("--sections", default=",".join(SECTION_ORDER),
                        help=f"comma-separated subset of {SECTION_ORDER}")
    parser.add_argument("--ssl-epochs", type=int, default=None, help="epochs of each ssl run (default by data)")
    parser.add_argument("--supervised-epochs", type=int, default=None, help="epochs of each supervised row")
    parser.add_argument("--folder-images", type=int, default=None, help="training PNGs of the folder section")
    parser.add_argument("--start-method", choices=("fork", "spawn"), default=None,
                        help="how section processes start (default: fork on the CPU, spawn with CUDA)")
    args = parser.parse_args(argv)

    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections {args.sections!r}: expected names among {', '.join(SECTION_ORDER)}")
    if args.cpu_smoke:
        plan, device = Plan.cpu_smoke(args.budget_seconds or 300), "cpu"
    elif args.device == "cpu":
        plan, device = Plan.gpu(args.budget_seconds or 480), "cpu"
        plan.caps = {name: plan.budget_seconds for name in SECTION_ORDER}  # the CPU is slower: no per-section caps
    else:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA GPU here; run with --cpu-smoke for the reduced CPU check", file=sys.stderr)
            return 2
        plan, device = Plan.gpu(args.budget_seconds or 480), "cuda"
    for key, value in (("ssl_epochs", args.ssl_epochs), ("supervised_epochs", args.supervised_epochs)):
        if value is not None:
            setattr(plan, key, {data: value for data in getattr(plan, key)})
    if args.folder_images is not None:
        plan.folder_images = args.folder_images

    deadline = STARTED + plan.budget_seconds
    # On the CPU, sections are forked (no re-import, so the smoke check stays quick); the parent
    # runs no torch kernel before, as a fork after OpenMP work hangs. With CUDA they start fresh
    # (spawn): a CUDA context does not survive a fork.
    start_method = args.start_method or ("fork" if device == "cpu" else "spawn")
    if start_method == "fork":
        preload_modules()
    info = environment(device)
    slug = "cpu-smoke" if plan.smoke else "cpu" if device == "cpu" else device_slug(info["device"])
    results_dir = Path(args.results_dir)
    command = " ".join(["python benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"suite": "gpu_suite", "command": command, "mode": "cpu-smoke" if plan.smoke else device,
              "environment": info, "plan": asdict(plan), "sections": {}}

    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as scratch_name:
        scratch = Path(scratch_name)
        data: dict[str, Any] = {"data_root": args.data_root}
        cifar = cifar10_folder(args.data_root)
        if not {"ssl", "supervised"} & set(sections):
            pass
        elif cifar is not None:
            data.update(recipe_root=str(cifar), recipe_data="cifar10",
                        recipe_description=f"CIFAR-10 from {cifar}")
        else:
            counts = write_digits_as_cifar10(scratch / "digits-cifar", plan.digits_subset)
            data.update(
                recipe_root=str(scratch / "digits-cifar"), recipe_data="digits",
                recipe_description=(f"no CIFAR-10 given: scikit-learn digits upscaled to 32 px RGB in the CIFAR-10 "
                                    f"python format ({counts[0]} train / {counts[1]} test images)"),
            )
        if "folder" in sections:
            data.update(folder_root=str(scratch / "digit-pngs"),
                        folder_counts=write_digit_pngs(scratch / "digit-pngs", plan.folder_images, plan.folder_size))

        for index, name in enumerate(sections):
            later = sum(plan.minimums[other] for other in sections[index + 1 :])
            timeout = min(plan.caps[name], deadline - time.time() - later)
            if timeout < plan.minimums[name]:
                outcome = {"status": "skipped", "seconds": 0.0, "result": {},
                           "note": f"time budget: {max(timeout, 0):.0f} s left for it, "
                                   f"needs {plan.minimums[name]:.0f} s"}
            else:
                print(f"gpu_suite: {name} (up to {timeout:.0f} s) ...", flush=True)
                outcome = run_section(name, plan, device, data, timeout, scratch, start_method)
            print(f"gpu_suite: {name}: {outcome['status']} in {outcome['seconds']:.0f} s"
                  + (f" ({outcome['note']})" if outcome.get("note") else ""), flush=True)
            report["sections"][name] = outcome
            report["wall_seconds"] = round(time.time() - STARTED, 1)
            write_report(report, results_dir, slug)
    print(f"gpu_suite: results in {results_dir / f'gpu_suite_{slug}.md'}")
    return 0


# ------------------------------------------------------------------ tables


def write_report(report: dict[str, Any], results_dir: Path, slug: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"gpu_suite_{slug}.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    (results_dir / f"gpu_suite_{slug}.md").write_text(markdown(report))


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _scientific(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def markdown(report: dict[str, Any]) -> str:
    info, sections = report["environment"], report["sections"]
    smoke = report["mode"] == "cpu-smoke"
    lines = [
        f"# GPU suite: SimCLR / NCL speed and quality ({'CPU smoke check' if smoke else info['device']})",
        "",
        f"Measured by `{report['command']}` on **{info['device']}**"
        + ("" if "cuda" not in info else
           f" (CUDA {info['cuda']}, cuDNN {info.get('cudnn')}, {info.get('gpu_memory_gib')} GiB)")
        + f"; torch {info['torch']} (CPU threads: {report['plan'].get('torch_threads') or info.get('torch_threads')}), "
        f"Python {info['python']}, "
        f"{info['cpu_count']} CPU cores, "
        f"ncl_ext commit {str(info.get('git_commit'))[:12]}, "
        f"load average {info.get('load_average_at_start')} at start. "
        f"Every number below was measured in this run, on this device; wall time {report.get('wall_seconds')} s "
        f"of a {report['plan']['budget_seconds']:.0f} s budget.",
        "",
    ]
    if smoke:
        lines += ["**CPU smoke check: toy sizes (small CNN, 8 px images, a few steps). These numbers only show "
                  "that every section runs; they are not performance or quality figures.**", ""]
    elif report["mode"] == "cpu":
        lines += ["Full sizes, run on the CPU (`--device cpu`), for the sections listed below only.", ""]
    lines += ["| section | status | seconds | note |", "|---|---|---:|---|"]
    for name, outcome in sections.items():
        lines.append(f"| {name} | {outcome['status']} | {outcome['seconds']:.0f} | {outcome.get('note', '')} |")
    for name, outcome in sections.items():
        lines += ["", *TABLES[name](outcome["result"], smoke)]
    return "\n".join(lines) + "\n"


def _throughput_table(result: dict[str, Any], smoke: bool) -> list[str]:
    lines = ["## (a) Training throughput: SimCLR, CL vs NCL", ""]
    settings = result.get("settings")
    if not settings:
        return lines + ["No result."]
    lines += [
        f"{settings['backbone']} + projector {settings['projector']} (NCL map `{settings['ncl_map']}`), "
        f"{settings['image_size']} px, batch {settings['batch_size']}, {settings['precision']}, "
        f"channels_last={settings['channels_last']}, compile={settings['compile']}; {settings['optimizer']}; "
        f"{settings['loss']}. Data: {settings['data']}, resident on the device, SimCLR augmentation on the device. "
        f"One epoch = {settings['steps_per_epoch']} steps = {settings['images_per_epoch']} images; CL and NCL epochs "
        "alternate; the device is synchronised only at epoch ends.",
        "",
    ]
    runs = result.get("runs", {})
    warmup = result.get("warmup_seconds", {})
    lines += ["| run | best epoch (s) | epochs timed (s) | images/s | s per 50,000 images | peak memory (GiB) | "
              f"compile + {result.get('warmup_steps', '?')} warm-up steps (s) | last loss |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in ("cl", "ncl"):
        run = runs.get(name)
        if run is None:
            lines.append(f"| {name} | - | - | - | - | - | {_number(warmup.get(name), 1)} | - |")
            continue
        lines.append(
            f"| {name} | {_number(run['best_epoch_seconds'])} | "
            f"{', '.join(_number(seconds) for seconds in run['epoch_seconds'])} | "
            f"{run['images_per_second']:.0f} | {_number(run['seconds_per_50k_images'])} | "
            f"{_number(run['peak_memory_gib'], 2)} | {_number(warmup.get(name), 1)} | {_number(run['last_loss'], 4)} |"
        )
    ratio = runs.get("ncl_over_cl")
    if ratio:
        lines += ["", f"NCL / CL epoch time, i.e. mean step time: **{ratio['best']:.3f}** (best epochs; "
                  f"medians: {ratio['median']:.3f})."]
        if not smoke:
            epoch = max(runs["cl"]["seconds_per_50k_images"], runs["ncl"]["seconds_per_50k_images"])
            lines.append(
                f"Targets: 50,000-image epoch <= {TARGET_EPOCH_SECONDS:g} s: "
                f"{'met' if epoch <= TARGET_EPOCH_SECONDS else 'missed'} ({epoch:.2f} s); "
                f"NCL / CL <= {TARGET_NCL_OVER_CL}: {'met' if ratio['best'] <= TARGET_NCL_OVER_CL else 'missed'}."
            )
    if result.get("compile_error"):
        lines.append(f"torch.compile failed, so these steps ran eagerly: {result['compile_error']}")
    sync = result.get("sync_points")
    if sync and sync.get("checked"):
        found = sync["per_step"]
        lines.append("Host-device synchronisations in one training step: "
                     + (", ".join(f"{where} ({count})" for where, count in found.items()) if found else "none") + ".")
    elif sync:
        lines.append(f"Host-device synchronisations: not checked ({sync['why']}).")
    return lines


def _loss_table(result: dict[str, Any], smoke: bool) -> list[str]:
    lines = ["## (a') Tiled InfoNCE (chunk_size) against the untiled loss", ""]
    settings = result.get("settings")
    if not settings:
        return lines + ["No result."]
    lines += [f"{settings['loss']}, feature dimension {settings['dim']}, forward + backward, median of "
              f"{settings['repeats']} after one warm-up call; peak memory above what the inputs hold.", "",
              "| batch N | variant | chunk_size | ms | peak extra memory (MiB) | loss difference "
              "| gradient difference |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for row in result.get("rows", []):
        lines.append(
            f"| {row['batch']} | {row['variant']} | {row['chunk_size'] or '-'} | {row['milliseconds']:.1f} | "
            f"{_number(row['peak_extra_mib'], 1)} | {_scientific(row.get('loss_difference'))} | "
            f"{_scientific(row.get('gradient_difference'))} |"
        )
    if smoke:
        lines.append("\nPeak memory is measured on CUDA devices only.")
    return lines


def _ssl_table(result: dict[str, Any], smoke: bool) -> list[str]:
    lines = ["## (b) Self-supervised end to end: vision-ssl, CL vs NCL", ""]
    settings = result.get("settings")
    if not settings:
        return lines + ["No result."]
    lines += [f"Preset {settings['preset']} with overrides `{' '.join(settings['overrides'])}`. "
              f"Data: {settings['data']}.",
              "Probes on backbone features; sparsity, consistency and retrieval on projector outputs (test images).",
              "",
              "| run | " + " | ".join(title for _, title in SSL_METRICS) + " | wall s |",
              "|---|" + "---:|" * (len(SSL_METRICS) + 1)]
    for name, run in result.get("runs", {}).items():
        if "skipped" in run:
            lines.append(f"| {name} | skipped: {run['skipped']} |")
            continue
        cells = [_number(run.get(key)) if key != "active_dims" else _number(run.get(key), 0) for key, _ in SSL_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {run['wall_seconds']:.0f} |")
    return lines


def _supervised_table(result: dict[str, Any], smoke: bool) -> list[str]:
    lines = ["## (c) Supervised end to end: supervised-nce, CE vs NCE", ""]
    settings = result.get("settings")
    if not settings:
        return lines + ["No result."]
    runs = {name: run for name, run in result.get("runs", {}).items() if "skipped" not in run}
    lines += [f"Preset {settings['preset']} with overrides `{' '.join(settings['overrides'])}`. "
              f"Data: {settings['data']}.", "",
              "| row | final test accuracy | sparsity | semantic consistency | wall s |", "|---|---:|---:|---:|---:|"]
    for name, run in result.get("runs", {}).items():
        if "skipped" in run:
            lines.append(f"| {name} | skipped: {run['skipped']} |")
        else:
            lines.append(f"| {name} | {_number(run['test_acc'])} | {_number(run.get('sparsity'))} | "
                         f"{_number(run.get('semantic_consistency'))} | {run['wall_seconds']:.0f} |")
    if runs:
        epochs = max(len(run["acc_curve"]) for run in runs.values())
        lines += ["", "Test accuracy after each epoch:", "", "| epoch | " + " | ".join(runs) + " |",
                  "|---:|" + "---:|" * len(runs)]
        for epoch in range(epochs):
            curves = [run["acc_curve"] for run in runs.values()]
            cells = [_number(curve[epoch]) if epoch < len(curve) else "-" for curve in curves]
            lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return lines


def _folder_table(result: dict[str, Any], smoke: bool) -> list[str]:
    lines = ["## (e) Image folder: DataLoader workers vs decoded once and resident", ""]
    settings = result.get("settings")
    if not settings:
        return lines + ["No result."]
    train, test = settings["images"]
    lines += [f"{train} training + {test} test PNG digits at {settings['image_size']} px, vision-ssl `imagefolder` "
              f"preset with a small CNN, NCL, 2 epochs, `{' '.join(settings['overrides'])}`. Epoch times come from the "
              "training log (they include the end-of-epoch checkpoint). 'no data work' repeats one pre-made batch: "
              "the time of the training steps alone.", "",
              "| path | kept resident | prepare / decode (s) | epoch 1 (s) | epoch 2 (s) |", "|---|---|---:|---:|---:|"]
    for name, path in result.get("paths", {}).items():
        first, second = path["epoch_seconds"]
        lines.append(f"| {name} | {path['resident']} | {path['prepare_seconds']:.2f} | {first:.2f} | {second:.2f} |")
    return lines


TABLES: dict[str, Callable[[dict[str, Any], bool], list[str]]] = {
    "throughput": _throughput_table,
    "loss_tiling": _loss_table,
    "ssl": _ssl_table,
    "supervised": _supervised_table,
    "folder": _folder_table,
}


if __name__ == "__main__":
    sys.exit(main())
