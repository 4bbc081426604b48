"""The losses compute in float32 (at least), whatever the input dtype or autocast say.

Mixed-precision training hands the loss float16 / bfloat16 features (a model run under
``torch.autocast``, or a model cast with ``.half()``). Contrastive losses do not survive
that precision: the spectral loss sums squared dot products that overflow float16
(65504), and NT-Xent at temperature 0.2 computed in bfloat16 (an 8-bit mantissa) is off
in its third digit (``benchmarks/losses.py``). So every loss of :mod:`ncl_ext.losses`:

- upcasts 16-bit floating inputs to float32 with a differentiable cast, so the gradient
  with respect to an input arrives in that input's dtype (autograd casts it back);
- runs its body with autocast disabled on the input's device, so its matrix products
  stay in float32 even inside an autocast region;
- returns the loss in float32 (float64 inputs keep float64 throughout).

Examples:
    >>> import torch
    >>> z = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16), autocast_disabled(z.device.type):
    ...     gram = to_compute_dtype(z) @ to_compute_dtype(z).T
    >>> gram.dtype
    torch.float32
    >>> gram.sum().backward()
    >>> z.grad.dtype
    torch.bfloat16
"""

from __future__ import annotations

import contextlib

import torch


def to_compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is a floating-point tensor of fewer than 32 bits, else unchanged."""
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` leaves ops on ``device_type`` in their own dtype."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta"): it cannot be on
        enabled = False
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()
