"""Row-wise log-sum-exp of a similarity matrix, the costly part of every softmax contrastive loss.

InfoNCE / NT-Xent and the CLIP loss are both ``mean_i(logsumexp_j(s_ij) - s_i,positive)``
with ``s = scale * queries @ keys.T``. The positive term is a row-wise dot product that
autograd handles cheaply; this module computes the ``logsumexp`` term with a custom
autograd Function that touches the big ``queries x keys`` matrix as few times as possible:

- forward: one matrix product that already subtracts each row's shift (the stabilising
  constant of the log-sum-exp), then ``exp`` in place and a row sum;
- backward: the softmax normaliser ``1 / Z_i``, the scale and the incoming gradient are
  per-row factors, so they are folded into the two backward matrix products instead of
  being applied to the big matrix: no elementwise pass over it at all;
- tiled mode (``chunk_size``) keeps only the ``(rows,)`` log-sum-exp between forward and
  backward and recomputes each ``chunk_size x keys`` strip in backward (one extra matrix
  product), so peak memory is ``O(chunk_size * keys)`` instead of ``O(queries * keys)``.

The shift of row ``i`` is the Cauchy-Schwarz bound ``scale * |q_i| * max_j |k_j|`` on its
logits when ``exp`` cannot underflow over the whole range that bound allows (e.g.
temperature 0.2 on unit vectors), and the exact row max otherwise (one more pass).
The saved matrix is never modified in backward, so ``backward(retain_graph=True)`` may be
called any number of times. Both passes compute in the dtype of their inputs, with autocast
disabled (backward too, since ``loss.backward()`` may be called inside an autocast region):
the losses hand this module float32 (or float64) tensors.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ncl_ext.losses._precision import autocast_disabled


def masked_logsumexp(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: float = 1.0,
    excluded_offset: int | None = None,
    chunk_size: int | None = None,
    unit_rows: bool = False,
) -> torch.Tensor:
    """Return ``lse[i] = log(sum_j exp(scale * queries[i] . keys[j]))`` for every query row.

    Args:
        queries: ``(rows, dim)``.
        keys: ``(columns, dim)``; may be ``queries`` itself.
        scale: a constant factor on every logit (the inverse temperature), applied inside the
            matrix product; a learnable scale should multiply ``queries`` instead.
        excluded_offset: if not ``None``, the pair ``(i, i + excluded_offset)`` is left out of
            row ``i`` (a sample's similarity with itself in NT-Xent).
        chunk_size: ``None`` computes the whole matrix at once and keeps it for backward;
            an int processes ``chunk_size`` query rows at a time and recomputes them in backward.
        unit_rows: every row of ``queries`` and ``keys`` has norm at most 1 (L2-normalised
            features), so ``scale`` bounds every logit: the shift is chosen without reading any
            value back from the device (no host synchronisation).

    Examples:
        >>> q, k = torch.randn(4, 3), torch.randn(6, 3)
        >>> torch.allclose(masked_logsumexp(q, k, 2.0, chunk_size=3), torch.logsumexp(2 * q @ k.T, dim=1))
        True
    """
    with autocast_disabled(queries.device.type):
        return _MaskedLogSumExp.apply(queries, keys, scale, excluded_offset, chunk_size, unit_rows)


class _MaskedLogSumExp(torch.autograd.Function):
    """See :func:`masked_logsumexp`; first-order gradients only."""

    @staticmethod
    def forward(ctx, queries, keys, scale, excluded_offset, chunk_size, unit_rows):
        rows = queries.shape[0]
        step = rows if chunk_size is None else min(chunk_size, rows)
        strip = queries.new_empty(step, keys.shape[0])
        lse = queries.new_empty(rows)
        bound = _logit_bound(queries, keys, scale, unit_rows)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            shift = None if bound is None else bound[start:stop]
            exp_logits = _logits(queries[start:stop], keys, scale, start, excluded_offset, strip, shift)
            if shift is None:
                shift = exp_logits.amax(dim=1)
                exp_logits.sub_(shift[:, None])
            exp_logits.exp_()
            torch.add(shift, exp_logits.sum(dim=1).log_(), out=lse[start:stop])
        if chunk_size is None:  # keep exp(logits - shift) of the whole matrix for backward
            ctx.save_for_backward(queries, keys, lse, strip, shift)
        else:
            ctx.save_for_backward(queries, keys, lse)
        ctx.scale = scale
        ctx.excluded_offset = excluded_offset
        ctx.chunk_size = chunk_size
        ctx.keys_are_queries = keys is queries
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse):
        with autocast_disabled(grad_lse.device.type):
            return _MaskedLogSumExp._backward(ctx, grad_lse)

    @staticmethod
    def _backward(ctx, grad_lse):
        queries, keys, lse, *saved = ctx.saved_tensors
        need_queries, need_keys = ctx.needs_input_grad[:2]
        grad_queries = torch.zeros_like(queries) if need_queries else None
        if ctx.keys_are_queries:  # one tensor in both roles: accumulate both gradients in one buffer
            grad_keys = grad_queries
        else:
            grad_keys = torch.zeros_like(keys) if need_keys else None
        # d lse_i / d logit_ij = softmax_ij and d logit_ij / d queries_i = scale * keys_j, so
        # the per-row factors grad_lse_i * scale (and 1 / Z_i) go on the small matrices.
        weights = grad_lse * ctx.scale
        if ctx.chunk_size is None:
            exp_logits, shift = saved
            # exp_logits holds exp(logits - shift_i), so softmax = exp_logits * exp(shift_i - lse_i).
            _accumulate(exp_logits, weights * torch.exp(shift - lse), queries, keys, grad_queries, grad_keys, 0)
        else:
            rows = queries.shape[0]
            step = min(ctx.chunk_size, rows)
            strip = queries.new_empty(step, keys.shape[0])
            for start in range(0, rows, step):
                stop = min(start + step, rows)
                probs = _logits(
                    queries[start:stop], keys, ctx.scale, start, ctx.excluded_offset, strip, lse[start:stop]
                ).exp_()  # the softmax strip, recomputed
                _accumulate(probs, weights[start:stop], queries, keys, grad_queries, grad_keys, start)
        return grad_queries, None if ctx.keys_are_queries else grad_keys, None, None, None, None


def _logit_bound(queries, keys, scale, unit_rows=False):
    """Per-row upper bounds on the logits, or ``None`` if shifting by them could underflow ``exp``.

    Logits lie in ``[-bound_i, bound_i]``, so ``exp(logit - bound_i) >= exp(-2 bound_i)``; the
    bound is used when that stays a normal number with the dtype's precision to spare. With
    ``unit_rows`` the bound is ``scale`` itself, known without reading the features.
    """
    info = torch.finfo(queries.dtype)
    limit = -math.log(info.tiny) + math.log(info.eps)
    if unit_rows:
        return None if 2 * scale > limit else queries.new_full((queries.shape[0],), float(scale))
    bound = scale * queries.detach().norm(dim=1) * keys.detach().norm(dim=1).max()
    if 2 * float(bound.max()) > limit:
        return None
    return bound


def _logits(queries, keys, scale, row_start, excluded_offset, out, shift=None):
    """``scale * queries @ keys.T - shift[:, None]`` written into ``out``, excluded pairs at -inf."""
    rows = queries.shape[0]
    logits = out[:rows]
    if shift is None:
        torch.addmm(logits, queries, keys.T, beta=0, alpha=scale, out=logits)  # beta=0: out is not read
    else:
        torch.addmm(-shift[:, None], queries, keys.T, alpha=scale, out=logits)
    if excluded_offset is not None:
        first = row_start + excluded_offset
        logits[:, first : first + rows].diagonal().fill_(-torch.inf)
    return logits


def _accumulate(probs, weights, queries, keys, grad_queries, grad_keys, start):
    """Add the gradients through the softmax strip ``probs`` of the query rows from ``start``,
    each row weighted by ``weights``."""
    stop = start + probs.shape[0]
    if grad_queries is not None:
        grad_queries[start:stop].addcmul_(probs @ keys, weights[:, None])
    if grad_keys is not None:
        grad_keys.addmm_(probs.T, queries[start:stop] * weights[:, None])
