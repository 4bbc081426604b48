"""Synthetic data with known ground truth, for checking the theory and for benchmarks.

:class:`LatentClassData` is the latent-class model behind the theory of Wang, Zhang, Guo,
Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459): every sample
belongs to one of ``C`` latent classes, and a positive pair is two samples of the same
latent class. The co-occurrence matrix of positive pairs is then
``P(x, x+) = sum_c P(c) P(x|c) P(x+|c)``, a non-negative factorisation of rank ``C``, and
NCL should learn features whose dimensions each fire for one latent class, while CL
learns the same information in a rotated, dense, mixed basis. Each class is a union of a
few *anchor* points in input space (its modes); a sample is an anchor plus Gaussian noise,
so positives are not near-duplicates: two samples of a class may come from different
anchors, far apart.

:func:`sparse_class_features` makes NCL-like feature matrices (a fixed share of exact
zeros, active dimensions concentrated on class-specific pools) for the speed benchmarks.

:func:`latent_factor_grid` is the full grid of a few independent discrete factors (as in the
dSprites benchmark of disentanglement), one factor per feature dimension: a perfectly
disentangled representation to compare with a rotated copy of itself.

Examples:
    >>> data = LatentClassData(num_classes=4, anchors_per_class=2, input_dim=8, seed=0)
    >>> x1, x2, classes = data.positive_pairs(16)
    >>> x1.shape, x2.shape, classes.shape
    (torch.Size([16, 8]), torch.Size([16, 8]), torch.Size([16]))
    >>> features, labels = sparse_class_features(100, dim=64, num_classes=5, zero_fraction=0.9)
    >>> float((features == 0).float().mean())
    0.90625
    >>> codes, factors = latent_factor_grid(num_factors=2, levels=3, dim=4)
    >>> codes[:4].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import torch

from ncl_ext._checks import check_int, check_positive

__all__ = ["LatentClassData", "latent_factor_grid", "sparse_class_features"]


class LatentClassData:
    """``num_classes`` latent classes, each a mixture of ``anchors_per_class`` Gaussian modes.

    Args:
        num_classes: ``C``, the number of latent classes.
        anchors_per_class: modes (anchor points) per class.
        input_dim: dimension of the inputs ``x``.
        noise: standard deviation of the Gaussian noise around an anchor (anchors are
            standard normal vectors, so they are about ``sqrt(2 * input_dim)`` apart).
        seed: seeds the anchors; sampling takes its own generator or seed.

    Attributes:
        anchors: ``(C * anchors_per_class, input_dim)`` anchor points.
        anchor_classes: latent class of each anchor.
    """

    def __init__(
        self, num_classes: int = 10, anchors_per_class: int = 3, input_dim: int = 32, noise: float = 0.5, seed: int = 0
    ) -> None:
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.anchors_per_class = check_int(anchors_per_class, "anchors_per_class")
        self.input_dim = check_int(input_dim, "input_dim")
        self.noise = check_positive(noise, "noise")
        generator = torch.Generator().manual_seed(seed)
        self.anchors = torch.randn(self.num_classes * self.anchors_per_class, self.input_dim, generator=generator)
        self.anchor_classes = torch.arange(self.num_classes).repeat_interleave(self.anchors_per_class)

    def _draw(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mode = torch.randint(self.anchors_per_class, classes.shape, generator=generator)
        centres = self.anchors[classes * self.anchors_per_class + mode]
        return centres + self.noise * torch.randn(centres.shape, generator=generator)

    def sample(self, num_samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` inputs with their latent classes (uniform over classes): ``(x, classes)``."""
        generator = torch.Generator().manual_seed(seed)
        classes = torch.randint(self.num_classes, (check_int(num_samples, "num_samples"),), generator=generator)
        return self._draw(classes, generator), classes

    def positive_pairs(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of positive pairs ``(x1, x2, classes)``: ``x1[i]`` and ``x2[i]`` share latent class ``classes[i]``.

        Pass the same ``generator`` across steps for a reproducible stream of batches.
        """
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        classes = torch.randint(self.num_classes, (check_int(batch_size, "batch_size"),), generator=generator)
        return self._draw(classes, generator), self._draw(classes, generator), classes


def sparse_class_features(
    num_samples: int,
    dim: int = 2048,
    num_classes: int = 100,
    zero_fraction: float = 0.95,
    class_share: float = 0.5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features with an exact share of zeros and class-specific active dimensions.

    Each class owns a random pool of ``2 * a`` dimensions, ``a = round((1 - zero_fraction) * dim)``
    the number of non-zeros per sample. A sample of class ``c`` fires ``round(class_share * a)``
    random dimensions of ``c``'s pool plus other dimensions picked uniformly, ``a`` in all,
    with exponentially distributed values. Like trained NCL features: sparse, and samples of
    a class overlap on more dimensions than samples of different classes.

    Returns:
        ``(features, labels)``: a float32 ``(num_samples, dim)`` tensor and a LongTensor of
        classes (balanced, in random order).
    """
    num_samples, dim = check_int(num_samples, "num_samples"), check_int(dim, "dim")
    num_classes = check_int(num_classes, "num_classes")
    if not 0 <= zero_fraction < 1:
        raise ValueError(f"zero_fraction must be in [0, 1), got {zero_fraction!r}")
    if not 0 <= class_share <= 1:
        raise ValueError(f"class_share must be in [0, 1], got {class_share!r}")
    generator = torch.Generator().manual_seed(seed)
    active = max(1, round((1 - zero_fraction) * dim))
    pool_size = min(dim, 2 * active)
    pools = torch.rand(num_classes, dim, generator=generator).argsort(1)[:, :pool_size]
    labels = torch.randperm(num_samples, generator=generator) % num_classes
    from_class = round(class_share * active)
    features = torch.zeros(num_samples, dim)
    for start in range(0, num_samples, 4096):
        rows = labels[start : start + 4096]
        keys = torch.rand(len(rows), dim, generator=generator)
        if from_class:
            picks = torch.rand(len(rows), pool_size, generator=generator).topk(from_class, dim=1).indices
            keys.scatter_(1, pools[rows].gather(1, picks), 2.0)  # these win the top-k below
        chosen = keys.topk(active, dim=1).indices
        values = torch.empty(len(rows), active).exponential_(generator=generator) + 1e-3
        features[start : start + 4096].scatter_(1, chosen, values)
    return features, labels


def latent_factor_grid(
    num_factors: int = 2, levels: int = 16, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every combination of ``num_factors`` independent factors with ``levels`` values each, one per dimension.

    Each sample is one grid point (``levels ** num_factors`` samples, each combination once, as
    in dSprites); dimension ``j < num_factors`` holds factor ``j``'s value ``0 .. levels - 1``
    and the remaining ``dim - num_factors`` dimensions are 0. Every factor is needed to tell
    the samples apart, and each is stored in one dimension only: an axis-aligned (perfectly
    disentangled) representation. Multiplying by a random rotation spreads each factor over
    all ``dim`` dimensions while keeping all information.

    Returns:
        ``(codes, factors)``: a float32 ``(levels ** num_factors, dim)`` tensor and the
        LongTensor ``(levels ** num_factors, num_factors)`` of factor values.
    """
    num_factors, levels = check_int(num_factors, "num_factors"), check_int(levels, "levels", minimum=2)
    dim = num_factors if dim is None else check_int(dim, "dim")
    if dim < num_factors:
        raise ValueError(f"dim must be >= num_factors={num_factors}, got {dim}")
    if levels**num_factors > 2**20:
        raise ValueError(f"levels ** num_factors = {levels**num_factors} samples is too many (limit 2**20)")
    factors = torch.cartesian_prod(*[torch.arange(levels)] * num_factors).reshape(-1, num_factors)
    codes = torch.zeros(len(factors), dim)
    codes[:, :num_factors] = factors.float()
    return codes, factors
