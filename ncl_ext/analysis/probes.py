"""Downstream probes of frozen features: a linear classifier and a weighted kNN classifier.

The linear probe is the standard protocol of contrastive learning (SimCLR, Chen et al.,
ICML 2020), used by Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning",
ICLR 2024 (arXiv:2403.12459) to show that NCL keeps (or improves) CL's accuracy. The kNN
classifier is the temperature-weighted vote of Wu et al., "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination", CVPR 2018, that SimCLR-style code uses to
monitor training. The logistic regression with its regularisation chosen on validation rows
is the node-classification probe of GRACE (graph contrastive learning).

Examples:
    >>> import torch
    >>> train, test = torch.randn(200, 8), torch.randn(50, 8)
    >>> train_y, test_y = (train[:, 0] > 0).long(), (test[:, 0] > 0).long()
    >>> linear_probe(train, train_y, test, test_y, epochs=300) > 0.8
    True
    >>> knn_accuracy(train, train_y, test, test_y, k=20) > 0.7
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ncl_ext._checks import as_features, as_labels, check_int, check_positive
from ncl_ext.analysis.retrieval import cosine_top_k
from ncl_ext.log import progress

__all__ = ["knn_accuracy", "linear_probe", "logistic_regression_accuracies", "logistic_regression_accuracy"]


def _train_test(
    train_features: Any, train_labels: Any, test_features: Any, test_labels: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Validated features and labels coded jointly (``0..C-1`` over train and test labels)."""
    train = as_features(train_features, "train_features")
    test = as_features(test_features, "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_features have {train.shape[1]} dims but test_features have {test.shape[1]}")
    labels = []
    for name, values, count in (("train_labels", train_labels, len(train)), ("test_labels", test_labels, len(test))):
        array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values).reshape(-1)
        if array.shape[0] != count:
            raise ValueError(f"{name} has {array.shape[0]} entries but there are {count} samples")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or Inf values")
        labels.append(array)
    try:
        classes, codes = np.unique(np.concatenate(labels), return_inverse=True)
    except TypeError as error:
        raise ValueError(f"labels must be comparable class labels: {error}") from None
    codes = torch.from_numpy(codes.reshape(-1).astype(np.int64))
    return train, codes[: len(train)], test, codes[len(train) :], len(classes)


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def linear_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    batch_size: int | None = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a linear classifier trained on frozen, standardised features.

    Features are standardised with the mean and standard deviation of the *training*
    features (dimensions with zero variance are only centred), then a linear layer is
    trained with cross-entropy and Adam under a cosine learning-rate schedule.

    Args:
        train_features, train_labels: ``(N, D)`` features and ``(N,)`` labels to fit on.
        test_features, test_labels: ``(M, D)`` and ``(M,)`` to score on.
        epochs: passes over the training set.
        lr: Adam learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
        batch_size: ``None`` for full-batch training, or a mini-batch size.
        device: where to train; default CUDA when available, else CPU.
        seed: seeds the mini-batch order (the classifier starts at zero).

    Returns:
        Accuracy on the test set, a fraction in ``[0, 1]``.
    """
    train, train_y, test, test_y, num_classes = _train_test(train_features, train_labels, test_features, test_labels)
    epochs = check_int(epochs, "epochs")
    lr = check_positive(lr, "lr")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    device = _default_device(device)
    train, test = train.to(device, torch.float32), test.to(device, torch.float32)
    train_y, test_y = train_y.to(device), test_y.to(device)

    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    train, test = (train - mean) / std, (test - mean) / std

    generator = torch.Generator().manual_seed(seed)
    classifier = torch.nn.Linear(train.shape[1], num_classes).to(device)
    torch.nn.init.zeros_(classifier.weight)  # the problem is convex: start where sklearn does
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    batch = len(train) if batch_size is None else min(batch_size, len(train))
    steps_per_epoch = -(-len(train) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in progress(range(epochs), "linear probe", unit="epoch"):
        order = torch.randperm(len(train), generator=generator).to(device) if batch < len(train) else None
        for step in range(steps_per_epoch):
            rows = slice(None) if order is None else order[step * batch : (step + 1) * batch]
            loss = F.cross_entropy(classifier(train[rows]), train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        predictions = classifier(test).argmax(1)
    return float((predictions == test_y).double().mean())


def knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Accuracy of the temperature-weighted kNN vote on cosine similarity (InstDisc / SimCLR monitor).

    For each test sample, its ``k`` most cosine-similar training samples vote for their
    labels with weight ``exp(similarity / temperature)``; the class with the largest total
    weight is the prediction (ties: the lower class code).

    Args:
        train_features, train_labels: the memory bank, ``(N, D)`` and ``(N,)``.
        test_features, test_labels: ``(M, D)`` and ``(M,)`` to classify.
        k: neighbours per test sample (200 in InstDisc; 20 is also common), ``<= N``.
        temperature: vote temperature (0.1 in InstDisc), > 0.

    Returns:
        Accuracy on the test set, a fraction in ``[0, 1]``.
    """
    train, train_y, test, test_y, num_classes = _train_test(train_features, train_labels, test_features, test_labels)
    k = check_int(k, "k")
    if k > len(train):
        raise ValueError(f"k={k} exceeds the {len(train)} training samples")
    temperature = check_positive(temperature, "temperature")
    similarities, neighbours = cosine_top_k(test, train, k)
    similarities = similarities.to(torch.float64).cpu()
    weights = ((similarities - similarities[:, :1]) / temperature).exp()  # best first: no overflow
    votes = torch.zeros(len(test), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_y[neighbours.cpu()], weights)
    return float((votes.argmax(1) == test_y).double().mean())


def logistic_regression_accuracy(
    features: Any,
    labels: Any,
    split: tuple[Any, Any, Any],
    inverse_regularization: Sequence[float] = (0.0625, 0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0),
) -> float:
    """The test accuracy of :func:`logistic_regression_accuracies` (GRACE's probe)."""
    return logistic_regression_accuracies(features, labels, split, inverse_regularization)[1]


def logistic_regression_accuracies(
    features: Any,
    labels: Any,
    split: tuple[Any, Any, Any],
    inverse_regularization: Sequence[float] = (0.0625, 0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0),
) -> tuple[float, float]:
    """``(validation, test)`` accuracy of an L2-regularised logistic regression on L2-normalised features.

    GRACE's probe: scikit-learn's one-vs-rest ``liblinear`` logistic regression (the classifier
    of Zhu et al., "Deep Graph Contrastive Representation Learning", 2020) is fitted on the
    ``train`` rows for each ``C`` (inverse L2 strength) in ``inverse_regularization``; the one
    most accurate on the ``validation`` rows (the first, on a tie) is scored on the ``test`` rows,
    which no choice has seen. The validation accuracy is that of the chosen ``C``: what a
    setting may be selected on.

    Args:
        features: ``(N, D)`` features; labels: ``(N,)`` class labels.
        split: ``(train, validation, test)`` row indices.
        inverse_regularization: the candidate values of ``C``.

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]] * 3)
        >>> y = torch.tensor([0, 0, 1, 1] * 3)
        >>> logistic_regression_accuracies(x, y, (torch.arange(4), torch.arange(4, 8), torch.arange(8, 12)))
        (1.0, 1.0)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    features = as_features(features)
    codes = as_labels(labels, features.shape[0])
    if not inverse_regularization:
        raise ValueError("inverse_regularization must list at least one value of C")
    x = F.normalize(features.double(), dim=1).cpu().numpy()
    y = codes.numpy()
    train, validation, test = (torch.as_tensor(index).cpu().numpy() for index in split)
    best_score, best_model = -1.0, None
    for c in inverse_regularization:
        c = check_positive(c, "inverse_regularization")
        model = OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear")).fit(x[train], y[train])
        score = model.score(x[validation], y[validation])
        if score > best_score:
            best_score, best_model = score, model
    return float(best_score), float(best_model.score(x[test], y[test]))
