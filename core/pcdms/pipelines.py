"""PCDMs sampling: prior -> inpaint -> refine (and the simplified single-stage release), each callable alone.

Modules: the schedulers in :mod:`.schedulers`, the shared denoising loop (CFG, rescale, pose guidance, callbacks,
random draws) in :mod:`.denoising`, the Pose-level entry the nodes / CLI / Python call in :mod:`.transfer`, the
training objectives in :mod:`.training`.

What the official code does is in ``../shared/reference/pcdms/README.md``; these pipelines reproduce it to
float32 rounding with the same weights, inputs, scheduler settings and generator, and do the right thing where
the official code is broken. Summary per stage (CFG = classifier-free guidance, on when ``guidance_scale > 1``;
the batch of one UNet / prior call is ``[unconditional x n, conditional x n]`` and the guided prediction is
``uncond + scale * (cond - uncond)``):

Stage 1, :class:`PriorPipeline` (x0-prediction prior on normalised CLIP embeddings)
    Scheduler ``UnCLIPScheduler`` (fixed_small_log, clip_sample +-10, prediction_type "sample",
    squaredcos_cap_v2, 1000 train steps), 20 steps (999, 946, ..., 53, 0). Initial latents ``randn(n, D)``
    from the generator; each step ``step(pred, t, latents, prev_timestep=<next t or None>)`` adds
    fixed_small_log noise for t > 0; output ``latents * 0.415 - 0.016``. Official default: no guidance.
    * Official bug: its per-step noise ignores the generator (torch's global RNG). Here it comes from the
      generator, after the initial latents (``official_rng=True`` takes it from the global RNG instead, which
      is the official behaviour: seed torch globally to reproduce an official run).
    * Official bug: guidance > 1 crashes. Here it works (paper Eq. 4): the unconditional branch drops all
      three conditions as training does -- source embedding = the CLIP embedding of all-zero preprocessed
      pixels (needs the CLIP encoder, or give ``negative_source_embedding``; zeros otherwise), poses = 0.
Stage 2, :class:`InpaintPipeline`
    Canvas [source | black] (VAE) and [source pose | target pose] (pose encoder), mask ones-left; context =
    [projected DINOv2 tokens, global embedding], class label = global embedding. Unconditional half: context
    and class label zeros; pose, mask, masked latents the same. Scheduler UniPC from the SD-2.1-base config
    with ``final_sigmas_type="sigma_min"`` (= diffusers 0.24), 20 steps, guidance 2. Random draws from the one
    generator: first the VAE posterior sample of the canvas (one per input, shared by its samples), then the
    initial latents ``randn(n, 4, h, 2w)``. Output: the right half of the decoded canvas.
Stage 3, :class:`RefinePipeline`
    UNet input [noisy latents, latents of the coarse image]; context = projected DINOv2 tokens.
    Unconditional half: zero context AND zero coarse latents. Draws: VAE sample of the coarse image, then the
    initial latents. ``guidance_rescale``: the official script passes the guidance scale (2.0) -- the default
    here (``"official"``); any float (0 = off) is selectable. Rescale: ``r * cfg * std(cond) / std(cfg) +
    (1 - r) * cfg`` (std over non-batch dims, per sample).
    * Official bug: more than one sample per input crashes (coarse latents not repeated). Here they are.
Simplified, :class:`SimplifiedPipeline` (``PCDMs_ckpt.pt``)
    Stage-2 layout without class label or CLIP token; negative context = ``image_proj_model(zeros)`` (the
    projection of zero features, not zeros); DDIM (scaled_linear 0.00085-0.012, steps_offset 1, no alpha-to-
    one, "leading"), 50 steps, eta 0, guidance 2.
    * Official bug: pose features not doubled for guidance, so batch > 1 crashes. Here they are repeated
      (identical result at batch 1).
    * The official VAE sample uses torch's global RNG (prepared outside the pipeline). Here it comes from the
      generator, before the initial latents; ``official_rng=True`` takes it from the global RNG.

Corrections that do not change official results: ``scale_model_input`` is applied to the noisy latents only
(the simplified pipeline scales all 9 channels; identity for DDIM / UniPC, but not for Euler).

Testability: every pipeline accepts the initial latents (``latents``, unscaled: multiplied by the scheduler's
``init_noise_sigma`` as diffusers does), the VAE posterior noise (``vae_noise``) and the per-step noise
(``step_noise``: a list or a function ``(step_index, shape) -> tensor``; for the prior and for schedulers
whose ``step`` takes ``variance_noise``). Seeds: ``seed`` (a CPU generator) or ``generator``.
Per-step ``callback(StepInfo)``: return ``False`` to interrupt (raises :class:`PCDMsInterrupted`) or raise
anything (ComfyUI's interrupt exception passes through). Encoders run once per call; conditioning, the
doubled CFG batch and the UNet input buffer are built once before the loop.

Pose gradient guidance (RePoseDM eq 15/16): ``pose_guidance`` (a :class:`~..repose.guidance.PoseGuidance`, or
any object with its call signature ``(latents, t, eps, alpha_bar, decode, target=None) -> eps``) on the stage-2,
simplified and stage-3 samplers; None (default) leaves every operation, hence every result, unchanged. See
:func:`_pose_guided` for the choices (target half only, alpha_bar, eq 15 vs 16 under CFG, decode, target pose).

Image sizes: ``layout="pad"`` (default; aspect-preserving, crop-back to the target pose image's size) or
``"squash"`` (official) -- see :mod:`.image_layout`. Images are (B, H, W, 3) float 0..1 (ComfyUI's IMAGE).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from diffusers import DDIMScheduler, UnCLIPScheduler

from .denoising import (PCDMsInterrupted, StepInfo, _as_images, _broadcast, _fresh, _generator, _initial_latents,
                        _model_place, _noise_at, _notify, _randn, _resolve_rescale, _UNetDenoiser, clean_estimate,
                        flatten_pose, rescale_noise_cfg)
from .encoders import images_to_pixels, null_pixels
from .image_layout import FrameLayout, from_frame, to_frame
from .models import side_by_side_mask
from .schedulers import (PRIOR_SCHEDULER_CONFIG, PRIOR_SCHEDULER_NAMES, SCHEDULER_NAMES, SD21_BASE_SCHEDULER_CONFIG,
                         SIMPLIFIED_DDIM_CONFIG, make_prior_scheduler, make_scheduler)

__all__ = [
    "SD21_BASE_SCHEDULER_CONFIG",
    "PRIOR_SCHEDULER_CONFIG",
    "SIMPLIFIED_DDIM_CONFIG",
    "SCHEDULER_NAMES",
    "PRIOR_SCHEDULER_NAMES",
    "make_scheduler",
    "make_prior_scheduler",
    "rescale_noise_cfg",
    "clean_estimate",
    "flatten_pose",
    "StepInfo",
    "PCDMsInterrupted",
    "PriorOutput",
    "ImageOutput",
    "ChainOutput",
    "PreparedInputs",
    "PriorPipeline",
    "InpaintPipeline",
    "RefinePipeline",
    "SimplifiedPipeline",
    "run_pcdms",
]

@dataclass
class PriorOutput:
    embeddings: torch.Tensor  # (n, D): predicted target CLIP image embeddings (post-processed)
    latents: torch.Tensor  # (n, D): the sampled normalised embeddings


@dataclass
class ImageOutput:
    images: torch.Tensor  # (n, H, W, 3) 0..1: the generated target at the target's size (crop-back)
    frames: torch.Tensor  # (n, S, S, 3) 0..1: the generated target in the frame
    canvas: torch.Tensor  # (n, S, W_canvas, 3) 0..1: the whole decoded canvas
    latents: torch.Tensor  # (n, 4, h, w): final latents (scaled)
    layout: FrameLayout | None = None  # the target's layout
    extras: dict = field(default_factory=dict)


@dataclass
class PreparedInputs:
    """The stage-2 / simplified inputs laid out once per call (:meth:`InpaintPipeline.prepare`), reusable across
    sampling calls (e.g. DINOv2 features shared with stage 3)."""

    source_frame: torch.Tensor  # (B, S, S, 3) 0..1: the source image in the frame (what the encoders see)
    vae_canvas: torch.Tensor  # (B, 3, S, 2S) in [-1, 1]: [source | black], VAE-encoded as the masked image
    pose_canvas: torch.Tensor  # (B, 3, S, 2S) in [-1, 1]: [source pose | target pose], the pose encoder's input
    target_layout: FrameLayout  # how the target pose image was put in the frame (for the crop back)


@dataclass
class ChainOutput:
    images: torch.Tensor  # final (refined, or coarse without a refine model) images, target size
    coarse: ImageOutput
    refined: ImageOutput | None
    target_embedding: torch.Tensor
    prior: PriorOutput | None


# ------------------------------------------------------------------------------------------ stage 1
class PriorPipeline:
    """Stage 1: predict the target's CLIP image embedding from the source's and the two poses."""

    stage = "prior"

    def __init__(self, prior, image_encoder=None, scheduler="unclip", size: int = 512, layout: str = "pad"):
        self.prior = prior
        self.image_encoder = image_encoder  # CLIP (ImageEncoder), optional
        self.scheduler = make_prior_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.size = size
        self.layout = layout

    def encode_source(self, source_image, layout: str | None = None) -> torch.Tensor:
        """CLIP image embedding of the source image laid out in the frame (official: squashed to 512)."""
        if self.image_encoder is None:
            raise ValueError("PriorPipeline: give source_embedding or build the pipeline with a CLIP image_encoder")
        frame, _ = to_frame(_as_images(source_image, "source_image"), size=self.size, mode=layout or self.layout)
        return self.image_encoder.encode(frame)

    def null_source_embedding(self, batch: int = 1) -> torch.Tensor | None:
        """The training's dropped source condition: CLIP of all-zero preprocessed pixels (None without CLIP)."""
        if self.image_encoder is None:
            return None
        return self.image_encoder.encode_pixels(null_pixels(self.image_encoder, batch))

    @torch.no_grad()
    def __call__(self, source_pose, target_pose, source_embedding=None, source_image=None, *, num_samples: int = 1,
                 steps: int = 20, guidance_scale: float = 0.0, generator=None, seed=None, latents=None,
                 step_noise=None, negative_source_embedding=None, official_rng: bool = False, callback=None,
                 layout: str | None = None) -> PriorOutput:
        device, dtype = _model_place(self.prior)
        generator = _generator(generator, seed)
        if source_embedding is None:
            if source_image is None:
                raise ValueError("PriorPipeline: give source_embedding or source_image")
            source_embedding = self.encode_source(source_image, layout)
        emb = torch.as_tensor(source_embedding)
        emb = emb[:, 0] if emb.ndim == 3 else (emb[None] if emb.ndim == 1 else emb)
        emb, sp, tp = _broadcast(emb, flatten_pose(source_pose), flatten_pose(target_pose))
        b, d = emb.shape
        n = b * num_samples
        rep = lambda x: x.repeat_interleave(num_samples, 0).to(device=device, dtype=dtype)  # noqa: E731
        emb, sp, tp = rep(emb), rep(sp), rep(tp)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            neg = negative_source_embedding
            if neg is None:
                neg = self.null_source_embedding(1)
            neg = torch.zeros(1, d) if neg is None else torch.as_tensor(neg).reshape(-1, d)
            neg = neg.to(device=device, dtype=dtype).expand(n, d)
            emb = torch.cat([neg, emb])
            sp = torch.cat([torch.zeros_like(sp), sp])
            tp = torch.cat([torch.zeros_like(tp), tp])

        scheduler = _fresh(self.scheduler)
        unclip = isinstance(scheduler, UnCLIPScheduler)
        if steps < (2 if unclip else 1):  # the unCLIP scheduler divides by steps - 1
            raise ValueError(f"steps: expected at least {2 if unclip else 1} for the prior's "
                             f"{type(scheduler).__name__}, got {steps}")
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        latents = _initial_latents(latents, (n, d), generator, device, dtype, scheduler)
        step_generator = None if official_rng else generator
        for i, t in enumerate(timesteps):
            x_in = torch.cat([latents, latents]) if do_cfg else latents
            pred = self.prior(x_in, t, emb, sp, tp).predicted_image_embedding
            if do_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            if unclip:
                noise = None
                if t > 0:
                    if step_noise is not None:
                        noise = _noise_at(step_noise, i, pred.shape, pred.device, pred.dtype)
                    else:
                        noise = _randn(pred.shape, step_generator, pred.device, pred.dtype)
                latents = _unclip_step(scheduler, pred, t, latents, prev_t, noise)
            else:
                kw = {}
                if step_noise is None and "generator" in inspect.signature(scheduler.step).parameters:
                    kw["generator"] = step_generator
                if step_noise is not None:
                    kw["variance_noise"] = _noise_at(step_noise, i, latents.shape, device, dtype)
                latents = scheduler.step(pred, t, latents, **kw, return_dict=False)[0]
            _notify(callback, self.stage, i, len(timesteps), t, latents)
        return PriorOutput(embeddings=self.prior.post_process_latents(latents), latents=latents)


def _unclip_step(s: UnCLIPScheduler, model_output, t, sample, prev_timestep, noise):
    """``UnCLIPScheduler.step`` (fixed_small_log) with the variance noise given instead of drawn; the same
    operations in the same order as diffusers, so the result is bit-identical for the same noise."""
    if s.config.variance_type != "fixed_small_log":
        raise ValueError("PriorPipeline supports UnCLIPScheduler with variance_type='fixed_small_log' only")
    if prev_timestep is None:
        prev_timestep = t - 1
    alpha_prod_t = s.alphas_cumprod[t]
    alpha_prod_t_prev = s.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else s.one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    if prev_timestep == t - 1:
        beta = s.betas[t]
        alpha = s.alphas[t]
    else:
        beta = 1 - alpha_prod_t / alpha_prod_t_prev
        alpha = 1 - beta
    if s.config.prediction_type == "epsilon":
        x0 = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    else:
        x0 = model_output
    if s.config.clip_sample:
        x0 = torch.clamp(x0, -s.config.clip_sample_range, s.config.clip_sample_range)
    x0_coeff = (alpha_prod_t_prev ** (0.5) * beta) / beta_prod_t
    xt_coeff = alpha ** (0.5) * beta_prod_t_prev / beta_prod_t
    prev = x0_coeff * x0 + xt_coeff * sample
    if t > 0:
        std = s._get_variance(t, prev_timestep=prev_timestep)
        prev = prev + std * noise
    return prev


# ------------------------------------------------------------------------------------------ stage 2
class _SideBySidePipeline(_UNetDenoiser):
    """Stage 2 and the simplified model: [source | target] canvas."""

    default_scheduler = "uni_pc_bh2"
    default_steps = 20

    def __init__(self, model, vae, image_encoder=None, scheduler=None, size: int = 512, layout: str = "pad"):
        self.model = model
        self.vae = vae  # LatentCodec
        self.image_encoder = image_encoder  # DINOv2 (ImageEncoder), optional
        scheduler = self.default_scheduler if scheduler is None else scheduler
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.size = size
        self.layout = layout

    def prepare(self, source_image, source_pose_image, target_pose_image, layout: str | None = None
                ) -> PreparedInputs:
        """The frames and canvases of one call (:class:`PreparedInputs`)."""
        mode = layout or self.layout
        source_frame, _ = self._frame(source_image, mode, "edge", "source_image")
        spose, _ = self._frame(source_pose_image, mode, "black", "source_pose_image")
        tpose, t_layout = self._frame(target_pose_image, mode, "black", "target_pose_image")
        source_frame, spose, tpose = _broadcast(source_frame, spose, tpose)
        black = torch.zeros_like(source_frame)
        return PreparedInputs(source_frame=source_frame,
                              vae_canvas=images_to_pixels(torch.cat([source_frame, black], dim=2)),
                              pose_canvas=images_to_pixels(torch.cat([spose, tpose], dim=2)),
                              target_layout=t_layout)

    def _sample(self, *, vae_canvas, pose_canvas, context, class_labels, negative_context, num_samples, steps,
                guidance_scale, guidance_rescale, generator, latents, vae_noise, step_noise, callback, eta,
                official_rng, pose_guidance=None, guidance_decode=None):
        device, dtype = _model_place(self.model)
        self._check_size()
        b = vae_canvas.shape[0]
        n = b * num_samples
        rep = lambda x: x.repeat_interleave(num_samples, 0) if num_samples > 1 else x  # noqa: E731
        # conditioning, once
        pose = rep(self.model.encode_pose(pose_canvas.to(device=device, dtype=dtype)))
        context = rep(context.to(device=device, dtype=dtype))
        negative_context = rep(negative_context.to(device=device, dtype=dtype).expand_as(context[:b]))
        if class_labels is not None:
            class_labels = rep(class_labels.to(device=device, dtype=dtype))
        # random draws: VAE posterior sample first, then the initial latents
        vae_gen = None if official_rng else generator
        masked = self.vae.encode(vae_canvas, generator=vae_gen, noise=vae_noise).to(device=device, dtype=dtype)
        h, w = masked.shape[-2:]
        scheduler = _fresh(self.scheduler)
        scheduler.set_timesteps(steps, device=device)
        latents = _initial_latents(latents, (n, self.vae.latent_channels, h, w), generator, device, dtype, scheduler)
        mask = side_by_side_mask(1, h, w, dtype=dtype, device=device)
        extra = torch.cat([mask.expand(n, -1, -1, -1), rep(masked)], dim=1)

        do_cfg = guidance_scale > 1.0
        if do_cfg:
            ctx2 = torch.cat([negative_context, context])
            pose2 = torch.cat([pose, pose])
            cls2 = None if class_labels is None else torch.cat([torch.zeros_like(class_labels), class_labels])
        else:
            ctx2, pose2, cls2 = context, pose, class_labels
        model = self.model

        def model_call(x, t):
            kw = {} if cls2 is None else {"class_labels": cls2}
            return model(x, t, encoder_hidden_states=ctx2, pose_features=pose2, return_dict=False, **kw)[0]

        guide = {}
        if pose_guidance is not None:  # target = the target pose half of the pose canvas, in 0..1
            tpose = pose_canvas[..., pose_canvas.shape[-1] // 2:]
            guide = dict(pose_guidance=pose_guidance, guidance_decode=guidance_decode, guide_col0=w // 2,
                         guidance_target=rep((tpose / 2 + 0.5).clamp(0, 1).to(device=device, dtype=dtype)))
        latents = self._denoise(model_call=model_call, scheduler=scheduler, latents=latents, extra_cond=extra,
                                extra_uncond=extra, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                                generator=generator, step_noise=step_noise, callback=callback, eta=eta, **guide)
        return latents

    def _finish(self, latents, target_layout):
        canvas, frames = self._decode(latents, 2)
        images = from_frame(frames, target_layout) if target_layout is not None else frames
        return ImageOutput(images=images, frames=frames, canvas=canvas, latents=latents, layout=target_layout)


class InpaintPipeline(_SideBySidePipeline):
    """Stage 2: the coarse target from the source image, both poses and the target's global embedding."""

    stage = "inpaint"

    @torch.no_grad()
    def sample_prepared(self, prepared: PreparedInputs, target_embedding, image_features=None, *, num_samples: int = 1,
                        steps: int = 20, guidance_scale: float = 2.0, guidance_rescale: float = 0.0, generator=None,
                        seed=None, latents=None, vae_noise=None, step_noise=None, callback=None, eta: float = 0.0,
                        decode: bool = True, pose_guidance=None, guidance_decode=None):
        """Sample from :meth:`prepare`'s output (lets a caller reuse DINOv2 features across stages).

        ``pose_guidance``: optional RePoseDM PoseGuidance on the target half (None = unchanged); without a target
        of its own it compares with the target pose image. ``guidance_decode``: a differentiable latents ->
        [-1, 1] image (needed unless the codec is a :class:`DiffusersVAE`)."""
        generator = _generator(generator, seed)
        feats = self._features(image_features, prepared.source_frame)
        device, dtype = _model_place(self.model)
        g = torch.as_tensor(target_embedding)
        g = g[:, 0] if g.ndim == 3 else (g[None] if g.ndim == 1 else g)
        feats, g, vae_canvas, pose_canvas = _broadcast(feats, g, prepared.vae_canvas, prepared.pose_canvas)
        tokens = self.model.project_image_features(feats.to(device=device, dtype=dtype))
        context = self.model.build_context(tokens, g.to(device=device, dtype=dtype))
        latents = self._sample(vae_canvas=vae_canvas, pose_canvas=pose_canvas, context=context, class_labels=g,
                               negative_context=torch.zeros_like(context[:1]), num_samples=num_samples, steps=steps,
                               guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generator,
                               latents=latents, vae_noise=vae_noise, step_noise=step_noise, callback=callback,
                               eta=eta, official_rng=False, pose_guidance=pose_guidance,
                               guidance_decode=guidance_decode)
        return self._finish(latents, prepared.target_layout) if decode else latents

    def __call__(self, source_image, source_pose_image, target_pose_image, target_embedding, *, image_features=None,
                 layout: str | None = None, pose_guidance=None, **kwargs) -> ImageOutput:
        """source_image (B, H, W, 3); source_pose_image (rendered in the source image's frame);
        target_pose_image (its size is the output size); target_embedding (B, D): the prior's output or the
        target's CLIP embedding. Keyword arguments as :meth:`sample_prepared`. Batch-1 inputs broadcast."""
        prepared = self.prepare(source_image, source_pose_image, target_pose_image, layout)
        return self.sample_prepared(prepared, target_embedding, image_features, pose_guidance=pose_guidance,
                                    **kwargs)


class SimplifiedPipeline(_SideBySidePipeline):
    """The single-stage release: no prior, no class label; negative context = projection of zero features."""

    stage = "simplified"
    default_scheduler = "ddim"

    def __init__(self, model, vae, image_encoder=None, scheduler=None, size: int = 512, layout: str = "pad"):
        if scheduler is None:
            scheduler = DDIMScheduler(**SIMPLIFIED_DDIM_CONFIG)
        super().__init__(model, vae, image_encoder, scheduler, size, layout)

    @torch.no_grad()
    def sample_prepared(self, prepared: PreparedInputs, image_features=None, *, num_samples: int = 1, steps: int = 50,
                        guidance_scale: float = 2.0, guidance_rescale: float = 0.0, generator=None, seed=None,
                        latents=None, vae_noise=None, step_noise=None, callback=None, eta: float = 0.0,
                        official_rng: bool = False, decode: bool = True, pose_guidance=None, guidance_decode=None):
        """As :meth:`InpaintPipeline.sample_prepared` (``pose_guidance`` / ``guidance_decode`` included)."""
        generator = _generator(generator, seed)
        feats = self._features(image_features, prepared.source_frame)
        device, dtype = _model_place(self.model)
        feats, vae_canvas, pose_canvas = _broadcast(feats, prepared.vae_canvas, prepared.pose_canvas)
        feats = feats.to(device=device, dtype=dtype)
        context = self.model.project_image_features(feats)
        negative = self.model.project_image_features(torch.zeros_like(feats[:1]))
        latents = self._sample(vae_canvas=vae_canvas, pose_canvas=pose_canvas, context=context, class_labels=None,
                               negative_context=negative, num_samples=num_samples, steps=steps,
                               guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generator,
                               latents=latents, vae_noise=vae_noise, step_noise=step_noise, callback=callback,
                               eta=eta, official_rng=official_rng, pose_guidance=pose_guidance,
                               guidance_decode=guidance_decode)
        return self._finish(latents, prepared.target_layout) if decode else latents

    def __call__(self, source_image, source_pose_image, target_pose_image, *, image_features=None,
                 layout: str | None = None, pose_guidance=None, **kwargs) -> ImageOutput:
        prepared = self.prepare(source_image, source_pose_image, target_pose_image, layout)
        return self.sample_prepared(prepared, image_features, pose_guidance=pose_guidance, **kwargs)


# ------------------------------------------------------------------------------------------ stage 3
class RefinePipeline(_UNetDenoiser):
    """Stage 3: refine a coarse target image with the source's DINOv2 tokens."""

    stage = "refine"

    def __init__(self, model, vae, image_encoder=None, scheduler="uni_pc_bh2", size: int = 512, layout: str = "pad"):
        self.model = model
        self.vae = vae
        self.image_encoder = image_encoder
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.size = size
        self.layout = layout

    @torch.no_grad()
    def sample_frames(self, coarse_frames, source_frame=None, image_features=None, *, num_samples: int = 1,
                      steps: int = 20, guidance_scale: float = 2.0, guidance_rescale="official", generator=None,
                      seed=None, latents=None, vae_noise=None, step_noise=None, callback=None, eta: float = 0.0,
                      target_layout: FrameLayout | None = None, decode: bool = True, pose_guidance=None,
                      guidance_decode=None):
        """coarse_frames (B, S, S, 3) 0..1 already in the frame (e.g. stage 2's ``frames``).

        ``pose_guidance``: optional RePoseDM PoseGuidance on the whole latent (None = unchanged). Without a target
        of its own it compares with the coarse image (refinement should keep the coarse image's pose); give the
        guidance a target (``set_target`` / the factory's ``make(target_image=...)``) to steer to another pose.
        ``guidance_decode`` as :meth:`InpaintPipeline.sample_prepared`."""
        generator = _generator(generator, seed)
        device, dtype = _model_place(self.model)
        self._check_size()
        feats = self._features(image_features, source_frame)
        coarse_frames = _as_images(coarse_frames, "coarse_frames")
        feats, coarse_frames = _broadcast(feats, coarse_frames)
        b = coarse_frames.shape[0]
        n = b * num_samples
        rep = lambda x: x.repeat_interleave(num_samples, 0) if num_samples > 1 else x  # noqa: E731
        context = rep(self.model.project_image_features(feats.to(device=device, dtype=dtype)))
        # random draws: VAE posterior sample of the coarse image first, then the initial latents
        coarse = self.vae.encode(images_to_pixels(coarse_frames), generator=generator, noise=vae_noise)
        coarse = rep(coarse.to(device=device, dtype=dtype))
        h, w = coarse.shape[-2:]
        scheduler = _fresh(self.scheduler)
        scheduler.set_timesteps(steps, device=device)
        latents = _initial_latents(latents, (n, self.vae.latent_channels, h, w), generator, device, dtype, scheduler)
        do_cfg = guidance_scale > 1.0
        ctx2 = torch.cat([torch.zeros_like(context), context]) if do_cfg else context
        model = self.model

        def model_call(x, t):
            return model(x, t, encoder_hidden_states=ctx2, return_dict=False)[0]

        latents = self._denoise(model_call=model_call, scheduler=scheduler, latents=latents, extra_cond=coarse,
                                extra_uncond=torch.zeros_like(coarse), guidance_scale=guidance_scale,
                                guidance_rescale=_resolve_rescale(guidance_rescale, guidance_scale),
                                generator=generator, step_noise=step_noise, callback=callback, eta=eta,
                                **({} if pose_guidance is None else dict(
                                    pose_guidance=pose_guidance, guidance_decode=guidance_decode,
                                    guidance_target=rep(coarse_frames.permute(0, 3, 1, 2).to(device=device,
                                                                                             dtype=dtype)))))
        if not decode:
            return latents
        canvas, frames = self._decode(latents, 1)
        images = from_frame(frames, target_layout) if target_layout is not None else frames
        return ImageOutput(images=images, frames=frames, canvas=canvas, latents=latents, layout=target_layout)

    def __call__(self, coarse_image, source_image, *, image_features=None, layout: str | None = None,
                 pose_guidance=None, **kwargs) -> ImageOutput:
        """coarse_image (B, H, W, 3) at the target's size (stage 2's ``images``); source_image (B, H', W', 3).
        Output at the coarse image's size. Keyword arguments as :meth:`sample_frames`."""
        mode = layout or self.layout
        coarse_frames, t_layout = self._frame(coarse_image, mode, "edge", "coarse_image")
        source_frame = None
        if image_features is None:
            source_frame, _ = self._frame(source_image, mode, "edge", "source_image")
        return self.sample_frames(coarse_frames, source_frame, image_features, target_layout=t_layout,
                                  pose_guidance=pose_guidance, **kwargs)


# ------------------------------------------------------------------------------------------ the chain
def run_pcdms(source_image, source_pose_image, target_pose_image, source_pose=None, target_pose=None, *,
              inpaint: InpaintPipeline, prior: PriorPipeline | None = None, refine: RefinePipeline | None = None,
              clip_encoder=None, dino_encoder=None, target_embedding=None, image_features=None,
              num_samples: int = 1, seed: int | None = 42, generator_device="cpu",
              steps: Sequence[int] = (20, 20, 20), guidance_scale: Sequence[float] = (0.0, 2.0, 2.0),
              guidance_rescale="official", layout: str | None = None, quantize_coarse: bool = True,
              callback: Callable | None = None, on_stage_done: Callable[[str], None] | None = None,
              official_rng: bool = False, make_pose_guidance: Callable[[], Any] | None = None,
              guidance_decode=None) -> ChainOutput:
    """Prior -> inpaint -> refine, as the three official scripts run one after the other.

    Each stage gets its own generator seeded with ``seed`` (the official scripts each seed 42). Encoders run
    once: CLIP on the source frame (prior), DINOv2 on the source frame (shared by stages 2 and 3). Without a
    prior, ``target_embedding`` (e.g. the real target's CLIP embedding, the official "train_*" path) is used.
    ``num_samples`` samples per input in stage 2; each is refined once. Stage 3 receives stage 2's frames
    quantised to 8 bits (``quantize_coarse``; the official stage 2 saves a PNG that stage 3 reads).
    ``on_stage_done(stage)`` is called after each stage (e.g. to offload that stage's model). ``official_rng``: the
    prior's per-step noise from torch's global RNG, as the official stage 1 (see :class:`PriorPipeline`).
    ``make_pose_guidance``: makes a fresh RePoseDM pose guidance for stage 2 and one for stage 3 (None: none);
    ``guidance_decode`` as :meth:`InpaintPipeline.sample_prepared`.
    """

    def guide():
        if make_pose_guidance is None:
            return {}
        return {"pose_guidance": make_pose_guidance(), "guidance_decode": guidance_decode}

    mode = layout or inpaint.layout

    def gen():
        return None if seed is None else torch.Generator(generator_device).manual_seed(int(seed))

    prepared = inpaint.prepare(source_image, source_pose_image, target_pose_image, mode)
    prior_out = None
    if target_embedding is None:
        if prior is None:
            raise ValueError("run_pcdms: give a prior pipeline or target_embedding")
        if source_pose is None or target_pose is None:
            raise ValueError("run_pcdms: the prior needs source_pose and target_pose coordinates")
        encoder = clip_encoder or prior.image_encoder
        if encoder is None:
            raise ValueError("run_pcdms: the prior needs a CLIP image encoder")
        source_embedding = encoder.encode(prepared.source_frame)
        neg = encoder.encode_pixels(null_pixels(encoder)) if guidance_scale[0] > 1 else None
        prior_out = prior(source_pose, target_pose, source_embedding, steps=steps[0],
                          guidance_scale=guidance_scale[0], generator=gen(), negative_source_embedding=neg,
                          official_rng=official_rng, callback=callback)
        target_embedding = prior_out.embeddings
        if on_stage_done:
            on_stage_done("prior")
    if image_features is None:
        encoder = dino_encoder or inpaint.image_encoder
        if encoder is None:
            raise ValueError("run_pcdms: give a DINOv2 image encoder or image_features")
        image_features = encoder.encode(prepared.source_frame)
    coarse = inpaint.sample_prepared(prepared, target_embedding, image_features, num_samples=num_samples,
                                     steps=steps[1], guidance_scale=guidance_scale[1], generator=gen(),
                                     callback=callback, **guide())
    if on_stage_done:
        on_stage_done("inpaint")
    refined = None
    if refine is not None:
        frames = coarse.frames
        if quantize_coarse:
            frames = (frames * 255).round().clamp(0, 255) / 255
        feats = torch.as_tensor(image_features)
        if num_samples > 1:
            feats = _broadcast(feats, prepared.source_frame)[0].repeat_interleave(num_samples, 0)
        refined = refine.sample_frames(frames, None, feats, steps=steps[2], guidance_scale=guidance_scale[2],
                                       guidance_rescale=guidance_rescale, generator=gen(), callback=callback,
                                       target_layout=coarse.layout, **guide())
        if on_stage_done:
            on_stage_done("refine")
    images = refined.images if refined is not None else coarse.images
    return ChainOutput(images=images, coarse=coarse, refined=refined, target_embedding=target_embedding,
                       prior=prior_out)
