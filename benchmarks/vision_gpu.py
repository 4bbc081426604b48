"""SimCLR ResNet-18 training speed, CL vs NCL, on device-resident synthetic 32 px images.

Measures, in one run and on the same device, the training-step time of SimCLR with a
plain projector (CL) and with the non-negative head (NCL; Wang et al., "Non-negative
Contrastive Learning", ICLR 2024): images per second and the NCL/CL step-time ratio.
The images are random uint8 tensors resident on the device and augmented there in
batches (:class:`ncl_ext.data.augment.BatchAugmentation`), so the loader never limits the
step. CL and NCL steps are interleaved (CL, NCL, CL, NCL, ...) so that drifts in clock
speed or load hit both alike; the ratio is the ratio of the medians.

On a GPU: bf16 autocast, channels_last, optionally ``--compile``; then the ``digits``
preset of the vision-ssl recipe end to end (``--with-recipe``). Without a GPU the same
code runs in a reduced mode (batch 32, a few steps) so the script is checked on CPU.

Usage:
    python benchmarks/vision_gpu.py                 # auto: full on CUDA, reduced on CPU
    python benchmarks/vision_gpu.py --compile --with-recipe
Writes benchmarks/results/vision_gpu_<device>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ncl_ext.models import ContrastiveModel, resnet18_cifar
from ncl_ext.data.augment import CIFAR10_MEAN, CIFAR10_STD, simclr_batch_augmentation
from ncl_ext.losses import InfoNCELoss

RESULTS = Path(__file__).parent / "results"


def build(nonneg: str | None, device: torch.device, channels_last: bool, compile_model: bool):
    torch.manual_seed(0)
    model = ContrastiveModel(resnet18_cifar(), projector_dims=(2048, 256), nonneg=nonneg, input_shape=(3, 32, 32))
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if compile_model else model
    return model, forward, optimizer


def step(forward, optimizer, loss_fn, images, augmentation, generator, device, dtype, channels_last):
    views = torch.cat([augmentation(images, generator), augmentation(images, generator)])
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        projections = forward(views).projections
    z1, z2 = projections.float().chunk(2)
    loss = loss_fn(z1, z2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 512 GPU, 32 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 50 GPU, 8 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 10 GPU, 2 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (GPU)")
    parser.add_argument("--with-recipe", action="store_true", help="also run the digits preset end to end")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    batch = args.batch_size or (512 if gpu else 32)
    steps = args.steps or (50 if gpu else 8)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    dtype = torch.bfloat16 if gpu else torch.float32
    channels_last = gpu
    if gpu:
        torch.backends.cudnn.benchmark = True

    dataset = torch.randint(0, 256, (batch * 8, 3, 32, 32), dtype=torch.uint8, device=device)
    augmentation = simclr_batch_augmentation(32, CIFAR10_MEAN, CIFAR10_STD)
    loss_fn = InfoNCELoss(temperature=0.2)
    runs = {name: build(mode, device, channels_last, args.compile) for name, mode in (("cl", None), ("ncl", "relu"))}
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"cl": [], "ncl": []}
    for index in range(warmup + steps):
        rows = torch.randint(0, len(dataset), (batch,), generator=generator).to(device)
        for name, (_, forward, optimizer) in runs.items():
            synchronize(device)
            started = time.perf_counter()
            step(forward, optimizer, loss_fn, dataset[rows], augmentation, generator, device, dtype, channels_last)
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - started)

    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__, "batch_size": batch, "timed_steps": steps, "dtype": str(dtype),
        "channels_last": channels_last, "compile": args.compile,
        "step_seconds": medians,
        "images_per_second": {name: batch / seconds for name, seconds in medians.items()},
        "ncl_over_cl_step_time": medians["ncl"] / medians["cl"],
    }
    if args.with_recipe:
        from ncl_ext.recipes import run_recipe

        started = time.perf_counter()
        recipe = run_recipe("vision-ssl", output=RESULTS / f"vision_gpu_digits_{device.type}")
        result["digits_recipe"] = {"seconds": time.perf_counter() - started, "runs": recipe["runs"]}

    lines = [
        f"# SimCLR ResNet-18, 32 px, CL vs NCL step time ({result['device']})",
        "",
        (
            f"torch {result['torch']}, batch {batch}, {steps} interleaved timed steps each, {dtype}, "
            f"channels_last={channels_last}, compile={args.compile}"
        ),
        "",
        "| run | step (ms) | images/s |",
        "|---|---:|---:|",
        *(f"| {n} | {1000 * medians[n]:.1f} | {result['images_per_second'][n]:.0f} |" for n in ("cl", "ncl")),
        "",
        f"NCL / CL step time: {result['ncl_over_cl_step_time']:.3f}",
    ]
    if args.with_recipe:
        lines += ["", f"digits preset end to end: {result['digits_recipe']['seconds']:.0f} s"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"vision_gpu_{device.type}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"vision_gpu_{device.type}.json").write_text(json.dumps(result, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
