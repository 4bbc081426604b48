"""The non-negative head: modes, rep_relu's gradient, make_nonneg on every output type."""

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import ncl_ext
from ncl_ext.nonneg import MODES, NON_NEGATIVE_MODES

REFERENCE = {  # independent numpy definitions of each map
    "relu": lambda x: np.maximum(x, 0),
    "rep_relu": lambda x: np.maximum(x, 0),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "exp": np.exp,
    "identity": lambda x: x,
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
}


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_numpy_reference(mode):
    z = torch.randn(16, 8, dtype=torch.float64) * 3
    expected = REFERENCE[mode](z.numpy())
    np.testing.assert_allclose(ncl_ext.nonneg(z, mode).numpy(), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ncl_ext.NonNegative(mode)(z).numpy(), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", NON_NEGATIVE_MODES)
def test_non_negative_modes_are_non_negative(mode):
    assert (ncl_ext.nonneg(torch.randn(256) * 10, mode) >= 0).all()
    assert ncl_ext.NonNegative(mode).is_non_negative


def test_ablation_modes_are_flagged_and_can_be_negative():
    for mode in ("identity", "gelu", "leaky_relu"):
        assert not ncl_ext.NonNegative(mode).is_non_negative
        assert (ncl_ext.nonneg(torch.tensor([-3.0]), mode) < 0).all()


def test_none_mode_is_identity():
    z = torch.randn(3, 4)
    assert ncl_ext.nonneg(z, None) is z


def test_rep_relu_gradient_is_gelus_gradient():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    ncl_ext.nonneg(x, "rep_relu").sum().backward()
    xs = x.detach().numpy()
    cdf = 0.5 * (1 + np.vectorize(math.erf)(xs / math.sqrt(2)))
    pdf = np.exp(-0.5 * xs**2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(x.grad.numpy(), cdf + xs * pdf, rtol=1e-10)
    # and torch's own GELU derivative agrees
    y = x.detach().clone().requires_grad_()
    torch.nn.functional.gelu(y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=1e-8)


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="mode='tanh'.*'relu'.*'rep_relu'"):
        ncl_ext.NonNegative("tanh")
    with pytest.raises(ValueError, match="mode"):
        ncl_ext.nonneg(torch.randn(2), "tanh")


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x):
        y = self.linear(x)
        return y, -y


class DictModel(TupleModel):
    def forward(self, x):
        y = self.linear(x)
        return {"embedding": y, "logits": -y}


Pair = namedtuple("Pair", "first second")


class NamedTupleModel(TupleModel):
    def forward(self, x):
        y = self.linear(x)
        return Pair(y, -y)


def test_make_nonneg_tensor_output_and_repr():
    model = ncl_ext.make_nonneg(nn.Linear(4, 6), mode="relu")
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), torch.relu(model.model(x)))
    assert "NonNegative(mode='relu')" in repr(model)


@pytest.mark.parametrize("field", [None, 0, 1])
def test_make_nonneg_tuple_output(field):
    model = ncl_ext.make_nonneg(TupleModel(), field=field)
    x = torch.randn(5, 4)
    raw = model.model(x)
    out = model(x)
    chosen = 0 if field is None else field
    torch.testing.assert_close(out[chosen], torch.relu(raw[chosen]))
    torch.testing.assert_close(out[1 - chosen], raw[1 - chosen])
    assert isinstance(out, tuple)


def test_make_nonneg_namedtuple_and_dict_outputs():
    x = torch.randn(5, 4)
    named = ncl_ext.make_nonneg(NamedTupleModel(), field=1)
    out = named(x)
    assert isinstance(out, Pair) and (out.second >= 0).all()
    torch.testing.assert_close(out.first, named.model(x).first)

    as_dict = ncl_ext.make_nonneg(DictModel(), field="logits")
    out = as_dict(x)
    torch.testing.assert_close(out["logits"], torch.relu(as_dict.model(x)["logits"]))
    torch.testing.assert_close(out["embedding"], as_dict.model(x)["embedding"])
    default = ncl_ext.make_nonneg(DictModel())(x)
    assert (default["embedding"] >= 0).all() and (default["logits"] < 0).any()


def test_make_nonneg_hf_model_output_several_fields():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class Encoder(TupleModel):
        def forward(self, x):
            y = self.linear(x)
            return BaseModelOutputWithPooling(last_hidden_state=y, pooler_output=-y)

    model = ncl_ext.make_nonneg(Encoder(), field=["last_hidden_state", "pooler_output"])
    out = model(torch.randn(3, 4))
    assert isinstance(out, BaseModelOutputWithPooling)
    assert (out.last_hidden_state >= 0).all() and (out[1] >= 0).all() and (out["pooler_output"] >= 0).all()


def test_make_nonneg_bad_fields_name_the_argument():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="field='missing'.*embedding"):
        ncl_ext.make_nonneg(DictModel(), field="missing")(x)
    with pytest.raises(ValueError, match="field=5"):
        ncl_ext.make_nonneg(TupleModel(), field=5)(x)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        ncl_ext.make_nonneg(lambda x: x)


def test_wrapper_trains_and_round_trips_state_dict(tmp_path):
    torch.manual_seed(0)
    model = ncl_ext.make_nonneg(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 6)), mode="rep_relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    before = model.model[0].weight.detach().clone()
    model(x).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.model[0].weight)

    torch.save(model.state_dict(), tmp_path / "w.pt")
    clone = ncl_ext.make_nonneg(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 6)), mode="rep_relu")
    clone.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    torch.testing.assert_close(clone(x), model(x))
    assert all(key.startswith("model.") for key in model.state_dict())
