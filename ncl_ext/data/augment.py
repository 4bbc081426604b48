"""Image augmentations for contrastive learning: per-image (torchvision v2) and batched on-device.

SimCLR's augmentations (Chen et al., 2020), as used by Wang, Zhang, Guo, Wang,
"Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459): random resized
crop, horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with
p=0.2, and Gaussian blur for images of 96 px and more.

Two implementations:

- :func:`simclr_transform` / :func:`eval_transform` / :class:`TwoViews`: per-image
  ``torchvision.transforms.v2`` pipelines, for ``ImageFolder`` data read by a DataLoader.
- :class:`BatchAugmentation`: the same operations on a whole batch of ``uint8`` images
  already on the device, each image with its own random parameters, all drawn from an
  explicit ``torch.Generator``. With the dataset resident on the GPU (the airbench
  idea) no loader worker can starve it, and a run is exactly reproducible and resumable.
  Presets: :func:`simclr_batch_augmentation`, :func:`supervised_batch_augmentation`,
  :func:`digits_batch_augmentation`. A batch makes no host-device synchronisation: its
  random parameters travel to the GPU in one non-blocking copy from pinned memory, so the
  host can queue the next steps while the GPU works.

Examples:
    >>> import torch
    >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> augment = simclr_batch_augmentation(32, CIFAR10_MEAN, CIFAR10_STD)
    >>> view = augment(images, torch.Generator().manual_seed(0))
    >>> view.shape, view.dtype
    (torch.Size([4, 3, 32, 32]), torch.float32)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentationParams",
    "BatchAugmentation",
    "TwoViews",
    "blur_kernel_size",
    "decode_transform",
    "digits_batch_augmentation",
    "eval_transform",
    "normalize_images",
    "simclr_batch_augmentation",
    "simclr_transform",
    "supervised_batch_augmentation",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

#: ITU-R 601-2 luma weights, the ones torchvision's grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


# ------------------------------------------------------------------ per-image (v2)


def simclr_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.08, 1.0),
    blur: bool | None = None,
) -> Callable[[Any], torch.Tensor]:
    """SimCLR's augmentation of one image (PIL image or tensor) as a torchvision v2 pipeline.

    RandomResizedCrop(size, scale) -> horizontal flip -> ColorJitter(0.4, 0.4, 0.4, 0.1)
    with p=0.8 -> grayscale with p=0.2 -> Gaussian blur (kernel ~10% of ``size``,
    sigma in [0.1, 2], p=0.5; by default only when ``size >= 96``) -> float -> Normalize.

    Examples:
        >>> from PIL import Image
        >>> simclr_transform(96)(Image.new("RGB", (120, 100))).shape
        torch.Size([3, 96, 96])
    """
    from torchvision.transforms import v2

    size = _check_size(size)
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if size >= 96 if blur is None else blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable[[Any], torch.Tensor]:
    """The deterministic evaluation transform: :func:`decode_transform` (resize, centre crop), float, normalise.

    Examples:
        >>> from PIL import Image
        >>> eval_transform(32)(Image.new("RGB", (40, 50))).shape
        torch.Size([3, 32, 32])
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [decode_transform(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )


def decode_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """An image (PIL or tensor) as a ``uint8`` tensor ``(C, size, size)``: resize, then centre crop.

    For ``size >= 96`` the shorter side is resized to ``size * 256 / 224`` (224 -> 256)
    before the centre crop, as in ImageNet evaluation; smaller sizes resize to ``size``.
    This is how :func:`eval_transform` sees an image, and how an image folder is stored
    when it is kept in memory (:func:`ncl_ext.data.images.decode_image_folder`).

    Examples:
        >>> from PIL import Image
        >>> image = decode_transform(224)(Image.new("RGB", (300, 400)))
        >>> image.shape, image.dtype
        (torch.Size([3, 224, 224]), torch.uint8)
    """
    from torchvision.transforms import v2

    size = _check_size(size)
    resize = round(size * 256 / 224) if size >= 96 else size
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


class TwoViews:
    """Apply ``transform`` twice to one image: the two views of a contrastive pair.

    Examples:
        >>> from PIL import Image
        >>> first, second = TwoViews(simclr_transform(32))(Image.new("RGB", (40, 40)))
        >>> first.shape == second.shape
        True
    """

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        if not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def blur_kernel_size(size: int) -> int:
    """SimCLR's Gaussian-blur kernel for ``size``-pixel images: the odd size nearest below 10% of the side (at least 3).

    Examples:
        >>> blur_kernel_size(224), blur_kernel_size(96), blur_kernel_size(32)
        (23, 9, 3)
    """
    return max(3, int(0.1 * _check_size(size)) // 2 * 2 + 1)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}; expected a positive int (output side in pixels)")
    return size


# ------------------------------------------------------------------ batched (device)


class AugmentationParams(NamedTuple):
    """The random parameters of one augmented batch (one row per image)."""

    theta: torch.Tensor  #: ``(N, 2, 3)`` affine maps from output to input coordinates (crop, flip, rotation)
    jitter: torch.Tensor  #: ``(N, 4)`` brightness, contrast, saturation factors and hue shift
    jitter_mask: torch.Tensor  #: ``(N,)`` bool: colour jitter applied
    grayscale_mask: torch.Tensor  #: ``(N,)`` bool: converted to grayscale
    blur_sigma: torch.Tensor | None = None  #: ``(N,)`` Gaussian-blur sigmas (``None``: no blur)
    blur_mask: torch.Tensor | None = None  #: ``(N,)`` bool: blurred


def normalize_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """``uint8`` images ``(N, C, H, W)`` -> float32 ``(x / 255 - mean) / std``, optionally resized to ``size``.

    The evaluation counterpart of :class:`BatchAugmentation` (no randomness).

    Examples:
        >>> normalize_images(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), (0.5,), (0.5,))[0, 0, 0, 0].item()
        1.0
    """
    _check_uint8_images(images, len(mean))
    pixels = images.float().div_(255)
    if size is not None and tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _normalize(pixels, mean, std)


def _normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = _constant(tuple(mean), pixels.device, pixels.dtype).view(1, -1, 1, 1)
    std_t = _constant(tuple(std), pixels.device, pixels.dtype).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a tensor on ``device``, made once: a new one per batch would be a blocking host-to-device copy."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype).to(device)


def _host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without making the host wait for the GPU (pinned, non-blocking)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _check_uint8_images(images: Any, channels: int) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got a {got}")
    if images.shape[1] != channels:
        raise ValueError(f"images have {images.shape[1]} channels but mean/std have {channels} values")


@dataclass(frozen=True)
class BatchAugmentation:
    """Per-image random augmentation of a whole ``uint8`` batch on its device.

    Every image gets its own random resized crop (area fraction in ``scale``, aspect
    ratio in ``ratio``), extra translation, rotation and horizontal flip -- all one
    affine map, applied with a single ``grid_sample`` (bilinear, zero padding) -- then,
    with probability ``jitter_p``, brightness, contrast, saturation and hue jitter (in
    that fixed order, each matching ``torchvision.transforms.v2.functional.adjust_*``),
    then grayscale with probability ``grayscale_p``, then, with probability ``blur_p``, a
    Gaussian blur (``v2.functional.gaussian_blur``: reflect padding, sigma uniform in
    ``blur_sigma``), then normalisation.

    Differences from the per-image pipeline (:func:`simclr_transform`): the jitter order
    is fixed rather than shuffled per image, the crop is sampled once (an out-of-range
    side is clipped to the image instead of re-drawn), pixels stay float between the
    steps (no rounding to uint8), and rotation assumes square images. Colour operations
    other than brightness and contrast need 3 channels and are skipped on 1-channel images.

    Args:
        size: output side in pixels; ``None`` keeps the input size.
        scale, ratio: the crop's area fraction and aspect-ratio ranges.
        translate: extra random shift of the crop centre, as a fraction of the side.
        rotation: maximal rotation in degrees (uniform in ``[-rotation, rotation]``).
        flip_p: probability of a horizontal flip.
        jitter: maximal brightness, contrast, saturation (factors in ``[1-j, 1+j]``) and
            hue shift (in ``[-j, j]``, at most 0.5).
        jitter_p, grayscale_p: probabilities of colour jitter and of grayscale.
        blur_p: probability of a Gaussian blur (0: never, and no random numbers are drawn for it).
        blur_sigma: the range of the blur's standard deviation, in pixels.
        blur_kernel: the blur's (odd) kernel size; ``None``: :func:`blur_kernel_size` of the output side.
        mean, std: normalisation, one value per channel.

    Examples:
        >>> augment = BatchAugmentation(size=8, mean=(0.5,), std=(0.5,), jitter_p=0.0, grayscale_p=0.0)
        >>> images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
        >>> first = augment(images, torch.Generator().manual_seed(1))
        >>> torch.equal(first, augment(images, torch.Generator().manual_seed(1)))
        True
    """

    size: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.0
    rotation: float = 0.0
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.size is not None:
            _check_size(self.size)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale={self.scale!r}; expected 0 < low <= high <= 1 (area fractions)")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio!r}; expected 0 < low <= high (aspect ratios)")
        if not 0 <= self.translate <= 1 or not 0 <= self.rotation <= 180:
            raise ValueError(
                f"translate={self.translate!r}, rotation={self.rotation!r}; "
                "expected 0 <= translate <= 1 and 0 <= rotation <= 180"
            )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a probability in [0, 1]")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or max(self.jitter[:3]) > 1 or self.jitter[3] > 0.5:
            raise ValueError(
                f"jitter={self.jitter!r}; expected (brightness, contrast, saturation, hue) with the first three "
                "in [0, 1] and hue in [0, 0.5]"
            )
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma={self.blur_sigma!r}; expected 0 < low <= high (pixels)")
        if self.blur_kernel is not None and (
            isinstance(self.blur_kernel, bool) or not isinstance(self.blur_kernel, int)
            or self.blur_kernel < 3 or self.blur_kernel % 2 == 0
        ):
            raise ValueError(f"blur_kernel={self.blur_kernel!r}; expected an odd int >= 3, or None")
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(f"mean={self.mean!r}, std={self.std!r}; expected one value per channel and std > 0")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` (``uint8``, ``(N, C, H, W)``) with randomness from ``generator``."""
        return self.apply(images, self.sample(len(images), generator))

    def sample(self, batch_size: int, generator: torch.Generator) -> AugmentationParams:
        """Draw the parameters of ``batch_size`` images from ``generator`` (on the CPU, in a fixed order).

        The same generator state gives the same parameters whatever device the images are on.
        """
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        u = torch.rand(batch_size, 14, generator=generator, device=generator.device).cpu()
        signed = 2 * u - 1  # uniform in [-1, 1]

        area = self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0])
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_low + u[:, 1] * (log_high - log_low))
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # crop side / image side, in [0, 1]
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        # Normalised coordinates span [-1, 1], so a crop of relative width w has its centre
        # in [-(1 - w), 1 - w]; `translate` (a fraction of the side) shifts it by up to 2 * translate.
        centre_x = signed[:, 2] * (1 - width) + signed[:, 4] * 2 * self.translate
        centre_y = signed[:, 3] * (1 - height) + signed[:, 5] * 2 * self.translate
        angle = signed[:, 6] * math.radians(self.rotation)
        flip = torch.where(u[:, 7] < self.flip_p, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input map: rotation @ diag(width, height) @ diag(flip, 1), then the centre shift
        theta = torch.stack(
            [
                torch.stack([cos * width * flip, -sin * height, centre_x], dim=1),
                torch.stack([sin * width * flip, cos * height, centre_y], dim=1),
            ],
            dim=1,
        )
        brightness, contrast, saturation, hue = self.jitter
        jitter = torch.stack(
            [
                1 + signed[:, 10] * brightness,
                1 + signed[:, 11] * contrast,
                1 + signed[:, 12] * saturation,
                signed[:, 13] * hue,
            ],
            dim=1,
        )
        params = AugmentationParams(theta, jitter, u[:, 8] < self.jitter_p, u[:, 9] < self.grayscale_p)
        if self.blur_p > 0:  # drawn after the others, so that blur_p=0 leaves their stream unchanged
            blur = torch.rand(batch_size, 2, generator=generator, device=generator.device).cpu()
            low, high = self.blur_sigma
            params = params._replace(blur_sigma=low + blur[:, 1] * (high - low), blur_mask=blur[:, 0] < self.blur_p)
        return params

    def apply(self, images: torch.Tensor, params: AugmentationParams) -> torch.Tensor:
        """Apply ``params`` to ``images`` (``uint8``, ``(N, C, H, W)``); returns normalised float32."""
        _check_uint8_images(images, len(self.mean))
        if len(params.theta) != len(images):
            raise ValueError(f"params are for {len(params.theta)} images but {len(images)} images were given")
        batch, channels, height, width = images.shape
        out_height, out_width = (self.size, self.size) if self.size is not None else (height, width)
        params = _params_to(params, images.device)
        pixels = images.float().div_(255)
        grid = F.affine_grid(params.theta, [batch, channels, out_height, out_width], align_corners=False)
        pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        if self.jitter_p > 0 and any(self.jitter):
            jittered = _color_jitter(pixels, params.jitter, shift_hue=self.jitter[3] > 0)
            pixels = torch.where(params.jitter_mask.view(-1, 1, 1, 1), jittered, pixels)
        if self.grayscale_p > 0 and channels == 3:
            gray = _grayscale(pixels).expand_as(pixels)
            pixels = torch.where(params.grayscale_mask.view(-1, 1, 1, 1), gray, pixels)
        if params.blur_sigma is not None:
            kernel = self.blur_kernel or blur_kernel_size(min(out_height, out_width))
            blurred = _gaussian_blur(pixels, params.blur_sigma, kernel)
            pixels = torch.where(params.blur_mask.view(-1, 1, 1, 1), blurred, pixels)
        return _normalize(pixels, self.mean, self.std)


def _params_to(params: AugmentationParams, device: torch.device) -> AugmentationParams:
    """``params`` on ``device``, packed into one float tensor so that they cross to a GPU in a single copy."""
    if params.theta.device == device:
        return params
    batch = len(params.theta)
    blur = params.blur_sigma is not None
    columns = [
        params.theta.reshape(batch, 6), params.jitter, params.jitter_mask[:, None], params.grayscale_mask[:, None]
    ]
    if blur:
        columns += [params.blur_sigma[:, None], params.blur_mask[:, None]]
    packed = _host_to_device(torch.cat([column.float() for column in columns], dim=1), device)
    theta, jitter, jitter_mask, grayscale_mask, *rest = packed.split([6, 4, 1, 1] + [1, 1] * blur, dim=1)
    return AugmentationParams(
        theta.reshape(batch, 2, 3), jitter, jitter_mask[:, 0] > 0.5, grayscale_mask[:, 0] > 0.5,
        rest[0][:, 0] if blur else None, rest[1][:, 0] > 0.5 if blur else None,
    )


def _gaussian_blur(pixels: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image ``(N, C, H, W)`` with its own ``sigma`` ``(N,)``, as ``v2.functional.gaussian_blur`` does.

    The kernel is the normalised ``exp(-x^2 / (2 sigma^2))`` at ``x = -(k-1)/2 .. (k-1)/2``, applied
    separably (rows, then columns) on reflect-padded images.
    """
    batch, channels, height, width = pixels.shape
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=pixels.device, dtype=pixels.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.to(pixels.dtype)[:, None]) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (N * C, k)
    pad = kernel_size // 2
    planes = F.pad(pixels, (pad, pad, pad, pad), mode="reflect").reshape(1, batch * channels, height + 2 * pad, -1)
    planes = F.conv2d(planes, weights.view(-1, 1, 1, kernel_size), groups=batch * channels)
    planes = F.conv2d(planes, weights.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return planes.view(batch, channels, height, width)


def _grayscale(pixels: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, 1, H, W)`` luma."""
    weights = _constant(_LUMA, pixels.device, pixels.dtype).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def _color_jitter(pixels: torch.Tensor, factors: torch.Tensor, shift_hue: bool = True) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-image ``factors`` ``(N, 4)``, clamped to [0, 1]."""
    per_image = factors.view(-1, 4, 1, 1, 1).unbind(dim=1)
    brightness, contrast, saturation, hue = per_image
    pixels = (pixels * brightness).clamp(0, 1)
    luma = _grayscale(pixels) if pixels.shape[1] == 3 else pixels
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)
    pixels = (contrast * pixels + (1 - contrast) * mean).clamp(0, 1)
    if pixels.shape[1] != 3:
        return pixels
    pixels = (saturation * pixels + (1 - saturation) * _grayscale(pixels)).clamp(0, 1)
    return _shift_hue(pixels, hue.view(-1, 1, 1)) if shift_hue else pixels


def _shift_hue(pixels: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB ``pixels`` ``(N, 3, H, W)`` by ``shift`` ``(N, 1, 1)`` turns (via HSV)."""
    red, green, blue = pixels.unbind(dim=1)
    value, _ = pixels.max(dim=1)
    chroma = value - pixels.min(dim=1).values
    grey = chroma == 0
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    # hue in sextants: which channel is the maximum decides the formula
    hue = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma),
    )
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6 + shift, 1.0)

    sextant = hue * 6
    index = torch.floor(sextant)
    fraction = sextant - index
    index = index.long() % 6
    low = value * (1 - saturation)
    falling = value * (1 - saturation * fraction)
    rising = value * (1 - saturation * (1 - fraction))
    # (r, g, b) for sextants 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack([value, rising, low, falling], dim=1)  # t = rising, q = falling, p = low
    order = _constant(((0, 1, 2), (3, 0, 2), (2, 0, 1), (2, 3, 0), (1, 2, 0), (0, 2, 3)), pixels.device, torch.int64)
    picks = order[index].permute(0, 3, 1, 2)  # (N, 3, H, W) indices into table
    return torch.gather(table, 1, picks)


# ------------------------------------------------------------------ presets


def simclr_batch_augmentation(
    size: int, mean: Sequence[float], std: Sequence[float], blur: bool | None = None
) -> BatchAugmentation:
    """SimCLR's augmentation of :func:`simclr_transform`, batched: crop scale (0.08, 1), flip, jitter p=0.8,
    grayscale p=0.2, and Gaussian blur p=0.5 (sigma 0.1..2, kernel :func:`blur_kernel_size`) by default only
    when ``size >= 96``."""
    with_blur = size >= 96 if blur is None else blur
    return BatchAugmentation(size=size, mean=tuple(mean), std=tuple(std), blur_p=0.5 if with_blur else 0.0)


def supervised_batch_augmentation(
    size: int, mean: Sequence[float], std: Sequence[float], flip: bool = True
) -> BatchAugmentation:
    """The standard supervised small-image augmentation: shift up to 1/8 of the side (CIFAR's
    pad-4 random crop, zero padding) and horizontal flip; no colour changes."""
    return BatchAugmentation(
        size=size,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        translate=0.125,
        flip_p=0.5 if flip else 0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        mean=tuple(mean),
        std=tuple(std),
    )


def digits_batch_augmentation(
    mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> BatchAugmentation:
    """Contrastive augmentation for 8x8 handwritten digits (scikit-learn's ``load_digits``).

    Digit identity survives crops of at least half the area, a shift of up to one pixel
    and rotations up to 15 degrees, so those make the views. There is no horizontal flip
    (a mirrored 2, 3, 4, 5, 7 or 9 is not that digit) and no colour jitter or grayscale
    (the images are single-channel intensities). ``size`` can upscale the views, e.g. to
    32 px for a CIFAR-stem ResNet.
    """
    return BatchAugmentation(
        size=size,
        scale=(0.5, 1.0),
        ratio=(3 / 4, 4 / 3),
        translate=0.125,
        rotation=15.0,
        flip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        mean=tuple(mean),
        std=tuple(std),
    )
