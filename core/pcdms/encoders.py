"""Image encoders and the VAE as PCDMs uses them (``../shared/reference/pcdms/README.md``, "Encoders, VAE and
input preparation").

* :func:`clip_preprocess` -- ``CLIPImageProcessor()`` with its defaults, re-implemented without transformers:
  quantise to 8 bits, shortest edge to 224 with PIL bicubic, centre crop 224, ``x / 255`` (float64 then float32,
  as transformers does), OpenAI CLIP mean / std. The official code applies it to the 512 x 512 frame, for CLIP
  *and* for DINOv2 (so DINOv2 sees CLIP statistics, not ImageNet's). ``exact=False`` gives a torch-only version
  (bicubic with antialiasing on floats, on the tensor's device) that differs at 8-bit rounding level.
* :class:`ImageEncoder` -- the interface the pipelines use: ``encode(images)`` with images ``(B, H, W, 3)``
  float 0..1 channels last (ComfyUI's IMAGE layout) -> a tensor; ``encode_pixels(pixel_values)`` on already
  preprocessed pixels (training's condition dropout zeroes those). Implementations:
  :class:`CLIPImageEmbedder` (``CLIPVisionModelWithProjection.image_embeds``, (B, 1024) for ViT-H/14),
  :class:`DINOv2TokenEncoder` (``Dinov2Model.last_hidden_state`` after the final LayerNorm, (B, 257, 1536) for
  dinov2-giant; position embeddings resized as transformers 4.32 did), both loaded with transformers from a
  local folder; and :class:`CallableImageEncoder`, which
  adapts any function (e.g. a ComfyUI CLIP_VISION model) to the interface.
* :class:`LatentCodec` / :class:`DiffusersVAE` -- the SD-2.1 ``AutoencoderKL`` with the 0.18215 latent scale:
  ``encode`` takes pixels in [-1, 1] (B, 3, H, W) and returns ``posterior.sample(generator) * 0.18215`` (the
  official code samples, never takes the mean; the draw is ``randn(mean.shape)`` from the generator, in the
  posterior's dtype and device, then ``mean + std * noise``); ``decode`` returns ``(vae.decode(z / 0.18215) / 2
  + 0.5).clamp(0, 1)`` (B, 3, H, W). A ComfyUI VAE (BHWC 0..1 pixels, unscaled latents) fits through
  :class:`CallableLatentCodec` (scales by :data:`VAE_SCALING_FACTOR` and converts the layout).

transformers is imported only when an encoder is loaded from a folder.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_CROP_SIZE",
    "null_pixels",
    "VAE_SCALING_FACTOR",
    "clip_preprocess",
    "ImageEncoder",
    "TransformersImageEncoder",
    "CLIPImageEmbedder",
    "DINOv2TokenEncoder",
    "interpolate_dinov2_position_embeddings",
    "MomentsLatentCodec",
    "CallableImageEncoder",
    "LatentCodec",
    "DiffusersVAE",
    "CallableLatentCodec",
    "images_to_pixels",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, CLIPImageProcessor's defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_CROP_SIZE = 224  # CLIPImageProcessor's crop_size: the pixels CLIP and DINOv2 get in the official code
VAE_SCALING_FACTOR = 0.18215  # SD-2.1-base: its config has no scaling_factor key, so diffusers' default applies


def _bhwc(images, what: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise TypeError(f"{what}: expected a (B, H, W, 3) tensor in 0..1, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected (B, H, W, C) channels last, got {tuple(images.shape)}")
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    return images[..., :3]


def _resize_hw(h: int, w: int, shortest_edge: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size(default_to_square=False): short side -> shortest_edge, long
    side int(shortest_edge * long / short)."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def clip_preprocess(images, *, shortest_edge: int = CLIP_CROP_SIZE, crop_size: int = CLIP_CROP_SIZE, mean=CLIP_MEAN, std=CLIP_STD,
                    exact: bool = True) -> torch.Tensor:
    """``CLIPImageProcessor()`` defaults: images (B, H, W, 3) 0..1 -> pixel_values (B, 3, crop, crop) float32.

    ``exact=True`` follows transformers' PIL path bit for bit for 8-bit images (runs on the CPU);
    ``exact=False`` stays in torch on the images' device (float bicubic with antialiasing, no quantisation).
    """
    images = _bhwc(images, "clip_preprocess")
    b, h, w, _ = images.shape
    rh, rw = _resize_hw(h, w, shortest_edge)
    top, left = (rh - crop_size) // 2, (rw - crop_size) // 2
    if top < 0 or left < 0:
        raise ValueError(f"clip_preprocess: crop {crop_size} larger than the resized image {rh} x {rw}")
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    if exact:
        u8 = (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        out = []
        for i in range(b):
            im = u8[i]
            if (rh, rw) != (h, w):
                im = np.asarray(Image.fromarray(im).resize((rw, rh), Image.BICUBIC))
            out.append(im[top:top + crop_size, left:left + crop_size])
        x = torch.from_numpy(np.stack(out)).double().mul(1 / 255).float()  # rescale in float64, then float32
        x = (x - mean_t) / std_t  # normalise in float32, channels last, as transformers does
        return x.permute(0, 3, 1, 2).contiguous().to(images.device)
    x = images.float().permute(0, 3, 1, 2)
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = x[:, :, top:top + crop_size, left:left + crop_size]
    return ((x - mean_t.to(x.device)[:, None, None]) / std_t.to(x.device)[:, None, None]).contiguous()


def null_pixels(encoder, batch: int = 1) -> torch.Tensor:
    """All-zero preprocessed pixels (B, 3, S, S): the training's dropped image condition, at the encoder's input
    size (its ``input_size``, else the CLIPImageProcessor crop the official code uses)."""
    size = int(getattr(encoder, "input_size", None) or CLIP_CROP_SIZE)
    return torch.zeros(batch, 3, size, size)


@runtime_checkable
class ImageEncoder(Protocol):
    """What the pipelines need from an image encoder.

    ``encode(images)``: images (B, H, W, 3) float 0..1 channels last (the laid-out 512 x 512 frame) -> a float
    tensor: (B, D) for a global embedding (CLIP image_embeds), (B, N, C) for tokens (DINOv2). The pipelines
    call it once per call, on the device and dtype the encoder chooses, and cast the result themselves.
    ``encode_pixels(pixel_values)``: the same on already preprocessed pixels (B, 3, 224, 224); all-zero
    pixels are the training's dropped condition.
    """

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


class TransformersImageEncoder:
    """A transformers vision model + :func:`clip_preprocess`. Subclasses pick the output."""

    model_class_name = ""
    input_size = CLIP_CROP_SIZE  # what preprocess makes (the official CLIPImageProcessor crop)

    def __init__(self, model, *, exact_preprocess: bool = True, preprocess: Callable | None = None):
        self.model = model.eval()
        self.exact_preprocess = exact_preprocess
        self._preprocess = preprocess

    @classmethod
    def from_pretrained(cls, folder, *, device=None, dtype=torch.float32, **kwargs):
        """Load the transformers model from a local folder (never the hub). The official runs use float32."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{cls.__name__}: {folder!r} is not a folder with a transformers model")
        try:
            import transformers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"{cls.__name__} needs the 'transformers' package (pip install transformers)") from exc
        model_cls = getattr(transformers, cls.model_class_name)
        model = model_cls.from_pretrained(folder, local_files_only=True)  # float32 as stored, then cast
        model = model.to(device=device, dtype=dtype)
        return cls(model, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images) -> torch.Tensor:
        if self._preprocess is not None:
            return self._preprocess(images)
        return clip_preprocess(images, exact=self.exact_preprocess)

    def _output(self, out) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values.to(device=self.device, dtype=self.dtype))
        return self._output(out)

    def encode(self, images) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))


class CLIPImageEmbedder(TransformersImageEncoder):
    """``CLIPVisionModelWithProjection`` (OpenCLIP ViT-H/14 in HF format): ``image_embeds`` (B, 1024), as is."""

    model_class_name = "CLIPVisionModelWithProjection"

    def _output(self, out) -> torch.Tensor:
        return out.image_embeds


class DINOv2TokenEncoder(TransformersImageEncoder):
    """``Dinov2Model`` (facebook/dinov2-giant): ``last_hidden_state`` (B, 257, 1536), CLS + 16 x 16 patches.

    The 224 x 224 input needs the 37 x 37 position embeddings resized to 16 x 16. transformers 4.32 (the
    official environment) resized with ``scale_factor = (16 + 0.1) / 37`` (the DINO repository's trick), newer
    releases with ``size=(16, 16)``; bicubic sampling positions differ, so the tokens differ by more than
    rounding. ``official_interpolation=True`` (default) puts the 4.32 resize back on this model instance.
    """

    model_class_name = "Dinov2Model"

    def __init__(self, model, *, official_interpolation: bool = True, **kwargs):
        super().__init__(model, **kwargs)
        if official_interpolation:
            embeddings = model.embeddings
            embeddings.interpolate_pos_encoding = _official_dinov2_interpolation(embeddings, model.config.patch_size)

    def _output(self, out) -> torch.Tensor:
        return out.last_hidden_state


def interpolate_dinov2_position_embeddings(position_embeddings: torch.Tensor, grid_h: int, grid_w: int
                                           ) -> torch.Tensor:
    """DINOv2's position embeddings ``(1, 1 + side^2, D)`` for a ``grid_h x grid_w`` patch grid, resized as
    transformers 4.32 (the official PCDMs environment) did: bicubic with ``scale_factor = (grid + 0.1) / side``
    in float32 (the DINO repository's trick against floating-point error). Unchanged when the grid is ``side^2``."""
    num_positions = position_embeddings.shape[1] - 1
    side = int(math.sqrt(num_positions))
    if side * side != num_positions:
        raise ValueError(f"DINOv2: expected position embeddings for a square grid, got {num_positions} positions")
    if grid_h == side and grid_w == side:
        return position_embeddings
    class_pos_embed = position_embeddings[:, :1]
    dim = position_embeddings.shape[-1]
    patch_pos_embed = position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    height, width = grid_h + 0.1, grid_w + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.to(dtype=torch.float32),
        scale_factor=(float(height / math.sqrt(num_positions)), float(width / math.sqrt(num_positions))),
        mode="bicubic",
        align_corners=False,
    ).to(dtype=position_embeddings.dtype)
    if (grid_h, grid_w) != tuple(patch_pos_embed.shape[-2:]):
        raise ValueError("DINOv2: the interpolated position embeddings do not match the patch grid")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed, patch_pos_embed), dim=1)


def _official_dinov2_interpolation(embeddings_module, patch_size: int):
    """``Dinov2Embeddings.interpolate_pos_encoding`` as in transformers 4.32 (:func:`interpolate_dinov2_position_
    embeddings`)."""

    def interpolate_pos_encoding(embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return interpolate_dinov2_position_embeddings(embeddings_module.position_embeddings,
                                                      height // patch_size, width // patch_size)

    return interpolate_pos_encoding


class CallableImageEncoder:
    """Adapts a function to :class:`ImageEncoder` (e.g. a ComfyUI CLIP_VISION model in a node).

    ``fn`` receives preprocessed pixel_values (B, 3, 224, 224) when ``preprocess`` is given (default:
    :func:`clip_preprocess`, the official preprocessing), or the raw (B, H, W, 3) 0..1 images when
    ``preprocess=None`` (for models that preprocess themselves, like ComfyUI's ``encode_image``; their
    preprocessing is torch bicubic, so results differ from the official ones at 8-bit rounding level).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], preprocess: Callable | None = clip_preprocess):
        self.fn = fn
        self._preprocess = preprocess

    def preprocess(self, images) -> torch.Tensor:
        return self._preprocess(images) if self._preprocess is not None else _bhwc(images, "encode")

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._preprocess is None:
            raise TypeError("CallableImageEncoder: encode_pixels needs an encoder built with a preprocess")
        return self.fn(pixel_values)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        return self.fn(self.preprocess(images))


# --------------------------------------------------------------------------------------------------- VAE
def images_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) 0..1 -> (B, 3, H, W) in [-1, 1] as ToTensor + Normalize(0.5, 0.5): ``(x - 0.5) / 0.5``."""
    images = _bhwc(images, "images_to_pixels")
    return ((images.float() - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


@runtime_checkable
class LatentCodec(Protocol):
    """What the pipelines need from a VAE (latents already scaled by ``scaling_factor``).

    ``encode(pixels, generator=None, noise=None)``: pixels (B, 3, H, W) in [-1, 1] -> scaled latents
    (B, C, H / f, W / f), a *sample* of the posterior: ``(mean + std * noise) * scaling_factor`` with ``noise``
    given, else drawn as ``randn(mean.shape)`` from ``generator`` (``None``: torch's global RNG).
    ``decode(latents)``: scaled latents -> images (B, 3, H, W) in 0..1.
    ``downscale_factor`` (8) and ``latent_channels`` (4) describe the latent grid. A ComfyUI VAE works in
    unscaled latents and BHWC 0..1 pixels: an adapter multiplies its latents by 0.18215, divides before
    decoding, and converts the layouts (its encode returns the posterior mean unless it samples itself).
    """

    scaling_factor: float
    downscale_factor: int
    latent_channels: int

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class DiffusersVAE:
    """diffusers ``AutoencoderKL`` (stable-diffusion-2-1-base/vae) as a :class:`LatentCodec`."""

    def __init__(self, vae, scaling_factor: float | None = None):
        self.vae = vae.eval()
        sf = scaling_factor if scaling_factor is not None else getattr(vae.config, "scaling_factor", None)
        self.scaling_factor = float(sf if sf is not None else VAE_SCALING_FACTOR)
        self.downscale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    @classmethod
    def from_pretrained(cls, folder, *, device=None, dtype=torch.float32, subfolder=None):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(os.fspath(folder), subfolder=subfolder, torch_dtype=dtype,
                                            local_files_only=True)
        if device is not None:
            vae = vae.to(device)
        return cls(vae)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(device=self.device, dtype=self.dtype)).latent_dist
        if noise is None:
            z = dist.sample(generator=generator)
        else:
            z = dist.mean + dist.std * noise.to(device=dist.mean.device, dtype=dist.mean.dtype)
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)


class CallableLatentCodec:
    """Adapts a VAE that works like ComfyUI's (images (B, H, W, 3) 0..1 in, *unscaled* latents out, and back) to
    :class:`LatentCodec`: pixels in [-1, 1] are mapped to 0..1 channels last, latents are multiplied by
    ``scaling_factor`` after encoding and divided before decoding.

    ``encode_fn`` decides whether it samples the posterior or returns its mean; it takes no generator, so the
    pipelines' random stream then starts with the initial latents (the official stream starts with the
    posterior sample): results are not the official ones bit for bit. ``noise`` cannot be honoured either.
    """

    def __init__(self, encode_fn: Callable[[torch.Tensor], torch.Tensor],
                 decode_fn: Callable[[torch.Tensor], torch.Tensor], *, scaling_factor: float = VAE_SCALING_FACTOR,
                 downscale_factor: int = 8, latent_channels: int = 4):
        self.encode_fn = encode_fn
        self.decode_fn = decode_fn
        self.scaling_factor = float(scaling_factor)
        self.downscale_factor = int(downscale_factor)
        self.latent_channels = int(latent_channels)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is not None:
            raise ValueError("CallableLatentCodec: the wrapped VAE samples by itself; posterior noise cannot be given")
        images = (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        return self.encode_fn(images) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.decode_fn(latents / self.scaling_factor)
        return images.float().clamp(0, 1).permute(0, 3, 1, 2)


class MomentsLatentCodec(CallableLatentCodec):
    """A VAE given as functions (e.g. ComfyUI's ``first_stage_model`` pieces) as a :class:`LatentCodec` that
    samples the posterior exactly as :class:`DiffusersVAE` does: ``moments_fn(pixels in [-1, 1]) -> (B, 2C, h, w)``
    (encoder + quant_conv: mean and log-variance), sampled with diffusers' ``DiagonalGaussianDistribution`` and the
    pipeline's generator (so the random stream is the official one); ``decode_fn`` as :class:`CallableLatentCodec`."""

    def __init__(self, moments_fn: Callable[[torch.Tensor], torch.Tensor],
                 decode_fn: Callable[[torch.Tensor], torch.Tensor], **sizes):
        super().__init__(moments_fn, decode_fn, **sizes)
        self.moments_fn = moments_fn

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(self.moments_fn(pixels))
        if noise is None:
            z = dist.sample(generator=generator)
        else:
            z = dist.mean + dist.std * noise.to(device=dist.mean.device, dtype=dist.mean.dtype)
        return z * self.scaling_factor
