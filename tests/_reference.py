"""Independent numpy definitions of the losses, written pair by pair from their formulas.

The library computes the same quantities with matrix tricks (one stacked matrix product,
Gram identities, tiling); these references deliberately use plain loops over anchors and
pairs in float64, so an error in a trick cannot hide in both.
"""

from __future__ import annotations

import numpy as np

NONNEG = {
    None: lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "rep_relu": lambda x: np.maximum(x, 0.0),  # ReLU forward; only its gradient differs
    "softplus": lambda x: np.logaddexp(0.0, x),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "exp": np.exp,
}
MODES = list(NONNEG)


def logsumexp(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def normalize(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.maximum(norms, eps)


def ntxent(z1: np.ndarray, z2: np.ndarray, temperature: float, mode: str | None = None) -> float:
    """SimCLR's NT-Xent: each of the 2N views against the 2N - 1 others."""
    views = normalize(NONNEG[mode](np.concatenate([z1, z2])))
    n, m = len(z1), 2 * len(z1)
    losses = []
    for a in range(m):
        positive = (a + n) % m
        others = [views[a] @ views[b] / temperature for b in range(m) if b != a]
        losses.append(logsumexp(others) - views[a] @ views[positive] / temperature)
    return float(np.mean(losses))


def spectral(z1: np.ndarray, z2: np.ndarray, mode: str | None = None) -> float:
    """-2 mean over positive pairs + mean over (anchor, other non-positive view) of the squared dot."""
    views = NONNEG[mode](np.concatenate([z1, z2]))
    n, m = len(z1), 2 * len(z1)
    attraction = -2 * np.mean([views[i] @ views[n + i] for i in range(n)])
    negatives = [(views[a] @ views[b]) ** 2 for a in range(m) for b in range(m) if b not in (a, (a + n) % m)]
    return float(attraction + (np.mean(negatives) if negatives else 0.0))


def _clip_features(image, text, mode):
    if mode is None:
        return image, text
    return normalize(NONNEG[mode](image)), normalize(NONNEG[mode](text))


def clip(image, text, logit_scale: float, logit_bias: float = 0.0, mode: str | None = None) -> float:
    """Mean of the image->text and text->image cross-entropies, matching pairs on the diagonal."""
    image, text = _clip_features(image, text, mode)
    logits = logit_scale * image @ text.T + logit_bias
    n = len(image)
    image_loss = np.mean([logsumexp(logits[i]) - logits[i, i] for i in range(n)])
    text_loss = np.mean([logsumexp(logits[:, j]) - logits[j, j] for j in range(n)])
    return float((image_loss + text_loss) / 2)


def siglip(image, text, logit_scale: float, logit_bias: float, mode: str | None = None) -> float:
    """-sum over all pairs of log sigmoid(+-logit) / N (+ for matching pairs)."""
    image, text = _clip_features(image, text, mode)
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            sign = 1.0 if i == j else -1.0
            logit = logit_scale * image[i] @ text[j] + logit_bias
            total += -np.logaddexp(0.0, -sign * logit)  # log sigmoid(sign * logit)
    return float(-total / n)


def cross_entropy(features, labels, weight, bias=None, mode="relu", nonneg_weights=False, label_smoothing=0.0):
    """Linear classifier on nonneg(features), cross-entropy with uniform label smoothing."""
    weight = NONNEG[mode](weight) if nonneg_weights else weight
    logits = NONNEG[mode](features) @ weight.T + (0.0 if bias is None else bias)
    losses = []
    for row, label in zip(logits, labels, strict=True):
        log_probs = row - logsumexp(row)
        losses.append((1 - label_smoothing) * -log_probs[label] + label_smoothing * -log_probs.mean())
    return float(np.mean(losses))


def numeric_gradient(function, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar numpy function of ``x``."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[index] += step
        upper = function(shifted)
        shifted[index] -= 2 * step
        grad[index] = (upper - function(shifted)) / (2 * step)
    return grad


# ---- The NCL feature statistics, transcribed from the official code ---------------------
# PKU-ML/non_neg, solo/methods/simclr.py: the training step L2-normalises the rows of z and
# logs sparsity, erank, orthogonality, semantic_consistency and act_dim of that z.

OFFICIAL_EPS = 1e-5


def unit_rows(z: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.normalize(z, dim=1)``: rows divided by ``max(||row||, 1e-12)``."""
    return z / np.maximum(np.sqrt((z * z).sum(axis=1, keepdims=True)), 1e-12)


def official_sparsity(z: np.ndarray) -> float:
    """``1 - (|z| > 1e-5).mean()`` of the normalised rows."""
    return float(1 - (np.abs(unit_rows(z)) > OFFICIAL_EPS).mean())


def official_erank_entropy(z: np.ndarray) -> float:
    """``s = svdvals(z); s = s / s.sum(); -sum(s * log(s + 1e-6))`` of the normalised rows."""
    s = np.linalg.svd(unit_rows(z), compute_uv=False)
    s = s / s.sum()
    return float(-(s * np.log(s + 1e-6)).sum())


def official_orthogonality(z: np.ndarray) -> float:
    """Non-zero columns of the normalised rows, each column normalised, ``|F^T F - I|.mean()``."""
    f = unit_rows(z)
    f = f[:, np.abs(f).sum(axis=0) > 0]
    f = f / np.maximum(np.sqrt((f * f).sum(axis=0, keepdims=True)), 1e-12)
    return float(np.abs(f.T @ f - np.eye(f.shape[1])).mean())


def official_semantic_consistency(z: np.ndarray, labels: np.ndarray) -> float:
    """Per non-zero dim of the normalised rows: top label share among samples with |z| > 1e-5; mean over dims."""
    f = unit_rows(z[:, np.abs(z).sum(axis=0) > 0])
    shares = []
    for column in f.T:
        selected = labels[np.abs(column) > OFFICIAL_EPS]
        if len(selected):
            counts = np.bincount(selected)
            shares.append(counts.max() / counts.sum())
    return float(np.mean(shares))


def active_dim_count(z: np.ndarray, eps: float = OFFICIAL_EPS) -> int:
    """Dims with ``|z| > eps`` on some normalised row (``act_dim`` of the official code is ``eps = 0``)."""
    return int((np.abs(unit_rows(z)) > eps).any(axis=0).sum())
