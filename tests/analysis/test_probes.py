"""Linear probe against scikit-learn's logistic regression; kNN vote against a per-sample loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ncl_ext.analysis import knn_accuracy, linear_probe
from ncl_ext.analysis.probes import logistic_regression_accuracies
from tests._analysis_threads import one_torch_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.usefixtures("one_torch_thread")
def test_linear_probe_matches_sklearn_logistic_regression(digits) -> None:
    train_x, train_y, test_x, test_y = digits
    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
    expected = reference.score(scaler.transform(test_x), test_y)
    accuracy = linear_probe(train_x, train_y, test_x, test_y, epochs=100, device="cpu")
    assert expected > 0.9
    assert accuracy == pytest.approx(expected, abs=0.03)


@pytest.mark.usefixtures("one_torch_thread")
def test_linear_probe_full_batch_and_string_labels(digits) -> None:
    train_x, train_y, test_x, test_y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    accuracy = linear_probe(train_x, names[train_y], test_x, names[test_y], epochs=100, lr=0.05, batch_size=None)
    assert accuracy > 0.9


def test_grace_probe_chooses_c_on_validation_rows_and_scores_test_rows(digits) -> None:
    from sklearn.multiclass import OneVsRestClassifier

    x, y = digits[0][:90].astype(np.float64), digits[1][:90]
    train, validation, test = np.arange(0, 30), np.arange(30, 60), np.arange(60, 90)
    grid = (1.0, 10.0, 100.0, 1000.0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    fitted = [OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear")).fit(unit[train], y[train]) for c in grid]
    on_validation = [model.score(unit[validation], y[validation]) for model in fitted]
    on_test = [model.score(unit[test], y[test]) for model in fitted]
    chosen = int(np.argmax(on_validation))  # the first of tied C values, as the probe keeps it
    assert chosen != int(np.argmax(on_test))  # so a probe that chose C on the test rows would fail below
    expected = (on_validation[chosen], on_test[chosen])
    assert logistic_regression_accuracies(x, y, (train, validation, test), grid) == pytest.approx(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_linear_probe_runs_on_cuda(digits) -> None:
    train_x, train_y, test_x, test_y = digits
    assert linear_probe(train_x, train_y, test_x, test_y, epochs=30, device="cuda") > 0.9


def reference_knn(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray, k: int, t: float
) -> float:
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for x, y in zip(test, test_y):
        similarity = train @ x
        neighbours = np.argsort(-similarity, kind="stable")[:k]
        votes: dict[int, float] = {}
        for j in neighbours:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + np.exp(similarity[j] / t)
        correct += max(sorted(votes), key=lambda c: votes[c]) == y
    return correct / len(test)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (20, 0.1), (200, 0.5)])
def test_knn_accuracy_matches_a_loop(digits, k: int, temperature: float) -> None:
    train_x, train_y, test_x, test_y = digits
    expected = reference_knn(train_x.astype(np.float64), train_y, test_x.astype(np.float64), test_y, k, temperature)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature) == pytest.approx(expected)


def test_probe_bad_inputs() -> None:
    x = torch.rand(10, 4)
    y = torch.arange(10) % 2
    with pytest.raises(ValueError, match="train_labels has 9 entries"):
        linear_probe(x, y[:9], x, y)
    with pytest.raises(ValueError, match="test_features have 3"):
        knn_accuracy(x, y, torch.rand(10, 3), y)
    with pytest.raises(ValueError, match="k=11 exceeds"):
        knn_accuracy(x, y, x, y, k=11)
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x, y, x, y, epochs=0)
    with pytest.raises(ValueError, match="train_features contains NaN"):
        linear_probe(torch.full((10, 4), float("nan")), y, x, y)
