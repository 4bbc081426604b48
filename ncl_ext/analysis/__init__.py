"""Feature analysis: what non-negative contrastive learning does to features, measured.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459).

- :func:`feature_report` — sparsity, semantic consistency, correlation, effective rank,
  active/dead dims, activation frequency, SEPIN@k in one dict, with the definition of each
  number (they follow the official NCL code); :func:`format_table` prints it;
- metrics one by one — :func:`sparsity`, :func:`semantic_consistency`,
  :func:`feature_correlation`, :func:`effective_rank`, :func:`effective_rank_entropy`,
  :func:`activation_frequency`, :func:`active_dims`, :func:`dead_dims`,
  :func:`is_non_negative`, :func:`sepin_at_k`; :func:`batch_statistics` for training logs;
- feature selection — :func:`expected_activation_order` (EA), :func:`select_top_dims`,
  :func:`random_dims`;
- retrieval — :func:`retrieval_precision`, :func:`mean_average_precision`,
  :func:`cosine_top_k`, and :class:`SparseIndex` (exact inverted-index search);
- probes — :func:`linear_probe`, :func:`knn_accuracy`;
- plots — :func:`plot_activation_frequency`, :func:`plot_correlation_heatmap`,
  :func:`plot_top_activating_images`, :func:`write_top_activating_texts`;
- synthetic data with known latent classes and factors — :class:`LatentClassData`,
  :func:`sparse_class_features`, :func:`latent_factor_grid`.

Examples:
    >>> import torch
    >>> from ncl_ext.analysis import feature_report, retrieval_precision
    >>> z = torch.relu(torch.randn(200, 32) - 1.0)
    >>> labels = torch.randint(0, 4, (200,))
    >>> report = feature_report(z, labels)
    >>> 0.8 < report["sparsity"] < 0.9
    True
    >>> 0.0 <= retrieval_precision(z, labels, k=10) <= 1.0
    True
"""

from ncl_ext._checks import DEFAULT_EPS
from ncl_ext.analysis.loading import load_array
from ncl_ext.analysis.metrics import (
    CorrelationSummary,
    activation_frequency,
    active_dims,
    batch_statistics,
    correlation_matrix,
    dead_dims,
    effective_rank,
    effective_rank_entropy,
    feature_correlation,
    is_non_negative,
    semantic_consistency,
    sparsity,
)
from ncl_ext.analysis.plots import (
    plot_activation_frequency,
    plot_correlation_heatmap,
    plot_top_activating_images,
    top_activating_samples,
    write_top_activating_texts,
)
from ncl_ext.analysis.probes import knn_accuracy, linear_probe
from ncl_ext.analysis.report import feature_report, format_table, report_command
from ncl_ext.analysis.retrieval import (
    cosine_top_k,
    mean_average_precision,
    retrieval_precision,
)
from ncl_ext.analysis.selection import (
    expected_activation,
    expected_activation_order,
    random_dims,
    select_top_dims,
)
from ncl_ext.analysis.sepin import sepin_at_k, sepin_noise_std, sepin_scores
from ncl_ext.analysis.sparse_index import SparseIndex
from ncl_ext.analysis.synthetic import LatentClassData, latent_factor_grid, sparse_class_features

__all__ = [
    "DEFAULT_EPS",
    "CorrelationSummary",
    "LatentClassData",
    "SparseIndex",
    "activation_frequency",
    "active_dims",
    "batch_statistics",
    "correlation_matrix",
    "cosine_top_k",
    "dead_dims",
    "effective_rank",
    "effective_rank_entropy",
    "expected_activation",
    "expected_activation_order",
    "feature_correlation",
    "feature_report",
    "format_table",
    "is_non_negative",
    "knn_accuracy",
    "latent_factor_grid",
    "linear_probe",
    "load_array",
    "mean_average_precision",
    "plot_activation_frequency",
    "plot_correlation_heatmap",
    "plot_top_activating_images",
    "random_dims",
    "report_command",
    "retrieval_precision",
    "select_top_dims",
    "semantic_consistency",
    "sepin_at_k",
    "sepin_noise_std",
    "sepin_scores",
    "sparse_class_features",
    "sparsity",
    "top_activating_samples",
    "write_top_activating_texts",
]
