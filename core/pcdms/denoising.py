"""The denoising loop the PCDMs UNet stages share, and its plumbing: classifier-free guidance in one UNet call (the
batch ``[unconditional x n, conditional x n]``), guidance rescale, RePoseDM pose guidance on a step's noise
prediction, per-step callbacks with a clean-latent estimate, and the random draws (generator, given noise).
The pipelines built on it are in :mod:`.pipelines` (semantics in its docstring)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .encoders import DiffusersVAE
from .image_layout import to_frame

__all__ = ["StepInfo", "PCDMsInterrupted", "clean_estimate", "rescale_noise_cfg", "flatten_pose"]


def _fresh(scheduler):
    """A private copy per call (multistep schedulers keep state between steps)."""
    return type(scheduler).from_config(scheduler.config)


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg`` (arXiv 2305.08891 sec. 3.4), as the official stage-3 pipeline calls it."""
    dims = list(range(1, noise_cond.ndim))
    std_cond = noise_cond.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_cond / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def flatten_pose(pose: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Stage-1 pose coordinates: (18, 2), (B, 18, 2), (B, 36) or (B, 1, 36) -> (B, 36) float (official: the
    18 "x y" lines of the pose file, flattened; their normalisation was never published)."""
    pose = torch.as_tensor(pose).float()
    if pose.ndim == 2 and pose.shape == (18, 2):
        pose = pose[None]
    if pose.ndim == 3 and pose.shape[1:] == (18, 2):
        pose = pose.reshape(pose.shape[0], 36)
    elif pose.ndim == 3 and pose.shape[1] == 1:
        pose = pose[:, 0]
    elif pose.ndim == 1:
        pose = pose[None]
    if pose.ndim != 2:
        raise ValueError(f"pose coordinates: expected (B, 36), (B, 1, 36) or (B, 18, 2), got {tuple(pose.shape)}")
    return pose


# ------------------------------------------------------------------------------------------ plumbing
@dataclass
class StepInfo:
    """Passed to the per-step callback after each scheduler step."""

    stage: str  # "prior" | "inpaint" | "refine" | "simplified"
    step: int  # 1-based
    num_steps: int
    timestep: int
    latents: torch.Tensor
    pred_original: torch.Tensor | None = None  # UNet stages: this step's clean-latent estimate (previews)


class PCDMsInterrupted(RuntimeError):
    """Raised when a per-step callback returns False."""


def _notify(callback, stage, i, n, t, latents, pred_original=None):
    if callback is None:
        return
    if callback(StepInfo(stage, i + 1, n, int(t), latents, pred_original)) is False:
        raise PCDMsInterrupted(f"PCDMs {stage}: interrupted at step {i + 1} of {n}")


def clean_estimate(scheduler, x: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor | None:
    """The clean-latent estimate of one step from the variance-preserving ``x`` (the scheduler-scaled model input)
    and the model output, by the scheduler's ``prediction_type``: Tweedie for epsilon (RePoseDM eq 13),
    ``sqrt(a) x - sqrt(1 - a) v`` for v, the output itself for sample; None for others."""
    a = scheduler.alphas_cumprod[int(round(float(t)))].to(device=x.device, dtype=x.dtype)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return (x - (1 - a).sqrt() * model_output) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * model_output
    return model_output if kind == "sample" else None


def _generator(generator, seed):
    if generator is not None and seed is not None:
        raise ValueError("give either seed or generator, not both")
    if seed is not None:
        return torch.Generator("cpu").manual_seed(int(seed))
    return generator


def _randn(shape, generator, device, dtype):
    """diffusers' randn_tensor for one generator: drawn on the generator's device (the global RNG of ``device``
    without one), then moved."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _noise_at(step_noise, i, shape, device, dtype):
    noise = step_noise(i, shape) if callable(step_noise) else step_noise[i]
    noise = torch.as_tensor(noise)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"step_noise[{i}]: expected shape {tuple(shape)}, got {tuple(noise.shape)}")
    return noise.to(device=device, dtype=dtype)


def _initial_latents(latents, shape, generator, device, dtype, scheduler):
    if latents is None:
        latents = _randn(shape, generator, device, dtype)
    else:
        latents = torch.as_tensor(latents)
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents: expected shape {tuple(shape)}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype)
    return latents * scheduler.init_noise_sigma


def _model_place(model) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's denoiser (its UNet where it has one: the pose encoder and image projection
    may be kept in another dtype, as the official fp16 set-up keeps them in fp32; they cast their own inputs)."""
    p = next(getattr(model, "unet", model).parameters())
    return p.device, p.dtype


def _broadcast(*tensors):
    """Bring batch-1 tensors to the common batch size (one source, several target poses, or the reverse)."""
    sizes = {t.shape[0] for t in tensors if t is not None}
    b = max(sizes)
    if not sizes <= {1, b}:
        raise ValueError(f"batch sizes do not match: {sorted(sizes)} (each must be 1 or {b})")
    return [None if t is None else (t.expand(b, *t.shape[1:]) if t.shape[0] != b else t) for t in tensors]


def _as_images(images, what):
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected (B, H, W, C) images in 0..1 (channels last), got {tuple(images.shape)}")
    return images


def _resolve_rescale(guidance_rescale, guidance_scale) -> float:
    if isinstance(guidance_rescale, str):
        if guidance_rescale != "official":
            raise ValueError(f"guidance_rescale: a float or 'official', got {guidance_rescale!r}")
        return float(guidance_scale)  # the official stage-3 script passes its guidance scale
    return float(guidance_rescale)


def _guidance_decode(codec, decode=None):
    """A differentiable ``latents (scaled) -> image in [-1, 1]`` for pose guidance: ``decode`` when given, else the
    codec's ``decode_for_guidance``, else the AutoencoderKL inside a :class:`DiffusersVAE` (its ``decode`` runs
    without gradient and clamps, so it cannot be used). Other codecs (ComfyUI's VAE) need ``guidance_decode``."""
    if decode is not None:
        return decode
    fn = getattr(codec, "decode_for_guidance", None)
    if fn is not None:
        return fn
    if isinstance(codec, DiffusersVAE):
        return lambda z: codec.vae.decode(z.to(codec.dtype) / codec.scaling_factor).sample.to(z.dtype)
    raise ValueError(f"pose_guidance: give guidance_decode (a differentiable latents -> [-1, 1] image) for the "
                     f"{type(codec).__name__} codec")


def _pose_guided(guidance, *, scheduler, x, t, pred, uncond, cond, guidance_scale, rescaled, decode, target,
                 col0):
    """Apply RePoseDM pose guidance to one step's noise prediction ``pred`` (the CFG'd, possibly rescaled eps).

    * Only the latent columns ``col0:`` are guided: the target half of the PCDMs [source | target] canvas (col0 =
      w / 2; 0 for refine). The guidance sees ``x[..., col0:]`` and ``pred[..., col0:]`` and ``decode`` gets the
      cropped target-half latents, so the estimator looks at the generated person only; the source half of the
      returned prediction is ``pred``'s, untouched.
    * ``x`` is the scheduler-scaled model input (the variance-preserving ``y_t``; identity for DDIM / UniPC /
      DPM-Solver, ``x / sqrt(sigma^2 + 1)`` for Euler), and ``alpha_bar = scheduler.alphas_cumprod[t]``: with the
      epsilon prediction (checked by the caller) that is exactly eq 13's Tweedie estimate.
    * Under CFG without rescale the paper's eq 16 (``guide_cfg``: the pose term scaled by ``w_c`` too) is used when
      the object has it; with ``guidance_rescale`` > 0 (or an object without ``guide_cfg``) eq 15 is applied to the
      final (rescaled) prediction.
    * The gradient runs under ``torch.enable_grad()`` (the samplers are ``no_grad``) on detached latents; the
      guidance makes its Tweedie estimate a leaf requiring grad and differentiates through ``decode``.
    * ``target``: the pose image for the estimator, passed only when the guidance has none of its own."""
    a = scheduler.alphas_cumprod[int(round(float(t)))].to(device=x.device, dtype=x.dtype)
    kw = {} if getattr(guidance, "has_target", False) or target is None else {"target": target}
    x_t = x[..., col0:].detach()
    with torch.enable_grad():
        if uncond is not None and not rescaled and hasattr(guidance, "guide_cfg"):
            new = guidance.guide_cfg(uncond[..., col0:], cond[..., col0:], guidance_scale, x_t, t, a, decode, **kw)
        else:
            new = guidance(x_t, t, pred[..., col0:], a, decode, **kw)
    out = pred.clone()
    out[..., col0:] = new.detach().to(pred.dtype)
    return out


class _UNetDenoiser:
    """The shared loop of the UNet stages: guidance in one UNet call, buffers built once."""

    stage = ""

    def _denoise(self, *, model_call, scheduler, latents, extra_cond, extra_uncond, guidance_scale,
                 guidance_rescale, generator, step_noise, callback, eta, pose_guidance=None, guidance_decode=None,
                 guidance_target=None, guide_col0=0):
        """``pose_guidance`` (None: the loop is unchanged): see :func:`_pose_guided`; ``guidance_decode`` maps the
        cropped latents to an image in [-1, 1] (mapped on to the guidance's ``image_range``)."""
        do_cfg = guidance_scale > 1.0
        n, c_lat, h, w = latents.shape
        if pose_guidance is not None:
            ptype = getattr(scheduler.config, "prediction_type", "epsilon")
            if ptype != "epsilon":
                raise ValueError(f"pose_guidance needs an epsilon-prediction scheduler, got {ptype!r}")
            base_decode = _guidance_decode(self.vae, guidance_decode)
            lo, hi = getattr(pose_guidance, "image_range", (-1.0, 1.0))
            if (lo, hi) == (-1.0, 1.0):
                decode = base_decode
            else:
                decode = lambda z: lo + (hi - lo) * (base_decode(z) + 1) / 2  # noqa: E731
        timesteps = scheduler.timesteps
        rows = 2 * n if do_cfg else n
        c_extra = 0 if extra_cond is None else extra_cond.shape[1]
        unet_in = torch.empty(rows, c_lat + c_extra, h, w, device=latents.device, dtype=latents.dtype)
        if c_extra:
            if do_cfg:
                unet_in[:n, c_lat:] = extra_uncond
                unet_in[n:, c_lat:] = extra_cond
            else:
                unet_in[:, c_lat:] = extra_cond
        params = inspect.signature(scheduler.step).parameters
        if step_noise is not None and "variance_noise" not in params:
            raise ValueError(f"step_noise: {type(scheduler).__name__}.step takes no per-step noise")
        kwargs = {}
        if "generator" in params and step_noise is None:
            kwargs["generator"] = generator
        if "eta" in params:
            kwargs["eta"] = eta
        for i, t in enumerate(timesteps):
            x = scheduler.scale_model_input(latents, t)  # noisy latents only (see the module docstring)
            unet_in[:n, :c_lat] = x
            if do_cfg:
                unet_in[n:, :c_lat] = x
            pred = model_call(unet_in, t)
            uncond = cond = None
            if do_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
                if guidance_rescale > 0:
                    pred = rescale_noise_cfg(pred, cond, guidance_rescale)
            if pose_guidance is not None:
                pred = _pose_guided(pose_guidance, scheduler=scheduler, x=x, t=t, pred=pred, uncond=uncond, cond=cond,
                                    guidance_scale=guidance_scale, rescaled=do_cfg and guidance_rescale > 0,
                                    decode=decode, target=guidance_target, col0=guide_col0)
            if step_noise is not None:
                kwargs["variance_noise"] = _noise_at(step_noise, i, latents.shape, latents.device, latents.dtype)
            out = scheduler.step(pred, t, latents, **kwargs, return_dict=True)
            latents = out.prev_sample
            if callback is not None:  # the scheduler's own estimate where it gives one (DDIM, DDPM, Euler)
                x0 = getattr(out, "pred_original_sample", None)
                _notify(callback, self.stage, i, len(timesteps), t, latents,
                        clean_estimate(scheduler, x, pred, t) if x0 is None else x0)
        return latents

    # --- images in and out ---
    def _frame(self, images, layout_mode, fill, what, layout=None):
        images = _as_images(images, what)
        return to_frame(images, layout, size=self.size, mode=layout_mode, fill=fill)

    def _check_size(self):
        f = self.vae.downscale_factor
        if self.size % f:
            raise ValueError(f"size {self.size} must be a multiple of the VAE factor {f}")

    def _features(self, image_features, source_frame, what="image_features"):
        if image_features is None:
            if self.image_encoder is None:
                raise ValueError(f"{type(self).__name__}: give image_features (DINOv2 tokens of the source frame) "
                                 "or an image_encoder")
            image_features = self.image_encoder.encode(source_frame)
        image_features = torch.as_tensor(image_features)
        if image_features.ndim != 3:
            raise ValueError(f"{what}: expected (B, tokens, channels), got {tuple(image_features.shape)}")
        return image_features

    def _decode(self, latents, width_halves: int):
        canvas = self.vae.decode(latents).float().permute(0, 2, 3, 1).contiguous()
        frames = canvas[:, :, -canvas.shape[1]:] if width_halves == 2 else canvas
        return canvas, frames.contiguous()
