"""One call that measures everything NCL changes in a feature matrix, and the ``ncl-ext report`` command.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459):
NCL features are sparse, each dimension fires for one class, dimensions are decorrelated
and carry separate information. :func:`feature_report` returns all of these as a dict,
:func:`format_table` prints it, :func:`report_command` does both for saved files and
also writes ``report.json`` and the plots.

Examples:
    >>> import torch
    >>> z = torch.relu(torch.randn(500, 64) - 1.0)
    >>> report = feature_report(z, labels=torch.randint(0, 10, (500,)))
    >>> sorted(k for k in report if not k.startswith(("sepin", "activation")))[:6]
    ['active_dims', 'correlation', 'correlation_median', 'dead_dims', 'effective_rank', 'non_negative']
    >>> format_table(report).splitlines()[0].split()
    ['metric', 'value', 'meaning']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ncl_ext._checks import (
    DEFAULT_EPS,
    as_features,
    as_labels,
    check_eps,
    check_int,
)
from ncl_ext.analysis.loading import load_array
from ncl_ext.analysis.metrics import (
    activation_frequency,
    gram_statistics,
    is_non_negative,
    semantic_consistency,
    sparsity,
)
from ncl_ext.analysis.plots import plot_activation_frequency, plot_correlation_heatmap
from ncl_ext.analysis.sepin import DEFAULT_SEPIN_SAMPLES, sepin_at_k

__all__ = ["feature_report", "format_table", "report_command"]

#: Row order and one-line meaning of the keys :func:`format_table` knows.
_MEANINGS = {
    "num_samples": "N, samples",
    "num_dims": "D, feature dimensions",
    "num_classes": "distinct labels",
    "non_negative": "every entry >= 0",
    "sparsity": "share of entries with |z| <= eps (NCL > 0.9, CL ~ 0)",
    "active_dims": "dims with z > eps on some sample",
    "dead_dims": "dims that never fire",
    "activation_frequency_mean": "share of samples firing a dim, mean over dims",
    "activation_frequency_median": "... median over dims",
    "activation_frequency_max": "... max over dims",
    "semantic_consistency": "share of a dim's firing samples in its top class (CL ~ 1/C)",
    "correlation": "mean |cos| between active dims (0 = orthogonal)",
    "correlation_median": "median |cos| between active dims",
    "effective_rank": "exp(entropy of normalised singular values)",
}


def feature_report(
    features: Any,
    labels: Any = None,
    eps: float = DEFAULT_EPS,
    sepin_samples: int | None = DEFAULT_SEPIN_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """All feature metrics of :mod:`ncl_ext.analysis` in one JSON-serialisable dict.

    Args:
        features: ``(N, D)`` features (tensor or numpy array, any device).
        labels: optional ``(N,)`` class labels; enables ``semantic_consistency``.
        eps: zero threshold (``|z| <= eps`` is zero, ``z > eps`` fires).
        sepin_samples: InfoNCE batch ``n`` of the SEPIN@k estimate
            (:func:`~ncl_ext.analysis.sepin_at_k`); ``None`` skips SEPIN.
        seed: seeds the SEPIN subset.

    Returns:
        A dict with ``num_samples``, ``num_dims``, ``non_negative``, ``sparsity``,
        ``active_dims`` and ``dead_dims`` (counts), ``activation_frequency_mean`` /
        ``_median`` / ``_max``, ``semantic_consistency`` (``None`` without labels or without
        an active dim), ``num_classes`` (with labels), ``correlation`` and
        ``correlation_median`` (``None`` below 2 active dims), ``effective_rank`` and, with
        ``sepin_samples``, ``sepin@1``, ``sepin@10``, ``sepin@100``, ``sepin@all`` (nats).
        Fractions are in ``[0, 1]``. See :mod:`ncl_ext.analysis.metrics` for the formulas.
    """
    features, eps = as_features(features), check_eps(eps)
    if sepin_samples is not None:
        sepin_samples = check_int(sepin_samples, "sepin_samples", minimum=2)
    frequency = activation_frequency(features, eps)
    report: dict[str, Any] = {
        "num_samples": features.shape[0],
        "num_dims": features.shape[1],
        "non_negative": is_non_negative(features),
        "sparsity": sparsity(features, eps),
        "active_dims": int((frequency > 0).sum()),
        "dead_dims": int((frequency == 0).sum()),
        "activation_frequency_mean": float(frequency.mean()),
        "activation_frequency_median": float(frequency.median()),
        "activation_frequency_max": float(frequency.max()),
        "semantic_consistency": None,
    }
    if labels is not None:
        codes = as_labels(labels, features.shape[0])
        report["num_classes"] = int(codes.max()) + 1
        if report["active_dims"] > 0:
            report["semantic_consistency"] = semantic_consistency(features, codes, eps)
    correlation, rank = gram_statistics(features, eps)
    report["correlation"] = None if correlation is None else correlation.mean
    report["correlation_median"] = None if correlation is None else correlation.median
    report["effective_rank"] = rank
    if sepin_samples is not None and features.shape[0] >= 2:
        report.update(sepin_at_k(features, num_samples=sepin_samples, seed=seed))
    return report


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table of a :func:`feature_report` dict: metric, value, meaning."""
    keys = [key for key in _MEANINGS if key in report] + [key for key in report if key not in _MEANINGS]
    width = max([len("metric")] + [len(key) for key in keys]) + 2
    lines = [f"{'metric':<{width}}{'value':>10}  meaning"]
    for key in keys:
        meaning = _MEANINGS.get(
            key, "InfoNCE estimate, nats (mean of the top-k dims)" if key.startswith("sepin@") else ""
        )
        lines.append(f"{key:<{width}}{_format_value(report[key]):>10}  {meaning}".rstrip())
    return "\n".join(lines)


def _default_output(features_path: Path) -> Path:
    return features_path.with_name(f"{features_path.stem}_report")


def report_command(
    features_path: str | Path, labels_path: str | Path | None = None, output: str | Path | None = None
) -> dict[str, Any]:
    """``ncl-ext report``: load saved features (and labels), print the table, write JSON and plots.

    Args:
        features_path: ``(N, D)`` features as ``.pt``, ``.npy`` or ``.safetensors``.
        labels_path: optional ``(N,)`` labels in one of the same formats.
        output: folder for ``report.json``, ``activation_frequency.png`` and
            ``correlation_heatmap.png``; default ``<features stem>_report`` beside the
            features file.

    Returns:
        The report dict (as written to ``report.json``).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file cannot be read or does not hold an ``(N, D)`` / ``(N,)`` array.
    """
    features_path = Path(features_path)
    features = as_features(load_array(features_path, "features"), f"features in {features_path}")
    labels = None
    if labels_path is not None:
        labels = as_labels(load_array(labels_path, "labels"), features.shape[0], f"labels in {labels_path}")
    report = feature_report(features, labels)
    folder = Path(output) if output is not None else _default_output(features_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_activation_frequency(features, folder / "activation_frequency.png")
    plot_correlation_heatmap(features, folder / "correlation_heatmap.png")
    print(format_table(report))
    print(
        f"\nwrote {folder / 'report.json'}, {folder / 'activation_frequency.png'}, {folder / 'correlation_heatmap.png'}"
    )
    return report
