"""Non-negative sentence embeddings for sentence-transformers: the NCL head and ranking losses.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024, arXiv:2403.12459) puts a non-negative map on a contrastive model's
output. For a :class:`~sentence_transformers.SentenceTransformer` this module offers two
equivalent ways to do it, both native to the library:

- :func:`add_nonneg_head` makes the map part of the model: a built-in ``Dense`` layer with
  a ``torch.nn`` activation, inserted before ``Normalize``. ``encode`` then returns
  non-negative (and, after training, sparse) embeddings, and ``model.save(path)`` reloads
  with a plain ``SentenceTransformer(path)`` - no ``trust_remote_code`` needed, because
  sentence-transformers 6 imports module types from ``sentence_transformers.*`` and ``Dense``
  activations from ``torch.*`` only.
- :class:`NCLRankingLoss` (and its gradient-caching twin :class:`CachedNCLRankingLoss`) applies
  the map inside the loss: ``MultipleNegativesRankingLoss`` (in-batch InfoNCE, ``scale = 1 /
  temperature = 20``) on ``nonneg(embeddings)``. ``nonneg=None`` is exactly
  ``MultipleNegativesRankingLoss``; both compose with ``MatryoshkaLoss`` and with
  ``gather_across_devices`` for multi-GPU training. :class:`NCLSpectralLoss` is the spectral
  contrastive loss, whose non-negative form is exactly the NMF objective of the paper.

All losses plug into ``SentenceTransformerTrainer`` like the library's own.

Examples:
    >>> from sentence_transformers import SentenceTransformer               # doctest: +SKIP
    >>> from ncl_ext.adapters.text import add_nonneg_head, NCLRankingLoss   # doctest: +SKIP
    >>> model = add_nonneg_head(SentenceTransformer(path), "relu", dim=1536)  # doctest: +SKIP
    >>> bool((model.encode(["a sentence"]) >= 0).all())                      # doctest: +SKIP
    True
    >>> loss = NCLRankingLoss(model, nonneg=None)  # the head already makes it NCL  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Dense, Normalize
from torch import Tensor, nn

from ncl_ext.losses import SpectralContrastiveLoss
from ncl_ext.nonneg import check_mode, nonneg, rep_relu

__all__ = [
    "HEAD_MODES",
    "CachedNCLRankingLoss",
    "NCLRankingLoss",
    "NCLSpectralLoss",
    "add_nonneg_head",
]

#: Head modes and the built-in ``torch.nn`` activation a saved model reloads with.
#: ``rep_relu`` is ReLU in the forward pass, so it is saved (and reloads) as ``nn.ReLU``.
HEAD_MODES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "rep_relu": nn.ReLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def add_nonneg_head(model: SentenceTransformer, mode: str | None = "relu", dim: int | None = None) -> SentenceTransformer:
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
    check_mode(mode, "mode", allow_none=True)
    if mode is not None and mode != "identity" and mode not in HEAD_MODES:
        raise ValueError(
            f"mode={mode!r} has no built-in torch.nn activation, so a saved model could not reload without "
            f"trust_remote_code; expected one of {', '.join(repr(m) for m in HEAD_MODES)} or None (a linear head)"
        )
    in_features = model.get_embedding_dimension()
    if in_features is None:
        raise ValueError("model has no known embedding dimension (get_embedding_dimension() returned None)")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"dim must be None or an int >= 1, got {dim!r}")
    out_features = dim or in_features

    activation = HEAD_MODES[mode]() if mode in HEAD_MODES else nn.Identity()
    if mode == "rep_relu":
        # Hooks are not saved: the reloaded head is a plain ReLU, identical in the forward pass.
        activation.register_forward_hook(_rep_relu_gradient)
    weight = nn.init.orthogonal_(torch.empty(out_features, in_features))
    head = Dense(
        in_features,
        out_features,
        activation_function=activation,
        init_weight=weight,
        init_bias=torch.zeros(out_features),
    )
    reference = next(model.parameters(), None)
    if reference is not None:
        head = head.to(device=reference.device, dtype=reference.dtype)
    _insert_before_normalize(model, head)
    return model


def _rep_relu_gradient(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: keep ReLU's output but give it rep_relu's (GELU-derivative) gradient."""
    return rep_relu(inputs[0])


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
