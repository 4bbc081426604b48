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
    ['active_dims', 'correlation', 'correlation_median', 'dead_dims', 'definitions', 'effective_rank']
    >>> report["definitions"]["sparsity"]
    '1 - mean(|z^| > 1e-05), z^ = z / max(||z||, 1e-12) per row; PKU-ML/non_neg solo/methods/simclr.py sparsity'
    >>> format_table(report).splitlines()[0].split()
    ['metric', 'value', 'meaning']
"""

from __future__ import annotations

import json
import math
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
    ENTROPY_EPS,
    activation_counts,
    consistency_from_counts,
    gram_statistics,
    is_non_negative,
)
from ncl_ext.analysis.plots import plot_activation_frequency, plot_correlation_heatmap
from ncl_ext.analysis.sepin import DEFAULT_INFORMATION_FRACTION, DEFAULT_SEPIN_SAMPLES, sepin_at_k
from ncl_ext.log import progress

__all__ = ["feature_report", "format_table", "metric_definitions", "report_command"]

_OFFICIAL = "PKU-ML/non_neg solo/methods/simclr.py"

#: Row order and one-line meaning of the keys :func:`format_table` knows.
_MEANINGS = {
    "num_samples": "N, samples",
    "num_dims": "D, feature dimensions",
    "num_classes": "distinct labels",
    "non_negative": "every entry >= 0",
    "sparsity": "share of entries with |z^| <= eps, rows L2-normalised (NCL > 0.9, CL ~ 0)",
    "active_dims": "dims with |z^| > eps on some sample (signed: by magnitude)",
    "dead_dims": "dims with |z^| <= eps on every sample",
    "activation_frequency_mean": "share of samples with |z^| > eps in a dim, mean over dims",
    "activation_frequency_median": "... median over dims",
    "activation_frequency_max": "... max over dims",
    "semantic_consistency": "top-label share among a dim's |z^| > eps samples (dense CL ~ 1/C)",
    "correlation": "mean |C - I| over all d^2 entries, C = cosine between non-zero dims",
    "correlation_median": "median |C - I| over all d^2 entries",
    "effective_rank": "exp(H), H = entropy of normalised singular values",
    "effective_rank_entropy": "H = -sum p log(p + 1e-6) (the official erank)",
}


_SEPIN_MEANING = "separated information I(x; z_i | z_-i), nats, mean of the top-k dims"


def metric_definitions(eps: float = DEFAULT_EPS, sepin_samples: int | None = None) -> dict[str, str]:
    """What each number of :func:`feature_report` is, with its source (the report's ``definitions`` entry)."""
    unit_rows = "z^ = z / max(||z||, 1e-12) per row"
    definitions = {
        "non_negative": "every entry of z >= 0",
        "sparsity": f"1 - mean(|z^| > {eps:g}), {unit_rows}; {_OFFICIAL} sparsity",
        "active_dims": f"number of dims with |z^| > {eps:g} on at least one sample ({_OFFICIAL} act_dim: |z| > 0)",
        "dead_dims": f"number of dims with |z^| <= {eps:g} on every sample (D - active_dims)",
        "activation_frequency": f"per dim, share of samples with |z^| > {eps:g}; _mean/_median/_max over dims",
        "semantic_consistency": (
            f"mean over dims with a sample |z^| > {eps:g} of the most frequent label's share among those "
            f"samples; {_OFFICIAL} semantic_consistency"
        ),
        "correlation": (
            "mean of |C - I| over all d^2 entries, C = Zc^T Zc, Zc = the d non-zero columns of z^ each "
            f"L2-normalised (no centring); {_OFFICIAL} orthogonality"
        ),
        "correlation_median": "median of the same d^2 values |C - I|",
        "effective_rank": f"exp(H), H = -sum p log(p + {ENTROPY_EPS:g}), p = singular values of z^ / their sum "
        "(Roy & Vetterli 2007)",
        "effective_rank_entropy": f"H = -sum p log(p + {ENTROPY_EPS:g}); {_OFFICIAL} erank",
    }
    if sepin_samples is not None:
        definitions["sepin@k"] = (
            "Do & Tran 2020 separated information I(x; z_i | z_-i) in nats, mean of the k largest dims; x uniform "
            f"over {sepin_samples} samples, Gaussian channel z + sigma * noise with sigma keeping "
            f"{DEFAULT_INFORMATION_FRACTION:g} of I(x; z); ncl_ext.analysis.sepin"
        )
    return definitions


def feature_report(
    features: Any,
    labels: Any = None,
    eps: float = DEFAULT_EPS,
    sepin_samples: int | None = DEFAULT_SEPIN_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """All feature metrics of :mod:`ncl_ext.analysis` in one JSON-serialisable dict.

    The statistics follow the official NCL code (see :mod:`ncl_ext.analysis.metrics`): rows
    L2-normalised, signed entries by magnitude.

    Args:
        features: ``(N, D)`` features (tensor or numpy array, any device).
        labels: optional ``(N,)`` class labels; enables ``semantic_consistency``.
        eps: zero threshold on the normalised rows (``|z^| <= eps`` is zero).
        sepin_samples: number of samples ``n`` of the SEPIN@k estimate
            (:func:`~ncl_ext.analysis.sepin_at_k`); ``None`` skips SEPIN.
        seed: seeds the SEPIN subset and noise.

    Returns:
        A dict with ``num_samples``, ``num_dims``, ``non_negative``, ``sparsity``,
        ``active_dims`` (dims non-zero on some sample) and ``dead_dims`` (dims zero on every
        sample), ``activation_frequency_mean`` / ``_median`` / ``_max``,
        ``semantic_consistency`` (``None`` without labels or without a non-zero entry),
        ``num_classes`` (with labels), ``correlation`` and ``correlation_median`` (``None``
        for all-zero features), ``effective_rank`` and ``effective_rank_entropy`` (0.0 for
        all-zero features), with ``sepin_samples`` ``sepin@1``, ``sepin@10``, ``sepin@100``,
        ``sepin@all`` (nats), and ``definitions``: metric -> formula and source, so that a
        saved report says what its numbers mean. Fractions are in ``[0, 1]``.
    """
    features, eps = as_features(features), check_eps(eps)
    if sepin_samples is not None:
        sepin_samples = check_int(sepin_samples, "sepin_samples", minimum=2)
    codes = None if labels is None else as_labels(labels, features.shape[0])
    bar = progress(desc="feature report", total=3 if sepin_samples is not None else 2, unit="stage")
    counts = activation_counts(features, eps, normalize_rows=True, codes=codes)
    frequency = (counts if codes is None else counts.sum(0)).div(features.shape[0]).cpu()
    report: dict[str, Any] = {
        "num_samples": features.shape[0],
        "num_dims": features.shape[1],
        "non_negative": is_non_negative(features),
        "sparsity": 1.0 - float(frequency.mean()),
        "active_dims": int((frequency > 0).sum()),
        "dead_dims": int((frequency == 0).sum()),
        "activation_frequency_mean": float(frequency.mean()),
        "activation_frequency_median": float(frequency.median()),
        "activation_frequency_max": float(frequency.max()),
        "semantic_consistency": None,
    }
    if codes is not None:
        report["num_classes"] = int(codes.max()) + 1
        report["semantic_consistency"] = consistency_from_counts(counts)
    bar.update()
    gram = gram_statistics(features)
    report["correlation"] = None if gram.correlation is None else gram.correlation.mean
    report["correlation_median"] = None if gram.correlation is None else gram.correlation.median
    entropy = gram.effective_rank_entropy
    report["effective_rank"] = 0.0 if entropy is None else math.exp(entropy)
    report["effective_rank_entropy"] = 0.0 if entropy is None else entropy
    bar.update()
    if sepin_samples is not None and features.shape[0] >= 2:
        report.update(sepin_at_k(features, num_samples=sepin_samples, seed=seed))
    bar.close()
    report["definitions"] = metric_definitions(eps, sepin_samples if features.shape[0] >= 2 else None)
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
    """A fixed-width text table of a :func:`feature_report` dict: metric, value, meaning.

    Entries that are not single values (``definitions``) are left out.
    """
    scalars = {key: value for key, value in report.items() if not isinstance(value, (dict, list, tuple))}
    keys = [key for key in _MEANINGS if key in scalars] + [key for key in scalars if key not in _MEANINGS]
    width = max([len("metric")] + [len(key) for key in keys]) + 2
    lines = [f"{'metric':<{width}}{'value':>10}  meaning"]
    for key in keys:
        meaning = _MEANINGS.get(key, _SEPIN_MEANING if key.startswith("sepin@") else "")
        lines.append(f"{key:<{width}}{_format_value(scalars[key]):>10}  {meaning}".rstrip())
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
