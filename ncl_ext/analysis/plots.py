"""Pictures of a feature matrix (matplotlib, PNG files; never opens a window).

- :func:`plot_activation_frequency` — how often each dimension fires, dimensions sorted;
- :func:`plot_correlation_heatmap` — ``|cos|`` between the most active dimensions;
- :func:`plot_top_activating_images` / :func:`write_top_activating_texts` — "what each
  dimension means": the samples that activate a dimension most, as an image grid (one row
  per dimension) or as a Markdown list of texts;
- :func:`plot_comparison` — runs side by side (CL vs NCL): sorted activation frequency,
  per-dimension class purity, and the top-activating samples of the dimensions of highest
  expected activation (images, texts, or the class histogram of those samples);
- :func:`plot_curves` — one line per run over epochs (e.g. test accuracy).

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459),
Fig. 1 and 3: NCL dimensions fire for few samples of one class, CL dimensions for all.

Examples:
    >>> import torch, tempfile, os
    >>> z = torch.relu(torch.randn(100, 16))
    >>> folder = tempfile.mkdtemp()
    >>> plot_activation_frequency(z, os.path.join(folder, "freq.png")).name
    'freq.png'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncl_ext._checks import DEFAULT_EPS, as_features, check_int
from ncl_ext.analysis.metrics import activation_counts, activation_frequency, correlation_matrix, sparsity
from ncl_ext.analysis.selection import expected_activation, expected_activation_order

__all__ = [
    "plot_activation_frequency",
    "plot_comparison",
    "plot_curves",
    "plot_correlation_heatmap",
    "plot_top_activating_images",
    "top_activating_samples",
    "write_top_activating_texts",
]


def _figure(width: float, height: float) -> Any:
    # The object-oriented API with the Agg canvas: no pyplot state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_activation_frequency(
    features: Any, path: str | Path, eps: float = DEFAULT_EPS, title: str = "Activation frequency"
) -> Path:
    """Per-dimension share of samples with ``|z^| > eps`` (``z^``: L2-normalised rows), dimensions sorted.

    A sparse, disentangled (NCL) representation shows a long tail of rarely firing
    dimensions; a dense (CL) one a flat line at 1. Returns the PNG path.
    """
    frequency = torch.sort(activation_frequency(features, eps), descending=True).values.numpy()
    figure = _figure(6, 3.5)
    axes = figure.add_subplot()
    axes.plot(np.arange(1, len(frequency) + 1), frequency, linewidth=1.5)
    axes.fill_between(np.arange(1, len(frequency) + 1), frequency, alpha=0.3)
    axes.set_xlabel("dimension (sorted by activation frequency)")
    axes.set_ylabel(f"share of samples with |z| > {eps:g}")
    axes.set_ylim(0, 1)
    axes.set_xlim(1, max(2, len(frequency)))
    dead = int((frequency == 0).sum())
    axes.set_title(f"{title} ({dead} of {len(frequency)} dims dead)")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_correlation_heatmap(
    features: Any, path: str | Path, num_dims: int = 64, title: str = "|cosine| between the most active dims"
) -> Path:
    """Heatmap of ``|C|``, the cosine similarity between the ``num_dims`` dimensions with the largest EA.

    Dimensions are ordered by expected activation (see
    :func:`~ncl_ext.analysis.expected_activation_order`). Returns the PNG path.
    """
    features = as_features(features)
    num_dims = min(check_int(num_dims, "num_dims"), features.shape[1])
    dims = expected_activation_order(features)[:num_dims]
    correlation = correlation_matrix(features, dims).abs().numpy()
    figure = _figure(6, 5)
    axes = figure.add_subplot()
    image = axes.imshow(correlation, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xlabel("dimension rank (by expected activation)")
    axes.set_ylabel("dimension rank (by expected activation)")
    axes.set_title(title)
    return _save(figure, path)


def top_activating_samples(
    features: Any, dims: Sequence[int] | torch.Tensor | None = None, num_dims: int = 8, per_dim: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each dimension, the samples with the largest activation: ``(dims, indices)``.

    Args:
        features: ``(N, D)`` features.
        dims: which dimensions; default the ``num_dims`` with the largest expected activation.
        num_dims: used when ``dims`` is None.
        per_dim: samples per dimension (``<= N``).

    Returns:
        ``dims`` (LongTensor ``(K,)``) and ``indices`` (LongTensor ``(K, per_dim)``), each row
        sorted from the most activating sample down (ties: lower index first).
    """
    features = as_features(features)
    per_dim = check_int(per_dim, "per_dim")
    if per_dim > features.shape[0]:
        raise ValueError(f"per_dim={per_dim} exceeds the {features.shape[0]} samples")
    if dims is None:
        dims = expected_activation_order(features)[: min(check_int(num_dims, "num_dims"), features.shape[1])]
    dims = torch.as_tensor(dims, dtype=torch.long).flatten()
    if len(dims) == 0 or int(dims.min()) < 0 or int(dims.max()) >= features.shape[1]:
        raise ValueError(f"dims must be non-empty indices into the {features.shape[1]} dims, got {dims.tolist()}")
    columns = features[:, dims.to(features.device)].T.cpu()
    order = torch.sort(columns, dim=1, descending=True, stable=True).indices
    return dims, order[:, :per_dim]


def _as_images(images: Any, num_samples: int) -> np.ndarray:
    """``(N, H, W)`` or ``(N, C, H, W)`` (C in 1, 3, 4) to ``(N, H, W[, C])`` floats in [0, 1] per image."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"images must be numeric, got dtype {array.dtype}")
    if array.ndim not in (3, 4) or array.shape[0] != num_samples:
        raise ValueError(
            f"images must be (N, H, W) or (N, C, H, W) with N = {num_samples} samples, got shape {array.shape}"
        )
    array = array.astype(np.float64)
    if array.ndim == 4:
        if array.shape[1] not in (1, 3, 4):
            raise ValueError(f"images must have 1, 3 or 4 channels in dim 1 (N, C, H, W), got shape {array.shape}")
        array = array.transpose(0, 2, 3, 1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    if not np.isfinite(array).all():
        raise ValueError("images contain NaN or Inf values")
    low = array.reshape(num_samples, -1).min(1).reshape((-1,) + (1,) * (array.ndim - 1))
    high = array.reshape(num_samples, -1).max(1).reshape((-1,) + (1,) * (array.ndim - 1))
    return (array - low) / np.where(high > low, high - low, 1.0)


def plot_top_activating_images(
    features: Any,
    images: Any,
    path: str | Path,
    dims: Sequence[int] | torch.Tensor | None = None,
    num_dims: int = 8,
    per_dim: int = 8,
    title: str = "Top-activating samples per dimension",
) -> Path:
    """Image grid: one row per dimension, its ``per_dim`` most activating images left to right.

    Args:
        features: ``(N, D)`` features of the images.
        images: ``(N, H, W)`` or ``(N, C, H, W)`` (C = 1, 3 or 4), any range (each image is
            min-max scaled for display).
        path: PNG file to write.
        dims, num_dims, per_dim: see :func:`top_activating_samples`.
    """
    features = as_features(features)
    pictures = _as_images(images, features.shape[0])
    dims, indices = top_activating_samples(features, dims, num_dims, per_dim)
    figure = _figure(1.1 * indices.shape[1] + 1, 1.1 * len(dims))
    grid = figure.subplots(len(dims), indices.shape[1], squeeze=False)
    for row, (dim, samples) in enumerate(zip(dims.tolist(), indices.tolist())):
        for col, sample in enumerate(samples):
            axes = grid[row][col]
            axes.imshow(pictures[sample], cmap="gray" if pictures.ndim == 3 else None, vmin=0, vmax=1)
            axes.set_xticks([])
            axes.set_yticks([])
            if col == 0:
                axes.set_ylabel(f"dim {dim}", rotation=0, ha="right", va="center")
    figure.suptitle(title)
    return _save(figure, path)


def write_top_activating_texts(
    features: Any,
    texts: Sequence[str],
    path: str | Path,
    dims: Sequence[int] | torch.Tensor | None = None,
    num_dims: int = 8,
    per_dim: int = 8,
) -> Path:
    """Markdown list: for each dimension, its ``per_dim`` most activating texts with their activation.

    Args:
        features: ``(N, D)`` features of the texts.
        texts: ``N`` strings.
        path: ``.md`` (or ``.txt``) file to write.
        dims, num_dims, per_dim: see :func:`top_activating_samples`.
    """
    features = as_features(features)
    if isinstance(texts, str) or len(texts) != features.shape[0] or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a sequence of {features.shape[0]} strings, one per feature row")
    dims, indices = top_activating_samples(features, dims, num_dims, per_dim)
    activation = expected_activation(features)
    lines = ["# Top-activating texts per dimension", ""]
    for dim, samples in zip(dims.tolist(), indices.tolist()):
        lines.append(f"## dim {dim} (expected activation {float(activation[dim]):.4f})")
        lines.append("")
        for sample in samples:
            text = " ".join(texts[sample].split())
            lines.append(f"1. `{float(features[sample, dim]):.4f}` {text}")
        lines.append("")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _class_purity(features: torch.Tensor, labels: torch.Tensor, eps: float) -> np.ndarray:
    """Per dimension that fires, the share of its firing samples in its top class (a term of semantic consistency)."""
    counts = activation_counts(features, eps, normalize_rows=True, codes=labels.long())
    totals = counts.sum(0)
    fired = totals > 0
    return (counts.max(0).values[fired] / totals[fired]).cpu().numpy()


def plot_comparison(runs: dict[str, dict[str, Any]], path: str | Path, eps: float = DEFAULT_EPS) -> Path:
    """Runs side by side, one column each: what non-negativity changes, at a glance.

    Rows: (1) the share of samples each dimension fires on, dimensions sorted (NCL: a long
    tail of rarely firing dimensions; CL: every dimension on every sample); (2) each active
    dimension's class purity, sorted (the per-dimension terms of semantic consistency),
    with labels; (3) the most activating samples of the dimensions of highest expected
    activation: an image grid, a list of texts, or, with neither, the class histogram of
    those samples.

    Args:
        runs: run name -> :func:`~ncl_ext.analysis.loading.load_run_features` content
            (``features``, optional ``labels``, ``top_dims``, ``top_samples``, ``top_images``, ``texts``).
        path: PNG file to write.
    """
    if not runs:
        raise ValueError("runs is empty: nothing to compare")
    has_labels = all("labels" in run for run in runs.values())
    rows = 3 if has_labels else 2
    figure = _figure(5.2 * len(runs), 3.2 * rows + 1.5)
    grid = figure.subplots(rows, len(runs), squeeze=False)
    for column, (name, run) in enumerate(runs.items()):
        features = as_features(run["features"])
        frequency = np.sort(activation_frequency(features, eps).numpy())[::-1]
        zeros = sparsity(features, eps)
        axes = grid[0][column]
        axes.plot(np.arange(1, len(frequency) + 1), frequency)
        axes.set(xlabel="dimension (sorted)", ylabel="share of samples firing", ylim=(0, 1.02),
                 title=f"{name}: {zeros:.0%} zeros, {int((frequency > 0).sum())} active dims")
        if has_labels:
            purity = np.sort(_class_purity(features, run["labels"], eps))[::-1]
            axes = grid[1][column]
            axes.plot(np.arange(1, len(purity) + 1), purity)
            axes.axhline(float(purity.mean()), linestyle="--", color="gray")
            axes.set(xlabel="active dimension (sorted)", ylabel="top-class share", ylim=(0, 1.02),
                     title=f"{name}: class purity per dimension (mean {purity.mean():.2f})")
        _draw_top_samples(grid[rows - 1][column], name, run)
    figure.tight_layout()
    return _save(figure, path)


def _draw_top_samples(axes: Any, name: str, run: dict[str, Any]) -> None:
    dims, top = run["top_dims"].tolist(), run["top_samples"]
    axes.set_title(f"{name}: top samples of the {len(dims)} highest-EA dims")
    if "top_images" in run:
        images = run["top_images"]
        per_row = [np.concatenate(list(_as_images(images[row], images.shape[1])), axis=1) for row in range(len(dims))]
        mosaic = np.concatenate(per_row, axis=0)
        axes.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1)
        height = mosaic.shape[0] / len(dims)
        axes.set_yticks([height * (row + 0.5) for row in range(len(dims))], [f"dim {d}" for d in dims])
        axes.set_xticks([])
    elif "texts" in run:
        lines = []
        for dim, texts in zip(dims, run["texts"]):
            lines.append(f"dim {dim}:")
            lines += [f"  {text[:70]}" for text in texts[:3]]
        axes.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7, transform=axes.transAxes)
        axes.axis("off")
    elif "labels" in run:
        labels = run["labels"]
        classes = int(labels.max()) + 1
        width = 0.8 / len(dims)
        for position, (dim, samples) in enumerate(zip(dims, top)):
            counts = np.bincount(labels[samples].numpy(), minlength=classes)
            axes.bar(np.arange(classes) + position * width, counts, width=width, label=f"dim {dim}")
        axes.set(xlabel="class", ylabel="top samples")
        axes.legend(fontsize=7)
    else:
        axes.axis("off")


def plot_curves(curves: dict[str, Sequence[float]], path: str | Path, ylabel: str, title: str) -> Path:
    """One line per run (e.g. test accuracy after every epoch), epochs from 1."""
    figure = _figure(6, 4)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, marker="o" if len(curve) < 20 else None, label=name)
    axes.set(xlabel="epoch", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)
