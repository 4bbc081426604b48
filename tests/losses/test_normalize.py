"""nonneg_normalize (live rows as F.normalize, dead rows zero with zero gradient) and dead_row_fraction."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncl_ext.losses._normalize import NORM_EPS, dead_row_fraction, nonneg_normalize
from tests._reference import NONNEG, normalize


def features_with_dead_rows(dtype=torch.float64):
    """Rows 1 and 4 dead after ReLU (all units negative), row 3 below the norm threshold, the rest live."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=generator, dtype=dtype)
    z[1] = -z[1].abs() - 0.1
    z[4] = -z[4].abs()
    z[3] = 1e-9 * z[3].abs()
    return z


TORCH_MAPS = {None: lambda x: x, "relu": F.relu, "softplus": F.softplus}


@pytest.mark.parametrize("mode", [None, "relu", "softplus"])
def test_live_rows_equal_f_normalize_in_value_and_gradient(mode):
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(7, 16, generator=generator, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(7, 16, generator=generator, dtype=torch.float64)
    ours = nonneg_normalize(z, mode)
    theirs = F.normalize(TORCH_MAPS[mode](z), dim=1, eps=NORM_EPS)
    assert (theirs.norm(dim=1) > 0.5).all()  # every row live
    np.testing.assert_allclose(ours.detach().numpy(), normalize(NONNEG[mode](z.detach().numpy())), rtol=1e-15)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    expected = torch.autograd.grad(theirs, z, upstream)
    torch.testing.assert_close(torch.autograd.grad(ours, z, upstream), expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_dead_and_below_threshold_rows_are_zero_and_pass_no_gradient(mode):
    z = features_with_dead_rows().requires_grad_()
    out = nonneg_normalize(z, mode)
    (grad,) = torch.autograd.grad(out, z, torch.ones_like(out))
    dead = [1, 3, 4]
    assert not out[dead].any() and not grad[dead].any()
    live = [0, 2, 5]
    torch.testing.assert_close(out[live].norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.isfinite(grad).all()


def test_nan_row_stays_nan():
    z = torch.ones(3, 4)
    z[1, 2] = float("nan")
    out = nonneg_normalize(z, "relu")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()


def test_dead_row_fraction_counts_rows_below_the_threshold():
    z = features_with_dead_rows()
    assert dead_row_fraction(z, mode="relu") == pytest.approx(3 / 6)
    assert dead_row_fraction(z) == pytest.approx(1 / 6)  # no map: only the 1e-9 row is short
    assert dead_row_fraction(z, mode="relu", eps=1e-12) == pytest.approx(2 / 6)  # the 1e-9 row now counts as live
    assert dead_row_fraction(F.relu(z).half(), eps=1e-3) == pytest.approx(3 / 6)
    assert dead_row_fraction(torch.zeros(4, 3)) == 1.0


def test_dead_row_fraction_needs_no_gradient():
    z = features_with_dead_rows().requires_grad_()
    assert dead_row_fraction(z, mode="rep_relu") == pytest.approx(0.5)
    assert z.grad is None


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"features": torch.ones(4)}, "features"),
        ({"features": torch.ones(4, 2, dtype=torch.long)}, "features"),
        ({"features": torch.ones(4, 2), "mode": "tanh"}, "nonneg"),
        ({"features": torch.ones(4, 2), "eps": 0.0}, "eps"),
        ({"features": torch.ones(4, 2), "eps": float("nan")}, "eps"),
    ],
)
def test_dead_row_fraction_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        dead_row_fraction(**kwargs)
