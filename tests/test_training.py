"""The shared training loop: optimisation, logs, atomic checkpoints and exact resume."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ncl_ext.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ncl_ext.training import TensorBatches, TrainConfig, Trainer, seed_everything


class Interrupted(Exception):
    pass


def train(output_dir, interrupt_after=None, epochs=3, grad_accum_steps=1):
    """A small regression run whose loss depends on the model, the data order and torch's RNG."""
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(96, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    calls = {"n": 0}

    def compute_loss(model, batch):
        calls["n"] += 1
        if interrupt_after is not None and calls["n"] > interrupt_after:
            raise Interrupted
        inputs, targets = batch
        noisy = inputs + 0.05 * torch.randn_like(inputs)  # uses the global RNG: resume must restore it
        prediction = model(noisy)
        return {"loss": (prediction - targets).pow(2).mean(), "features": torch.relu(prediction)}

    config = TrainConfig(
        epochs=epochs, lr=0.05, optimizer="sgd", warmup_epochs=1, checkpoint_every=5, log_every=2,
        progress=False, grad_accum_steps=grad_accum_steps,
    )
    return Trainer(model, compute_loss, TensorBatches(x, y, batch_size=16), config, output_dir).fit()


def test_loss_decreases_and_logs_are_written(tmp_path):
    result = train(tmp_path)
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < 0.5 * losses[0]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [r["step"] for r in result.history]
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "step", "lr", "loss"]
    assert {"sparsity", "active_dims", "effective_rank"} <= set(header)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_killed_run_resumes_to_identical_weights(tmp_path, grad_accum_steps):
    reference = train(tmp_path / "reference", grad_accum_steps=grad_accum_steps)
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", interrupt_after=9, grad_accum_steps=grad_accum_steps)  # mid-epoch 1
    resumed = train(tmp_path / "resumed", grad_accum_steps=grad_accum_steps)
    assert resumed.resumed_from_step is not None and 0 < resumed.resumed_from_step < 18
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["loss"] for r in reference.history] == [r["loss"] for r in resumed.history]


def test_finished_run_is_not_trained_again(tmp_path):
    train(tmp_path)
    again = train(tmp_path, interrupt_after=0)  # would raise if it trained a single step
    assert again.resumed_from_step == 18


def test_nan_loss_stops_with_a_clear_error():
    model = nn.Linear(2, 1)
    config = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", warmup_epochs=0, log_every=1, progress=False)
    batches = TensorBatches(torch.randn(8, 2), batch_size=4)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        Trainer(model, lambda m, b: m(b).sum() * float("nan"), batches, config, None).fit()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"optimizer": "adam2"}, "optimizer="), ({"epochs": 0}, "epochs="), ({"lr": -1.0}, "lr="),
     ({"mixed_precision": "fp8"}, "mixed_precision=")],
)
def test_bad_config_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_checkpoint_is_safetensors_and_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 7}, {"optimizer": {"lr": torch.tensor(0.5)}})
    path = latest_checkpoint(tmp_path)
    assert (path / "model.safetensors").is_file()
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(path / "model.safetensors")["weight"], model.weight.detach())
    clone = nn.Linear(3, 2)
    state = load_checkpoint(tmp_path, clone)
    assert state["step"] == 7 and float(state["extra_state"]["optimizer"]["lr"]) == 0.5
    torch.testing.assert_close(clone.weight, model.weight)


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 1})
    (tmp_path / ".step-000000002.tmp").mkdir()  # a save killed before its rename
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing", model)


def test_epoch_evaluation_is_logged_once_per_epoch_in_eval_mode(tmp_path):
    seen = []

    def evaluate(model, epoch):
        seen.append((epoch, model.training))
        return {"probe": epoch / 10}

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    config = TrainConfig(epochs=2, lr=0.1, optimizer="sgd", warmup_epochs=0, log_every=100, progress=False)
    batches = TensorBatches(torch.randn(16, 2), batch_size=4)
    result = Trainer(model, lambda m, b: m(b).pow(2).mean(), batches, config, tmp_path, evaluate_epoch=evaluate).fit()
    assert seen == [(0, False), (1, False)]
    assert [r.get("probe") for r in result.history] == [0.0, 0.1]
    assert model.training


def lars_reference_step(params, grads, buffers, lr, weight_decay, eta, clip, momentum=0.9, eps=1e-8):
    """solo-learn's LARS (eta, clip_lr, exclude_bias_n_norm=True), one step, written from its formula in numpy."""
    updated = []
    for index, (p, g) in enumerate(zip(params, grads)):
        d_p = g.copy()
        p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        if p.ndim != 1 and p_norm != 0 and g_norm != 0:  # biases and norm weights: plain SGD, no decay
            lars_lr = eta * p_norm / (g_norm + p_norm * weight_decay + eps)
            if clip:
                lars_lr = min(lars_lr / lr, 1.0)
            d_p = (d_p + weight_decay * p) * lars_lr
        buffers[index] = d_p.copy() if buffers[index] is None else momentum * buffers[index] + d_p
        updated.append(p - lr * buffers[index])
    return updated


@pytest.mark.parametrize("clip", [True, False])
def test_lars_of_the_paper_presets_takes_solo_learns_steps(clip):
    from ncl_ext.training import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    config = TrainConfig(optimizer="lars", lr=0.4, weight_decay=1e-4, lars_trust_coeff=0.02, lars_clip=clip)
    optimizer = build_optimizer(model, config)
    params = [p.detach().double().numpy().copy() for p in model.parameters()]
    buffers = [None] * len(params)
    for step in range(3):  # three steps: the momentum buffers take part
        inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        model(inputs).pow(2).sum().backward()
        grads = [p.grad.detach().double().numpy().copy() for p in model.parameters()]
        params = lars_reference_step(params, grads, buffers, 0.4, 1e-4, 0.02, clip)
        optimizer.step()
        for got, want in zip(model.parameters(), params):
            np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=2e-5, atol=1e-7)
