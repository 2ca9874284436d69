"""ComfyUI objects as the core's interfaces, for the PCDMs and RePose nodes: CLIP_VISION models as image encoders
(CLIP ViT-H and DINOv2 with the official PCDMs input), a VAE as the PCDMs latent codec and as RePose's codec (with a
differentiable decoder for pose guidance), and the GUIDANCE object (a pose estimator that makes
:class:`~..core.repose.guidance.PoseGuidance`).

Everything here adapts; the methods themselves are in ``core`` (:mod:`..core.pcdms.transfer`,
:mod:`..core.repose.transfer`). Calls into ComfyUI go through :mod:`.bridge`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core.pcdms.encoders import (CLIP_CROP_SIZE, CLIP_MEAN, CLIP_STD, CallableLatentCodec, MomentsLatentCodec,
                                   clip_preprocess, interpolate_dinov2_position_embeddings)
from ..core.repose.guidance import PoseGuidance
from ..core.repose.sampler import VaeCodec, diffusers_upsampler_conv, fused_upsamplers, is_plain_conv3x3
from . import bridge

__all__ = ["GUIDANCE_TYPE", "SCALING_FACTOR", "ComfyVisionEncoder", "ComfyDinoV2Encoder",
           "comfy_latent_codec", "ComfyVaeCodec", "PoseGuidanceFactory"]

GUIDANCE_TYPE = "GUIDANCE"
SCALING_FACTOR = 0.18215  # the SD VAE's latent scale, which the PCDMs and RePose models are trained with


# ------------------------------------------------------------------------------------------- encoders
class ComfyVisionEncoder:
    """A ComfyUI CLIP_VISION as the pipelines' image encoder (``encode(images)`` / ``encode_pixels``).

    ``encode`` computes the official input (:func:`clip_preprocess`: CLIPImageProcessor's PIL bicubic resize and
    centre crop; ComfyUI's own torch bicubic differs at 8-bit level) and calls ``encode_pixels``, which runs
    ComfyUI's CLIPVisionModelProjection (``clip_vision.model``) on those pixels directly, exact for any pixels
    (the prior's all-zero unconditional input included). A CLIP_VISION without ``model`` gets, through its
    ``encode_image``, the 224 x 224 image that ComfyUI's preprocessing (no resize at 224, 8-bit rounding, CLIP
    mean / std) maps back to the same pixels."""

    def __init__(self, clip_vision, output: str, ndim: int, what: str):
        if not callable(getattr(clip_vision, "encode_image", None)):
            raise ValueError(f"{what}: expected a ComfyUI CLIP_VISION model (with encode_image), got "
                             f"{type(clip_vision).__name__}")
        self.clip_vision, self.output, self.ndim, self.what = clip_vision, output, ndim, what
        self.keep = ()
        self.input_size = CLIP_CROP_SIZE  # the official CLIPImageProcessor pixels (clip_preprocess)

    def keeping(self, keep) -> "ComfyVisionEncoder":
        """A copy that reloads the managed models ``keep`` after each ComfyUI call (:func:`bridge.keep_loaded`)."""
        enc = copy.copy(self)
        enc.keep = tuple(keep)
        return enc

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        return self.encode_pixels(clip_preprocess(torch.as_tensor(images)[..., :3].float().cpu()))

    @torch.no_grad()
    def _encode_image(self, images) -> torch.Tensor:
        images = torch.as_tensor(images)
        out = bridge.keep_loaded(self.clip_vision.encode_image, *self.keep)(images[..., :3])
        value = getattr(out, self.output, None)
        if value is None and hasattr(out, "__getitem__"):
            try:
                value = out[self.output]
            except (KeyError, AttributeError, TypeError):
                value = None
        if value is None:
            raise ValueError(f"{self.what}: the CLIP_VISION output has no {self.output!r}")
        return self._checked(value)

    def _checked(self, value) -> torch.Tensor:
        value = torch.as_tensor(value).float().cpu()
        if value.ndim != self.ndim:
            raise ValueError(f"{self.what}: expected {self.output} with {self.ndim} dimensions, got "
                             f"{tuple(value.shape)}")
        return value

    @torch.no_grad()
    def encode_pixels(self, pixel_values) -> torch.Tensor:
        model = getattr(self.clip_vision, "model", None)
        if self.output == "image_embeds" and callable(model):
            # ComfyUI's CLIPVisionModelProjection on the pixels themselves: exact for any pixels (the prior's
            # all-zero unconditional input is the CLIP mean colour, which 8-bit rounding would move)
            if bridge.comfy_available():
                bridge.load_models(*self.keep, comfy_objects=(self.clip_vision,))
            device = next(model.parameters()).device
            out = model(pixel_values=torch.as_tensor(pixel_values).float().to(device), intermediate_output=-2)
            return self._checked(out[2])
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        images = (torch.as_tensor(pixel_values).float().cpu() * std + mean).clamp(0, 1)
        return self._encode_image(images.permute(0, 2, 3, 1).contiguous())


class ComfyDinoV2Encoder(ComfyVisionEncoder):
    """DINOv2 loaded by ComfyUI's 'Load CLIP Vision' as PCDMs' token encoder, with the OFFICIAL input.

    ComfyUI's own ``encode_image`` would resize to 518 x 518 with ImageNet mean / std (its dino2 config) and give
    1370 tokens; PCDMs was trained on ``CLIPImageProcessor`` input (224 x 224, CLIP mean / std: 257 tokens, the
    position embeddings resized as transformers 4.32). So this runs ComfyUI's Dinov2Model piece by piece on
    :func:`clip_preprocess` pixels: patch embedding, CLS token, position embeddings resized by
    :func:`interpolate_dinov2_position_embeddings`, encoder, final LayerNorm (``last_hidden_state``) -- the same
    computation as transformers' Dinov2Model, on ComfyUI's weights."""

    PARTS = ("embeddings.patch_embeddings", "embeddings.cls_token", "embeddings.position_embeddings", "encoder",
             "layernorm")

    def __init__(self, clip_vision, output: str, what: str = "dino_vision"):
        super().__init__(clip_vision, output, 3, what)
        model = getattr(clip_vision, "model", None)
        missing = [p for p in self.PARTS if _attr_path(model, p) is None]
        if missing:
            raise ValueError(f"{what}: expected DINOv2 (giant) loaded with 'Load CLIP Vision' (ComfyUI's Dinov2Model), "
                             f"got a {type(model).__name__} without {', '.join(missing)}")
        self.model = model
        projection = getattr(model.embeddings.patch_embeddings, "projection", None)
        self.patch_size = int(projection.kernel_size[0]) if projection is not None else 14

    @torch.no_grad()
    def encode_pixels(self, pixel_values) -> torch.Tensor:
        if bridge.comfy_available():  # the DINOv2 resident (ComfyUI's loader), our models kept loaded beside it
            bridge.load_models(*self.keep, comfy_objects=(self.clip_vision,))
        m = self.model
        device = m.embeddings.position_embeddings.device  # ComfyUI's text-encoder device once loaded
        pixels = torch.as_tensor(pixel_values).float().to(device)
        x = m.embeddings.patch_embeddings(pixels)                                   # (B, h*w, D)
        cls = m.embeddings.cls_token.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        pos = m.embeddings.position_embeddings.to(device=x.device)
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        x = x + interpolate_dinov2_position_embeddings(pos, h, w).to(x.dtype)
        if self.output == "penultimate_hidden_states":  # as ComfyUI's encode_image: the output of layer -2
            return self._checked(m.encoder(x, intermediate_output=-2)[1])
        x, _ = m.encoder(x)
        return self._checked(m.layernorm(x))


def _attr_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def comfy_latent_codec(vae, keep=()) -> MomentsLatentCodec | CallableLatentCodec:
    """A ComfyUI VAE as the pipelines' codec; the managed models ``keep`` stay loaded beside it.

    Encoding samples the posterior as the official code does (mean + std * noise from the pipeline's generator,
    :class:`MomentsLatentCodec`), from the moments of ComfyUI's ``first_stage_model`` (``quant_conv(encoder(x))``).
    A VAE without those pieces goes through its own ``encode``, which returns the posterior mean
    (:class:`CallableLatentCodec`; the random stream then differs from the official one). Decoding: the VAE's own
    ``decode``."""
    if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
        raise ValueError(f"vae: expected a ComfyUI VAE (with encode / decode), got {type(vae).__name__}")
    factor = getattr(vae, "downscale_ratio", 8)
    sizes = dict(downscale_factor=factor if isinstance(factor, int) else 8,
                 latent_channels=getattr(vae, "latent_channels", 4))
    if not isinstance(sizes["latent_channels"], int):
        sizes["latent_channels"] = 4
    decode = bridge.keep_loaded(vae.decode, *keep)
    fsm = getattr(vae, "first_stage_model", None)
    if callable(getattr(fsm, "encoder", None)) and callable(getattr(fsm, "quant_conv", None)):
        def moments(pixels):
            if bridge.comfy_available():
                bridge.load_models(*keep, comfy_objects=(vae,))
            p = next(fsm.parameters())
            return fsm.quant_conv(fsm.encoder(pixels.to(p.device, p.dtype))).float()

        return MomentsLatentCodec(moments, lambda latents: torch.as_tensor(decode(latents)), **sizes)
    encode = bridge.keep_loaded(vae.encode, *keep)
    return CallableLatentCodec(lambda images: torch.as_tensor(encode(images[..., :3])),
                               lambda latents: torch.as_tensor(decode(latents)), **sizes)


# ------------------------------------------------------------------------------------------------ VAE
def _plain_copy(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself, or (when it holds inference-mode tensors, as ComfyUI's loaders make) a copy with plain
    tensors that autograd can save for backward."""
    tensors = list(module.parameters()) + list(module.buffers())
    if not any(t.is_inference() for t in tensors):
        return module
    with torch.inference_mode(False):
        clone = copy.deepcopy(module)
        for p in clone.parameters():
            p.data = p.data.clone()
        for mod in clone.modules():
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b.clone()
    return clone


def _upsampler_conv(up):
    """The 3x3 conv of an upsampler that is exactly nearest-2x + that conv: diffusers' ``Upsample2D``, or the
    Stable Diffusion / ComfyUI decoder's ``Upsample`` (``with_conv``, scale 2) whose conv is not patched (no
    weight casting or LoRA functions on it); else None."""
    conv = diffusers_upsampler_conv(up)
    if conv is not None:
        return conv
    if type(up).__name__ != "Upsample" or not getattr(up, "with_conv", False):
        return None
    scale = getattr(up, "scale_factor", None)
    conv = getattr(up, "conv", None)
    if scale not in (2, 2.0, (2, 2), (2.0, 2.0)) or not is_plain_conv3x3(conv):
        return None
    if getattr(conv, "comfy_cast_weights", False) or getattr(conv, "weight_function", None) \
            or getattr(conv, "bias_function", None):
        return None
    return conv


class ComfyVaeCodec(VaeCodec):
    """A ComfyUI VAE as the core's codec: ``encode`` [-1, 1] BCHW -> scaled latents, ``decode`` back.

    Decoding latents that require grad (PoseGuidance) goes through ``vae.first_stage_model.decode`` (a module that
    autograd can differentiate); everything else through the VAE's own encode / decode."""

    def __init__(self, vae, scaling_factor: float = SCALING_FACTOR, keep=()):
        if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
            raise ValueError(f"vae: expected a ComfyUI VAE (with encode / decode), got {type(vae).__name__}")
        self.comfy_vae = vae
        self.keep = tuple(keep)  # our managed models, reloaded after each VAE call (bridge.keep_loaded)
        self.vae = None
        self.scaling_factor = float(scaling_factor)
        factor = getattr(vae, "downscale_ratio", 8)
        self.factor = factor if isinstance(factor, int) else 8
        self._grad_decoder = None

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        pixels = ((image.float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()
        latents = torch.as_tensor(bridge.keep_loaded(self.comfy_vae.encode, *self.keep)(pixels))
        return latents.to(image.device) * self.scaling_factor

    def decode(self, latents: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        z = latents / self.scaling_factor
        if scale != 1.0:
            z = F.interpolate(z, scale_factor=scale, mode="bilinear", align_corners=False)
        if latents.requires_grad:
            fsm = getattr(self.comfy_vae, "first_stage_model", None)
            if fsm is None or not callable(getattr(fsm, "decode", None)):
                raise ValueError("guidance: the VAE has no first_stage_model to differentiate through")
            if self._grad_decoder is None:
                # ComfyUI's VAE resident beside our models first, so that the copy is made on the compute device
                bridge.load_models(*self.keep, comfy_objects=(self.comfy_vae,))
                self._grad_decoder = _plain_copy(fsm)
            p = next(self._grad_decoder.parameters())
            with fused_upsamplers(self._grad_decoder, _upsampler_conv):  # the same function, cheaper (core docs)
                out = self._grad_decoder.decode(z.to(p.device, p.dtype))
            out = getattr(out, "sample", out)
            return out.to(latents.device, latents.dtype)
        images = torch.as_tensor(bridge.keep_loaded(self.comfy_vae.decode, *self.keep)(z.float().cpu()))
        images = images.reshape(-1, *images.shape[-3:])[..., :3]
        return (images.movedim(-1, 1).float() * 2 - 1).to(latents.device, latents.dtype)

    __call__ = encode

# -------------------------------------------------------------------------------------------- guidance
@dataclass
class PoseGuidanceFactory:
    """GUIDANCE: makes a core :class:`~..core.repose.guidance.PoseGuidance` (eq 11-16) around one pose estimator.

    ``make(target_image=None, **overrides)`` returns a fresh guidance object (without a target, a sampler
    compares with its own target pose image). Usable by any epsilon-prediction latent sampler."""

    estimator: torch.nn.Module
    scale: float = 1.0
    threshold: float = 0.1
    mask_from: str = "generated"
    name: str = ""
    managed: bridge.ManagedModel | None = field(default=None, repr=False, compare=False)  # the estimator's
    decode_scale: float = 1.0  # < 1: the guidance decodes a downsized latent (cheaper, approximate)
    timestep_range: tuple[float, float] | None = None  # guide only these timesteps (None: every step)
    target: str = "skeleton"  # what P is: "skeleton" (the paper) or "keypoints" (see GUIDANCE_TARGETS)

    def __post_init__(self):
        if self.managed is None:  # held here so that the estimator keeps one ComfyUI ModelPatcher
            self.managed = bridge.managed(self.estimator)

    def make(self, target_image: torch.Tensor | None = None, **overrides) -> PoseGuidance:
        kwargs = dict(scale=self.scale, threshold=self.threshold, mask_from=self.mask_from,
                      timestep_range=self.timestep_range)
        if self.target == "keypoints":
            kwargs["compare"] = "heatmaps"
        kwargs.update(overrides)
        return PoseGuidance(self.estimator, target_image, **kwargs)

    __call__ = make
