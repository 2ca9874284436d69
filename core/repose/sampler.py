"""RePoseDM sampling (section 3.4, eq 2, 16): PoseAlign once, then the denoising loop with classifier-free guidance
and optional PoseGuidance, on any diffusers scheduler.

* :class:`VaeCodec`: the frozen :class:`AutoencoderKL` as the ``encode`` / ``decode`` functions the other pieces
  take (images in [-1, 1], latents scaled by ``scaling_factor``; encode uses the posterior mean, so it is
  deterministic and differentiable). ``decode(latents, scale=s)`` decodes the latents resized by ``s`` first (a
  cheaper, lower-resolution decode for guidance; 1 = exact). With ``fused_upsample`` (default) each decoder
  upsampler (nearest 2x upsampling followed by a 3x3 convolution) runs as one stride-2 4x4 transposed convolution
  with the summed weights (:func:`nearest_up_conv3x3`): the same function (equal up to float rounding), 16 instead
  of 36 multiply-adds per low-resolution pixel and channel pair, forward and backward -- the upsamplers are about a
  quarter of an SD decoder's FLOPs, and PoseGuidance runs the decoder forward and backward every step.
* :func:`denoise_loop`: the scheduler loop around any ``predict(x_in, t) -> (eps_cond, eps_uncond | None,
  variance | None)``; eq 16 with ``w_c``; ``pose_guidance`` (a :class:`~.guidance.PoseGuidance`) adds its eq-15 term;
  learned variance is handed to schedulers that use it (DDPM ``learned_range``), others get ``eps`` only. A
  ``callback(StepInfo)`` runs after each step (progress, previews); raising in it aborts (ComfyUI's interrupt), and
  returning ``False`` raises :class:`SamplingInterrupted`.
* :class:`RePoseSampler`: images in 0..1 in, images in 0..1 out; seeds.

CFG with learned variance: the noise is combined (eq 16), the variance is the conditional branch's (GLIDE/DiT
practice; the paper does not say).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.schedulers import DDPMScheduler
from diffusers.utils import BaseOutput

from .denoiser import RePoseDenoiser, repose_noise_scheduler
from .guidance import PoseGuidance, tweedie_x0
from .pose_align import PoseAlign

__all__ = ["VaeCodec", "nearest_up_conv3x3", "fused_upsamplers", "diffusers_upsampler_conv", "is_plain_conv3x3", "StepInfo", "SamplingInterrupted", "denoise_loop",
           "RePoseSampler", "RePoseSamplerOutput",
           "TINY_VAE_CONFIG", "make_generator"]

# A toy AutoencoderKL (factor 2, 4 latent channels) for tests and smoke runs.
TINY_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1, latent_channels=4,
    norm_num_groups=4, sample_size=16,
)


class SamplingInterrupted(RuntimeError):
    """The step callback returned False."""


@dataclass
class StepInfo:
    """What the step callback gets: ``index`` (0-based), ``total``, ``timestep``, ``latents`` after the step and
    ``pred_original`` (the scheduler's clean-latent estimate when it gives one, else the Tweedie estimate)."""

    index: int
    total: int
    timestep: Any
    latents: torch.Tensor
    pred_original: torch.Tensor | None


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


# The nearest-2x + 3x3-conv rewrite as a 4-tap transposed convolution, per axis: conv2d over the upsampled signal
# u[2i + a] = x[i] gives out[2i] = x[i-1] w0 + x[i] (w1 + w2) and out[2i+1] = x[i] (w0 + w1) + x[i+1] w2, which is
# conv_transpose1d(x, k, stride=2, padding=1) with k = [w2, w1 + w2, w0 + w1, w0] = _UP_TAPS @ w.
_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def nearest_up_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3x3 ``weight``
    (Cout, Cin, 3, 3), computed as one stride-2 4x4 transposed convolution of ``x`` (exact up to float rounding;
    2.25x fewer multiply-adds, and the 4x larger upsampled tensor is never built)."""
    m = torch.tensor(_UP_TAPS, dtype=weight.dtype, device=weight.device)
    kt = torch.einsum("ay,oiyx,bx->ioab", m, weight, m)          # (Cin, Cout, 4, 4)
    return F.conv_transpose2d(x, kt, bias, stride=2, padding=1)


def is_plain_conv3x3(conv) -> bool:
    """A 3x3, stride-1, padding-1 zero-padded ``nn.Conv2d`` of one group: what :func:`nearest_up_conv3x3` replaces."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def diffusers_upsampler_conv(up) -> nn.Conv2d | None:
    """The 3x3 conv of a diffusers ``Upsample2D`` that is exactly nearest-2x + that conv, else None."""
    if type(up).__name__ != "Upsample2D" or not (
            getattr(up, "interpolate", False) and getattr(up, "use_conv", False)
            and not getattr(up, "use_conv_transpose", True) and getattr(up, "norm", 0) is None):
        return None
    conv = getattr(up, "conv" if getattr(up, "name", "conv") == "conv" else "Conv2d_0", None)
    return conv if type(conv) is nn.Conv2d and is_plain_conv3x3(conv) else None   # exact type: not LoRA


@contextlib.contextmanager
def fused_upsamplers(model: nn.Module, match: Callable[[nn.Module], nn.Conv2d | None] = diffusers_upsampler_conv):
    """While active, every upsampler of ``model`` for which ``match`` returns its conv (default: diffusers'
    ``Upsample2D`` that is exactly nearest-2x + 3x3 conv) computes :func:`nearest_up_conv3x3` instead (an instance
    ``forward`` set for the duration, removed on exit; parameters and state dict untouched). Calls with other
    arguments (an ``output_size``) or inputs that are not 4-D run the original forward."""
    patched = []
    for up in model.modules():
        if "forward" in vars(up):
            continue
        conv = match(up)
        if conv is None:
            continue
        original = up.forward

        def forward(hidden_states, *args, _conv=conv, _original=original, **kwargs):
            if hidden_states.ndim != 4 or any(a is not None for a in (*args, *kwargs.values())):
                return _original(hidden_states, *args, **kwargs)
            return nearest_up_conv3x3(hidden_states, _conv.weight, _conv.bias)
        up.forward = forward
        patched.append(up)
    try:
        yield model
    finally:
        for up in patched:
            del up.forward


class VaeCodec:
    """``encode(image in [-1, 1]) -> latents``, ``decode(latents) -> image in [-1, 1]`` around an AutoencoderKL.

    ``fused_upsample`` (default True): decode with the decoder's upsamplers computed by :func:`nearest_up_conv3x3`
    (the same function, cheaper; see the module docstring) -- :func:`fused_upsamplers` around each :meth:`decode`
    call only."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float | None = None, fused_upsample: bool = True):
        self.vae = vae.eval().requires_grad_(False)
        sf = scaling_factor if scaling_factor is not None else getattr(vae.config, "scaling_factor", 1.0)
        self.scaling_factor = float(sf)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.fused_upsample = bool(fused_upsample)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        return self.vae.encode(image.to(p.dtype)).latent_dist.mean * self.scaling_factor

    def decode(self, latents: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        p = next(self.vae.parameters())
        z = latents.to(p.dtype) / self.scaling_factor
        if scale != 1.0:
            z = F.interpolate(z, scale_factor=scale, mode="bilinear", align_corners=False)
        with fused_upsamplers(self.vae) if self.fused_upsample else contextlib.nullcontext():
            return self.vae.decode(z).sample

    def decoder(self, scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: self.decode(z, scale)

    __call__ = encode


def _learned_variance(scheduler) -> bool:
    return isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in ("learned", "learned_range")


def denoise_loop(
    predict: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    latents: torch.Tensor,
    scheduler,
    *,
    guidance_scale: float = 2.0,
    pose_guidance: PoseGuidance | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], Any] | None = None,
    guidance_target=None,
) -> torch.Tensor:
    """Run ``scheduler.timesteps`` (set them first) from ``latents`` (already scaled by ``init_noise_sigma``).

    ``predict(x_in, t)`` returns ``(eps_cond, eps_uncond or None, variance or None)``; ``eps_uncond`` is needed only
    when ``guidance_scale != 1``. Eq 16: ``eps = eps_u + w_c (eps_c - eps_u)`` (+ ``w_c eta sqrt(1 - a_t) grad G``
    with ``pose_guidance``, which needs ``decode``; ``guidance_target`` overrides the guidance's own target for this
    run: a pose image in 0..1 or a :class:`~.guidance.PoseTarget`).
    """
    if pose_guidance is not None and decode is None:
        raise ValueError("denoise_loop: pose_guidance needs a decode function")
    timesteps = scheduler.timesteps
    total = len(timesteps)
    learned = _learned_variance(scheduler)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(latents, t)
        eps_c, eps_u, var = predict(x_in, t)
        abar = scheduler.alphas_cumprod.to(latents.device)[int(t)]
        if guidance_scale != 1.0 and eps_u is None:
            raise ValueError("denoise_loop: guidance_scale != 1 needs the unconditional prediction")
        if pose_guidance is not None and pose_guidance.active(t):
            if guidance_scale == 1.0:
                eps = pose_guidance(x_in, t, eps_c, abar, decode, guidance_target)           # eq 15
            else:
                eps = pose_guidance.guide_cfg(eps_u, eps_c, guidance_scale, x_in, t, abar, decode,
                                              guidance_target)                                    # eq 16
        else:
            eps = eps_c if guidance_scale == 1.0 else eps_u + guidance_scale * (eps_c - eps_u)     # eq 16
        if learned and var is None:          # a fixed-variance model on a learned-variance scheduler:
            var = -torch.ones_like(eps)      # v = -1 is the posterior variance (DDPM's fixed_small)
        model_output = torch.cat([eps, var.to(eps.dtype)], 1) if learned else eps
        out = scheduler.step(model_output, t, latents, **step_kwargs)
        latents = out.prev_sample
        if callback is not None:
            pred = getattr(out, "pred_original_sample", None)
            if pred is None:
                pred = tweedie_x0(x_in, eps, abar)
            if callback(StepInfo(i, total, t, latents, pred)) is False:
                raise SamplingInterrupted(f"sampling stopped by the callback at step {i + 1}/{total}")
    return latents


@dataclass
class RePoseSamplerOutput(BaseOutput):
    """``images`` (B, 3, H, W) in 0..1 (None for ``output_type="latent"``), ``latents``, ``warped_preview`` (the
    decoded ``F_S^N`` in 0..1, supplement Fig. 8), ``aligned_features`` ``F_S^N``, ``flow`` (image grid)."""

    images: torch.Tensor | None
    latents: torch.Tensor
    warped_preview: torch.Tensor | None
    aligned_features: torch.Tensor
    flow: torch.Tensor | None


class RePoseSampler:
    """PoseAlign + denoiser + VAE + scheduler. ``scheduler`` defaults to :func:`repose_noise_scheduler` (DDPM,
    learned variance); any diffusers scheduler with ``alphas_cumprod`` works (DDIM, DPM-Solver, Euler, UniPC...).

    ``sampler(source_image, target_pose_image, num_inference_steps=50, guidance_scale=2.0, pose_guidance=None,
    seed=None, callback=None)`` with images (B, 3, H, W) in 0..1 (H, W multiples of the VAE factor). ``aligned`` (a
    :class:`~.pose_align.PoseAlignOutput`) skips PoseAlign (e.g. computed by the PoseAlign node).
    ``guidance_decode_scale`` < 1 decodes a downsized Tweedie latent for the guidance (cheaper; 1 = exact).
    """

    def __init__(self, denoiser: RePoseDenoiser, pose_align: PoseAlign | None, vae: AutoencoderKL | VaeCodec,
                 scheduler=None):
        self.denoiser = denoiser
        self.pose_align = pose_align
        self.codec = vae if isinstance(vae, VaeCodec) else VaeCodec(vae)
        self.scheduler = scheduler if scheduler is not None else repose_noise_scheduler()

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @torch.no_grad()
    def align(self, source_image: torch.Tensor, target_pose_image: torch.Tensor, decode_preview: bool = True):
        """``(pose_latents, PoseAlignOutput)`` for images in 0..1."""
        if self.pose_align is None:
            raise ValueError("RePoseSampler: no PoseAlign model")
        dev = self.device
        src = source_image.to(dev) * 2 - 1
        pose_latents = self.codec.encode(target_pose_image.to(dev) * 2 - 1)
        aligned = self.pose_align(src.to(pose_latents.dtype), pose_latents, self.codec.encode,
                                  self.codec.decode if decode_preview else None)
        return pose_latents, aligned

    @torch.no_grad()
    def __call__(
        self,
        source_image: torch.Tensor,
        target_pose_image: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        pose_guidance: PoseGuidance | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[StepInfo], Any] | None = None,
        scheduler=None,
        output_type: str = "image",
        aligned=None,
        guidance_decode_scale: float = 1.0,
        latents: torch.Tensor | None = None,
    ) -> RePoseSamplerOutput:
        if output_type not in ("image", "latent"):
            raise ValueError(f"output_type: expected 'image' or 'latent', got {output_type!r}")
        scheduler = scheduler if scheduler is not None else self.scheduler
        dev, dtype = self.device, self.dtype
        if aligned is None:
            pose_latents, aligned = self.align(source_image, target_pose_image)
        else:
            pose_latents = self.codec.encode(target_pose_image.to(dev) * 2 - 1)
        features = aligned.features.to(dev, dtype)
        pose_latents = pose_latents.to(dev, dtype)
        b = max(source_image.shape[0], target_pose_image.shape[0])
        shape = (b, self.denoiser.latent_channels, *pose_latents.shape[-2:])
        if generator is None:
            generator = make_generator(seed)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev, dtype)
        scheduler.set_timesteps(num_inference_steps, device=dev)
        latents = latents * scheduler.init_noise_sigma
        # The guidance object is not modified: without its own target it compares with this call's pose image.
        guidance_target = None
        if pose_guidance is not None and not pose_guidance.has_target:
            guidance_target = target_pose_image.to(dev)
        c = self.denoiser.latent_channels
        cfg = guidance_scale != 1.0

        def predict(x_in, t):
            if cfg:
                x2 = torch.cat([x_in, x_in])
                drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(dev)
                out = self.denoiser(x2, t, pose_latents.expand(b, -1, -1, -1).repeat(2, 1, 1, 1),
                                    features.expand(b, -1, -1, -1).repeat(2, 1, 1, 1), drop_condition=drop).sample
                cond, uncond = out[:b], out[b:]
            else:
                cond = self.denoiser(x_in, t, pose_latents, features).sample
                uncond = None
            var = cond[:, c:] if cond.shape[1] > c else None
            return cond[:, :c], None if uncond is None else uncond[:, :c], var

        latents = denoise_loop(predict, latents, scheduler, guidance_scale=guidance_scale,
                               pose_guidance=pose_guidance, decode=self.codec.decoder(guidance_decode_scale),
                               generator=generator, callback=callback, guidance_target=guidance_target)
        images = None
        if output_type == "image":
            images = ((self.codec.decode(latents) + 1) / 2).clamp(0, 1).float()
        preview = None if aligned.decoded is None else ((aligned.decoded + 1) / 2).clamp(0, 1).float()
        return RePoseSamplerOutput(images=images, latents=latents, warped_preview=preview,
                                   aligned_features=features, flow=aligned.image_flow)
