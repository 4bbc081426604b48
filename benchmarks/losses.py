"""Forward+backward time and peak memory of InfoNCELoss vs lightly's NTXentLoss vs a naive NT-Xent,
and the numerics of the losses under 16-bit inputs and dead rows.

Usage::

    python benchmarks/losses.py --threads 1          # the full table (up to an hour on a busy CPU)
    python benchmarks/losses.py --quick --threads 1  # N in {512, 2048}, D = 128, tiled at N = 4096
    python benchmarks/losses.py --numerics-only      # only the numerics tables (seconds; printed, not saved)

What is measured. One training step of the loss alone: ``loss_fn(z1, z2)`` then
``loss.backward()`` on random ``(N, D)`` float32 features ``z1, z2`` that require gradients,
at temperature 0.2. The contenders:

- ``ncl_ext``: :class:`ncl_ext.losses.InfoNCELoss` (untiled);
- ``ncl_ext tiled``: the same with ``chunk_size`` (default 512), which never builds the
  ``2N x 2N`` matrix;
- ``lightly``: ``lightly.loss.NTXentLoss`` (same value and gradient);
- ``naive``: the textbook version written below: normalise, one ``2N x 2N`` similarity
  matrix, mask the diagonal with ``masked_fill``, ``F.cross_entropy`` against the positives;
- ``nonneg overhead``: ``InfoNCELoss(nonneg="relu")`` against ``nonneg=None``;
- ``ncl_ext bf16`` / ``lightly bf16``: the same losses on bfloat16 inputs (ncl_ext upcasts
  them and computes in float32; lightly computes in bfloat16).

Time. Every configuration runs in a *fresh subprocess* (so allocator caches and earlier
configurations cannot help or hurt it): one untimed warm-up step, then ``R`` timed steps,
and the table reports the median. ``R`` adapts to the step time (about 20 s of timed work,
between 3 and 7 steps) so the largest configurations stay affordable. The CPU is shared
with other people's processes, so single steps can be slow; the median of several steps
and the load average printed with the table are there to judge that.

Peak memory. Linux only, in a second fresh subprocess per configuration. After the inputs
are built, the subprocess resets its resident-set high-water mark (writing ``5`` to
``/proc/self/clear_refs``) and records its current resident set size; it then runs one
step (a first step, so one-time allocations count too) and reads the high-water mark ``VmHWM`` from
``/proc/self/status``. The reported peak is ``VmHWM - baseline``: every byte the loss made
resident at its worst moment (tensors, BLAS workspaces), excluding the interpreter, the
libraries and the inputs. The memory subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536``
so that glibc returns every freed buffer of 64 KiB or more to the OS at once; otherwise
its adaptive threshold keeps freed megabyte-sized buffers resident and the high-water mark
measures allocator caching rather than what the loss needs. (Timing runs keep the default
allocator.)

nonneg overhead. Measured in one subprocess with ``nonneg=None`` and ``nonneg="relu"``
steps interleaved in pairs (A B, B A, A B, ...: neither always runs second) so that each
pair sees the same machine load; the overhead is the median over pairs of
``time(relu) / time(None) - 1``. Because a 2% difference is close to the noise of a shared
CPU, the table also reports the isolated cost of the map itself (``relu`` forward +
backward on the ``(2N, D)`` features) as a share of the loss step.

Numerics (in-process, a fixed seed). Low precision: each loss on ``N = 256, D = 128`` float32
features cast to float16 / bfloat16, its relative error against the float64 value of an
independent implementation on the float32 features (lightly's NTXentLoss, open_clip's
ClipLoss / SigLipLoss, the textbook spectral loss below), next to that implementation run
in the 16-bit dtype itself. Dead rows: a batch of 256 with one sample whose units are all
dead (``rep_relu``, whose gradient reaches negative pre-activations), the gradient norm of
that row over the median of the live rows', for ncl_ext and for the same loss on
``F.normalize(rep_relu(z), eps)`` (lightly and open_clip normalise with ``eps=1e-12``).

Threads. ``--threads`` sets OMP_NUM_THREADS / MKL_NUM_THREADS of the measuring
subprocesses. On a CPU shared with other people's jobs, one thread per process avoids the
OpenMP barrier stalls that appear when the scheduler takes a core away mid-operation
(they can make a millisecond operation take tens of milliseconds); the table records
the setting used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEMPERATURE = 0.2
TIMED_SECONDS = 20.0
MIN_REPEATS, MAX_REPEATS = 3, 7


# --------------------------------------------------------------------------- what is timed


def naive_ntxent(z1, z2, temperature: float = TEMPERATURE, eps: float = 1e-12):
    """Textbook NT-Xent: the full 2N x 2N similarity matrix and a cross-entropy over its rows."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    views = F.normalize(torch.cat([z1, z2]), dim=1, eps=eps)
    logits = views @ views.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z1.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z1.device)
    return F.cross_entropy(logits, positives)


def make_loss(name: str, chunk_size: int):
    if name == "ncl_ext":
        from ncl_ext.losses import InfoNCELoss

        return InfoNCELoss(TEMPERATURE)
    if name == "ncl_ext_relu":
        from ncl_ext.losses import InfoNCELoss

        return InfoNCELoss(TEMPERATURE, nonneg="relu")
    if name == "ncl_ext_tiled":
        from ncl_ext.losses import InfoNCELoss

        return InfoNCELoss(TEMPERATURE, chunk_size=chunk_size)
    if name == "lightly":
        from lightly.loss import NTXentLoss

        return NTXentLoss(TEMPERATURE)
    if name == "naive":
        return naive_ntxent
    raise ValueError(f"unknown implementation {name!r}")


# --------------------------------------------------------------------------- subprocess side


def _memory_status() -> dict[str, int]:
    """Current and peak resident set size of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _inputs(n: int, dim: int, dtype: str = "float32"):
    import torch

    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(n, dim, generator=generator)
    z2 = z1 + 0.5 * torch.randn(n, dim, generator=generator)
    return tuple(z.to(getattr(torch, dtype)).requires_grad_() for z in (z1, z2))


def _step(loss_fn, z1, z2) -> float:
    z1.grad = z2.grad = None
    start = time.perf_counter()
    loss_fn(z1, z2).backward()
    return time.perf_counter() - start


def _repeats(first_step_seconds: float, max_repeats: int) -> int:
    return max(MIN_REPEATS, min(max_repeats, math.ceil(TIMED_SECONDS / max(first_step_seconds, 1e-9))))


def measure_time(name: str, n: int, dim: int, chunk_size: int, max_repeats: int, dtype: str = "float32") -> dict:
    """Median step time of one implementation (runs inside a fresh subprocess)."""
    loss_fn = make_loss(name, chunk_size)
    z1, z2 = _inputs(n, dim, dtype)
    warmup = _step(loss_fn, z1, z2)
    times = [_step(loss_fn, z1, z2) for _ in range(_repeats(warmup, max_repeats))]
    return {"time_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times]}


def measure_memory(name: str, n: int, dim: int, chunk_size: int, dtype: str = "float32") -> dict:
    """Peak resident memory of one step above the baseline after the inputs (fresh subprocess)."""
    loss_fn = make_loss(name, chunk_size)
    z1, z2 = _inputs(n, dim, dtype)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set
    baseline = _memory_status()["VmRSS"]
    _step(loss_fn, z1, z2)
    return {"peak_mib": (_memory_status()["VmHWM"] - baseline) / 2**20}


def measure_nonneg_overhead(n: int, dim: int, pairs: int) -> dict:
    """Interleaved nonneg=None / nonneg="relu" steps, plus the isolated cost of the map."""
    import torch

    plain, relu = make_loss("ncl_ext", 0), make_loss("ncl_ext_relu", 0)
    z1, z2 = _inputs(n, dim)
    _step(plain, z1, z2)
    _step(relu, z1, z2)
    plain_times, relu_times = [], []
    for pair in range(pairs):  # A B, B A, A B, ...: neither variant always runs second
        if pair % 2:
            relu_times.append(_step(relu, z1, z2))
            plain_times.append(_step(plain, z1, z2))
        else:
            plain_times.append(_step(plain, z1, z2))
            relu_times.append(_step(relu, z1, z2))
    paired_overhead = statistics.median(r / p - 1 for r, p in zip(relu_times, plain_times, strict=True))
    views = torch.cat([z1, z2]).detach().requires_grad_()
    upstream = torch.ones_like(views)
    map_times = []
    for _ in range(50):
        start = time.perf_counter()
        torch.relu(views).backward(upstream)
        map_times.append(time.perf_counter() - start)
    plain_ms, relu_ms = statistics.median(plain_times) * 1e3, statistics.median(relu_times) * 1e3
    map_ms = statistics.median(map_times) * 1e3
    return {
        "none_ms": plain_ms,
        "relu_ms": relu_ms,
        "pairs": len(plain_times),
        "overhead_ab": paired_overhead,
        "map_ms": map_ms,
        "overhead_isolated": map_ms / plain_ms,
    }


# --------------------------------------------------------------------------- numerics (in-process)

NUMERICS_N, NUMERICS_D = 256, 128
CLIP_SCALE, SIGLIP_SCALE, SIGLIP_BIAS = 14.3, 10.0, -10.0


def textbook_spectral(z1, z2):
    """-2 mean_i u_i . u_i+ + mean over (anchor, non-positive other view) of (u_a . u_b)^2, u = relu([z1; z2])."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    views = F.relu(torch.cat([z1, z2]))
    similarities = views @ views.T
    is_negative = ~(torch.eye(2 * n, dtype=torch.bool) | torch.eye(2 * n, dtype=torch.bool).roll(n, dims=1))
    attraction = -2 * (views[:n] * views[n:]).sum(dim=1).mean()
    return attraction + similarities[is_negative].square().mean()


def _loss_pairs():
    """Per loss: (ncl_ext's loss on raw features, the independent implementation on raw features)."""
    import open_clip.loss
    import torch.nn.functional as F
    from lightly.loss import NTXentLoss

    from ncl_ext.losses import (
        ClipLoss,
        InfoNCELoss,
        SigLipLoss,
        SpectralContrastiveLoss,
    )

    def normalised_relu(x):
        return F.normalize(F.relu(x), dim=1)

    return {
        "InfoNCE (T=0.2)": (
            lambda a, b: InfoNCELoss(TEMPERATURE, nonneg="relu")(a, b),
            lambda a, b: NTXentLoss(TEMPERATURE)(F.relu(a), F.relu(b)),
        ),
        "spectral": (lambda a, b: SpectralContrastiveLoss(nonneg="relu")(a, b), textbook_spectral),
        f"CLIP (scale {CLIP_SCALE})": (
            lambda a, b: ClipLoss(nonneg="relu")(a, b, CLIP_SCALE),
            lambda a, b: open_clip.loss.ClipLoss()(normalised_relu(a), normalised_relu(b), CLIP_SCALE),
        ),
        f"SigLIP (scale {SIGLIP_SCALE}, bias {SIGLIP_BIAS})": (
            lambda a, b: SigLipLoss(nonneg="relu")(a, b, SIGLIP_SCALE, SIGLIP_BIAS),
            lambda a, b: open_clip.loss.SigLipLoss()(normalised_relu(a), normalised_relu(b), SIGLIP_SCALE, SIGLIP_BIAS),
        ),
    }


def low_precision_errors() -> list[dict]:
    """Relative error of each loss on 16-bit inputs against the float64 value on the float32 inputs."""
    import torch

    z1, z2 = (z.detach() for z in _inputs(NUMERICS_N, NUMERICS_D))
    rows = []
    for name, (ours, independent) in _loss_pairs().items():
        exact = float(independent(z1.double(), z2.double()))
        for dtype in (torch.float16, torch.bfloat16):
            low1, low2 = z1.to(dtype), z2.to(dtype)
            ours_value, theirs_value = ours(low1, low2), independent(low1, low2)
            rows.append(
                {
                    "loss": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "float64_value": exact,
                    "ncl_ext_error": abs(float(ours_value) - exact) / abs(exact),
                    "ncl_ext_loss_dtype": str(ours_value.dtype).removeprefix("torch."),
                    "in_dtype_error": abs(float(theirs_value) - exact) / abs(exact),
                }
            )
    return rows


def dead_row_gradients() -> list[dict]:
    """Gradient norm of an all-dead row over the live rows' median, ncl_ext vs F.normalize(rep_relu(z), eps)."""
    import open_clip.loss
    import torch
    import torch.nn.functional as F
    from lightly.loss import NTXentLoss

    from ncl_ext import nonneg
    from ncl_ext.losses import ClipLoss, InfoNCELoss, SpectralContrastiveLoss

    z1, z2 = (z.detach() for z in _inputs(NUMERICS_N, NUMERICS_D))
    z1[0] = -z1[0].abs() - 0.1  # sample 0's first view: every unit dead after ReLU

    def rep_relu(x):
        return nonneg(x, "rep_relu")

    def naive_on_rep_relu(eps):  # the naive NT-Xent normalises with F.normalize(eps=eps)
        return lambda a, b: naive_ntxent(rep_relu(a), rep_relu(b), eps=eps)

    def clip_on_rep_relu(eps):  # open_clip's ClipLoss takes normalised features
        def normalised(x):
            return F.normalize(rep_relu(x), dim=1, eps=eps)

        return lambda a, b: open_clip.loss.ClipLoss()(normalised(a), normalised(b), CLIP_SCALE)

    contenders = [
        ("InfoNCE", "ncl_ext", lambda a, b: InfoNCELoss(TEMPERATURE, nonneg="rep_relu")(a, b)),
        ("InfoNCE", "F.normalize eps=1e-6 (naive NT-Xent)", naive_on_rep_relu(1e-6)),
        ("InfoNCE", "F.normalize eps=1e-12 (lightly)", lambda a, b: NTXentLoss(TEMPERATURE)(rep_relu(a), rep_relu(b))),
        ("CLIP", "ncl_ext", lambda a, b: ClipLoss(nonneg="rep_relu")(a, b, CLIP_SCALE)),
        ("CLIP", "F.normalize eps=1e-6 (open_clip)", clip_on_rep_relu(1e-6)),
        ("CLIP", "F.normalize eps=1e-12 (open_clip)", clip_on_rep_relu(1e-12)),
        ("spectral (not normalised)", "ncl_ext", lambda a, b: SpectralContrastiveLoss(nonneg="rep_relu")(a, b)),
    ]
    rows = []
    for loss, normalisation, loss_fn in contenders:
        leaves = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss_fn(*leaves).backward()
        norms = torch.cat([leaf.grad for leaf in leaves]).norm(dim=1)
        live_median = float(norms[1:].median())
        rows.append(
            {
                "loss": loss,
                "normalisation": normalisation,
                "dead_row_grad_norm": float(norms[0]),
                "live_median_grad_norm": live_median,
                "ratio": float(norms[0]) / live_median,
            }
        )
    return rows


def numerics() -> dict:
    return {"low_precision": low_precision_errors(), "dead_row": dead_row_gradients()}


def numerics_markdown(results: dict) -> str:
    lines = [
        f"## 16-bit inputs (N={NUMERICS_N}, D={NUMERICS_D}, nonneg='relu')",
        "",
        "Relative error against the float64 value of the independent implementation on the float32",
        "features: ncl_ext (computes in float32) and the independent implementation run in the 16-bit dtype.",
        "",
        "| loss | input dtype | float64 value | ncl_ext error | ncl_ext loss dtype "
        "| error computed in the input dtype |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in results["low_precision"]:
        lines.append(
            f"| {r['loss']} | {r['dtype']} | {r['float64_value']:.5g} | {r['ncl_ext_error']:.1e} | "
            f"{r['ncl_ext_loss_dtype']} | {r['in_dtype_error']:.1e} |"
        )
    lines += [
        "",
        f"## A dead row (N={NUMERICS_N}, D={NUMERICS_D}, nonneg='rep_relu', one sample with every unit dead)",
        "",
        "| loss | normalisation | dead row's gradient norm | live rows' median | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results["dead_row"]:
        lines.append(
            f"| {r['loss']} | {r['normalisation']} | {r['dead_row_grad_norm']:.3g} | "
            f"{r['live_median_grad_norm']:.3g} | {r['ratio']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def _run_job(job: dict, what: str) -> dict:
    if job["kind"] == "nonneg":
        return measure_nonneg_overhead(job["n"], job["dim"], job["pairs"])
    if what == "memory":
        return measure_memory(job["name"], job["n"], job["dim"], job["chunk_size"], job["dtype"])
    return measure_time(job["name"], job["n"], job["dim"], job["chunk_size"], job["max_repeats"], job["dtype"])


# --------------------------------------------------------------------------- driver side


def run_in_subprocess(job: dict, what: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    completed = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(job), "--measure", what],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark job {job} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def plan(quick: bool, chunk_size: int) -> list[dict]:
    sizes = [512, 2048] if quick else [512, 2048, 8192]
    dims = [128] if quick else [128, 2048]
    max_repeats = MIN_REPEATS if quick else MAX_REPEATS
    jobs = [
        {"kind": "loss", "name": name, "n": n, "dim": dim}
        for n in sizes
        for dim in dims
        for name in ("ncl_ext", "lightly", "naive")
    ]
    for n in [4096] if quick else [4096, 8192]:
        if not any(j["n"] == n and j["dim"] == 128 and j["name"] == "naive" for j in jobs):
            jobs.append({"kind": "loss", "name": "naive", "n": n, "dim": 128})
        jobs.append({"kind": "loss", "name": "ncl_ext_tiled", "n": n, "dim": 128})
    for name in ("ncl_ext", "lightly"):
        jobs.append({"kind": "loss", "name": name, "n": 2048, "dim": 128, "dtype": "bfloat16"})
    jobs.append({"kind": "nonneg", "n": 2048, "dim": 128, "pairs": 10 if quick else 20})
    for job in jobs:
        job.setdefault("dtype", "float32")
        job.update(chunk_size=chunk_size, max_repeats=max_repeats)
    return jobs


def _result(results: list[dict], name: str, n: int, dim: int, dtype: str = "float32") -> dict:
    return next(
        r for r in results if r.get("name") == name and r["n"] == n and r["dim"] == dim and r["dtype"] == dtype
    )


def check_targets(results: list[dict], quick: bool) -> list[dict]:
    """The acceptance targets, each with the measured figure and whether it is met."""
    ours, lightly, naive = (_result(results, name, 2048, 128) for name in ("ncl_ext", "lightly", "naive"))
    targets = [
        {
            "target": "InfoNCELoss >= 1.3x faster than lightly (N=2048, D=128)",
            "measured": f"{lightly['time_ms'] / ours['time_ms']:.2f}x",
            "met": lightly["time_ms"] / ours["time_ms"] >= 1.3,
        },
        {
            "target": "InfoNCELoss no slower than naive (N=2048, D=128)",
            "measured": f"{naive['time_ms'] / ours['time_ms']:.2f}x faster",
            "met": ours["time_ms"] <= naive["time_ms"],
        },
    ]
    for n in [4096] if quick else [4096, 8192]:
        tiled, reference = _result(results, "ncl_ext_tiled", n, 128), _result(results, "naive", n, 128)
        memory_ratio = reference["peak_mib"] / max(tiled["peak_mib"], 1e-9)
        time_ratio = tiled["time_ms"] / reference["time_ms"]
        targets.append(
            {
                "target": f"tiled >= 10x less peak memory than naive, <= 1.1x its time (N={n}, D=128)",
                "measured": f"{memory_ratio:.1f}x less memory, {time_ratio:.2f}x the time",
                "met": memory_ratio >= 10 and time_ratio <= 1.1,
            }
        )
    nonneg = next(r for r in results if r["kind"] == "nonneg")
    targets.append(
        {
            "target": "nonneg='relu' adds <= 2% to the loss time (N=2048, D=128)",
            "measured": f"{100 * nonneg['overhead_ab']:+.1f}% interleaved pairs, "
            f"{100 * nonneg['overhead_isolated']:.2f}% isolated map cost",
            "met": nonneg["overhead_ab"] <= 0.02,
        }
    )
    return targets


def to_markdown(report: dict) -> str:
    lines = [
        "# InfoNCE loss: forward + backward time and peak memory",
        "",
        (
            f"Measured {report['date']} on {report['machine']}, torch {report['torch']}, "
            f"threads: {report['threads']}, load average {report['load_before']} before / "
            f"{report['load_after']} after (the CPU is shared). Temperature {TEMPERATURE}, float32, "
            f"tiled chunk_size={report['chunk_size']}. Time: median of the timed steps, each in a fresh "
            "process; memory: peak resident set above the baseline taken after the inputs were built, "
            "in another fresh process with MALLOC_MMAP_THRESHOLD_=65536 (see the docstring of "
            "benchmarks/losses.py)."
        ),
        "",
        "| N | D | implementation | input dtype | time (ms) | peak memory (MiB) | steps |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        if r["kind"] == "loss":
            timing = [f"{r['time_ms']:.1f}", f"{r['peak_mib']:.1f}", len(r["times_ms"])]
            cells = [r["n"], r["dim"], r["name"], r["dtype"], *timing]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    nonneg = next(r for r in report["results"] if r["kind"] == "nonneg")
    lines += [
        "",
        (
            f"nonneg overhead (N={nonneg['n']}, D={nonneg['dim']}): nonneg=None {nonneg['none_ms']:.1f} ms, "
            f"nonneg='relu' {nonneg['relu_ms']:.1f} ms (medians); median paired overhead "
            f"{100 * nonneg['overhead_ab']:+.1f}% over {nonneg['pairs']} interleaved pairs; the relu map "
            f"alone {nonneg['map_ms']:.3f} ms ({100 * nonneg['overhead_isolated']:.2f}% of the loss)."
        ),
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n\n" + numerics_markdown(report["numerics"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run: N in {512, 2048}, D=128, 3 steps")
    parser.add_argument("--chunk-size", type=int, default=512, help="chunk_size of the tiled mode")
    parser.add_argument("--threads", type=int, help="CPU threads per measurement (default: torch's default)")
    parser.add_argument("--numerics-only", action="store_true", help="print the numerics tables only (not saved)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one measurement and print JSON
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(_run_job(json.loads(args.job), args.measure)))
        return

    import torch

    if args.numerics_only:
        print(numerics_markdown(numerics()))
        return
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    for job in plan(args.quick, args.chunk_size):
        result = {**job, **run_in_subprocess(job, "time", args.threads)}
        if job["kind"] == "loss":
            result.update(run_in_subprocess(job, "memory", args.threads))
        results.append(result)
        print(
            json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k != "times_ms"}),
            flush=True,
        )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "chunk_size": args.chunk_size,
        "quick": args.quick,
        "results": results,
        "targets": check_targets(results, args.quick),
        "numerics": numerics(),
    }
    markdown = to_markdown(report)
    print("\n" + markdown)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "losses_quick" if args.quick else "losses"
    (RESULTS_DIR / f"{stem}.md").write_text(markdown)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(report, indent=2))
    print(f"saved {RESULTS_DIR / stem}.md and .json")


if __name__ == "__main__":
    main()
