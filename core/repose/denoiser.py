"""RePoseDM's appearance-conditioned latent denoiser and its training step (section 3.1, eq 1-4; supplement 8).

* :class:`RePoseDenoiser` (ModelMixin/ConfigMixin): diffusers' stock :class:`UNet2DConditionModel` whose input is
  the noisy latent concatenated with the target-pose latent (``2C`` channels) and which cross-attends to the
  aligned source features ``F_S^N`` of :class:`~.pose_align.PoseAlign`. Its output has ``2C`` channels: the noise
  ``eps_theta`` and the variance interpolation ``v`` of improved DDPM (learned variance, ``learn_sigma=True``).
  Classifier-free guidance: ``drop_condition`` replaces the pose latent by a learned null latent and the context by
  a learned null token (``P, I_S = empty`` of section 3.4).
* :func:`repose_noise_scheduler`: diffusers' :class:`DDPMScheduler` with T = 1000, the linear schedule
  (1e-4 .. 0.02, DDPM's), ``variance_type="learned_range"``, no clipping (latents are not bounded).
* :func:`hybrid_loss`: eq 4, ``L_mse + L_vlb`` as improved DDPM's hybrid objective: ``L_mse`` on ``eps``,
  ``L_vlb`` the KL between the true posterior ``q(y_{t-1} | y_t, y_0)`` and ``p_theta`` whose mean uses a
  stop-gradient ``eps`` (so ``L_vlb`` trains only the variance), weighted by improved DDPM's ``lambda = 0.001``
  (eq 4 itself writes no weight).
* :func:`training_loss` (eq 4 on one batch, no backward: what the accelerate script accumulates),
  :func:`training_step` (loss + backward + clip + step + EMA in plain torch), :func:`draw_training_noise`,
  :class:`RePoseTrainConfig`, :func:`make_optimizer` (AdamW 1e-4), :func:`make_ema` (diffusers' :class:`EMAModel`,
  decay 0.9999).

Choices where the paper is vague (configurable):

* UNet size: not given; :data:`PAPER_UNET_CONFIG` uses SD-1.x widths (320/640/1280/1280, 2 layers per block,
  cross-attention width 768, 8 heads) on the SD VAE's 4-channel latents (512 x 352 -> 64 x 44).
* Context: ``F_S^N`` is a 4-channel latent; it is turned into tokens by conv3x3 -> SiLU -> conv3x3 to the
  cross-attention width plus a fixed 2-D sin-cos position embedding (so the UNet knows where each token lies).
* Null condition: learned, zero-initialised (pose latent and one context token repeated).
* ``L_vlb`` per sample is the per-timestep term in bits per dimension (improved DDPM's ``_vb_terms_bpd``); the
  total is ``L_mse + lambda * T * L_t``, which for lambda = 0.001 and T = 1000 equals improved DDPM's
  ``mse + vb``. At ``t = 0`` the decoder term is a continuous Gaussian NLL (latents are not 8-bit pixels, so the
  discretised likelihood does not apply).
* ``p = 0.1`` drops the condition per sample; eq 15 at training time (``pose_guidance=...``) adds
  ``sqrt(1 - a_t) grad G`` (no gradient to the weights through it, taken at the conditional Tweedie estimate,
  zero for the dropped samples) to the predicted noise of eq 3, as eq 3 / eq 17 write it. Consequence: training
  ``eps_theta + o`` towards ``eps`` trains ``eps_theta`` towards ``eps - o``, so a model trained with pose guidance
  expects the same guidance (same ``eta``) at sampling; sampled without it, its prediction is offset by ``-o``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers import DDPMScheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import BaseOutput

__all__ = [
    "RePoseDenoiser", "RePoseDenoiserOutput", "PAPER_UNET_CONFIG", "TINY_UNET_CONFIG", "repose_noise_scheduler",
    "hybrid_loss", "RePoseTrainConfig", "make_optimizer", "make_ema", "training_step", "training_loss",
    "draw_training_noise", "sincos_position_embedding",
]

PAPER_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    block_out_channels=[16, 32],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=8,
)


def sincos_position_embedding(dim: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``(H * W, dim)`` in row-major token order (diffusers' 1-D/2-D helpers)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    emb = get_2d_sincos_pos_embed_from_grid(dim, torch.stack([ys.flatten(), xs.flatten()]), output_type="pt")
    return emb.to(device=device, dtype=dtype)


@dataclass
class RePoseDenoiserOutput(BaseOutput):
    """``sample``: the UNet output (B, 2C, h, w) with learned variance (eps, v), else (B, C, h, w)."""

    sample: torch.Tensor


class RePoseDenoiser(ModelMixin, ConfigMixin):
    """``eps_theta(y_t, t, P, I_S)`` (section 3.1): UNet on ``[y_t, F_T]`` cross-attending to ``F_S^N``.

    Config: ``unet_config`` (a partial UNet2DConditionModel config; ``in_channels`` / ``out_channels`` are set from
    ``latent_channels`` and ``learn_sigma``; defaults :data:`PAPER_UNET_CONFIG`), ``latent_channels`` (4),
    ``learn_sigma`` (True: eq 4's learned variance), ``context_channels`` (width of the aligned features, default
    ``latent_channels``).

    ``forward(sample, timestep, pose_latents, aligned_features, drop_condition=None)``: ``sample`` y_t (B, C, h, w),
    ``pose_latents`` F_T (B, C, h, w), ``aligned_features`` F_S^N (B, Cc, h', w'), ``drop_condition`` (B,) bool
    (True = null condition, classifier-free).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict | None = None, latent_channels: int = 4, learn_sigma: bool = True,
                 context_channels: int | None = None):
        super().__init__()
        cfg = dict(PAPER_UNET_CONFIG if unet_config is None else unet_config)
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}
        cfg["in_channels"] = 2 * latent_channels
        cfg["out_channels"] = latent_channels * (2 if learn_sigma else 1)
        self.register_to_config(unet_config=cfg)
        self.unet = UNet2DConditionModel(**cfg)
        width = self.unet.config.cross_attention_dim
        if isinstance(width, (list, tuple)):
            width = width[0]
        if width % 4:
            raise ValueError(f"cross_attention_dim must be a multiple of 4 (2-D sin-cos), got {width}")
        cc = context_channels or latent_channels
        self.context_proj = nn.Sequential(nn.Conv2d(cc, width, 3, padding=1), nn.SiLU(),
                                          nn.Conv2d(width, width, 3, padding=1))
        self.null_context = nn.Parameter(torch.zeros(1, 1, width))
        self.null_pose = nn.Parameter(torch.zeros(1, latent_channels, 1, 1))

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode_context(self, aligned_features: torch.Tensor) -> torch.Tensor:
        """``F_S^N`` (B, Cc, h, w) -> cross-attention tokens (B, h*w, width)."""
        x = self.context_proj(aligned_features)
        b, c, h, w = x.shape
        return x.flatten(2).transpose(1, 2) + sincos_position_embedding(c, h, w, x.device, x.dtype)[None]

    def forward(self, sample: torch.Tensor, timestep, pose_latents: torch.Tensor, aligned_features: torch.Tensor,
                drop_condition: torch.Tensor | None = None, return_dict: bool = True):
        b = sample.shape[0]
        pose = pose_latents.to(sample.dtype)
        if pose.shape[0] != b:
            pose = pose.expand(b, *pose.shape[1:])
        context = self.encode_context(aligned_features.to(sample.dtype))
        if context.shape[0] != b:
            context = context.expand(b, *context.shape[1:])
        if drop_condition is not None:
            drop = torch.as_tensor(drop_condition, device=sample.device).bool().reshape(-1)
            if drop.numel() == 1:
                drop = drop.expand(b)
            pose = torch.where(drop[:, None, None, None], self.null_pose.to(pose.dtype).expand_as(pose), pose)
            context = torch.where(drop[:, None, None], self.null_context.to(context.dtype).expand_as(context),
                                  context)
        out = self.unet(torch.cat([sample, pose], 1), timestep, encoder_hidden_states=context).sample
        return RePoseDenoiserOutput(sample=out) if return_dict else (out,)


# ---------------------------------------------------------------------------------------------- diffusion

def repose_noise_scheduler(num_train_timesteps: int = 1000, **overrides) -> DDPMScheduler:
    """T = 1000, linear betas 1e-4 .. 0.02, learned-range variance, eps prediction, no clipping."""
    cfg = dict(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
               variance_type="learned_range", clip_sample=False, prediction_type="epsilon")
    cfg.update(overrides)
    return DDPMScheduler(**cfg)


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def hybrid_loss(model_output: torch.Tensor, noise: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor,
                timesteps: torch.Tensor, scheduler: DDPMScheduler, vlb_weight: float = 0.001,
                eps_offset: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Eq 3-4 with improved DDPM's learned variance. Returns ``loss``, ``mse``, ``vlb`` (per-batch means).

    ``model_output`` (B, 2C, ...) = (eps, v); ``v`` in [-1, 1] interpolates ``log beta_t`` and the clipped log
    posterior variance. ``eps_offset`` (no gradient) is added to the predicted eps in ``L_mse`` (eq 15 at training
    time). With ``C`` output channels only, ``vlb`` is 0 and the loss is ``L_mse``.
    """
    c = noise.shape[1]
    eps = model_output[:, :c]
    eps_for_mse = eps if eps_offset is None else eps + eps_offset.detach()
    mse = (noise - eps_for_mse).pow(2).flatten(1).mean(1)                       # eq 3
    if model_output.shape[1] == c:
        zero = mse.new_zeros(())
        return {"loss": mse.mean(), "mse": mse.mean(), "vlb": zero}
    v = model_output[:, c:]
    betas = scheduler.betas.double()
    abar = scheduler.alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))          # clipped at t = 0
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    t = timesteps.long()
    x = noisy
    # True posterior q(y_{t-1} | y_t, y_0).
    true_mean = _extract(coef_x0, t, x) * clean + _extract(coef_xt, t, x) * x
    true_logvar = _extract(post_logvar, t, x)
    # Model p(y_{t-1} | y_t): mean from the frozen eps, variance learned.
    frac = (v + 1) / 2
    model_logvar = frac * _extract(torch.log(betas), t, x) + (1 - frac) * true_logvar
    x0_pred = (x - _extract((1 - abar).sqrt(), t, x) * eps.detach()) / _extract(abar.sqrt(), t, x)
    model_mean = _extract(coef_x0, t, x) * x0_pred + _extract(coef_xt, t, x) * x
    kl = _normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = 0.5 * (math.log(2 * math.pi) + model_logvar + (clean - model_mean) ** 2 * torch.exp(-model_logvar))
    nll = nll.flatten(1).mean(1) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)                                            # L_t in bits / dim
    vlb = vb * (vlb_weight * scheduler.config.num_train_timesteps)
    return {"loss": (mse + vlb).mean(), "mse": mse.mean(), "vlb": vb.mean()}   # eq 4


# ------------------------------------------------------------------------------------------------ training

@dataclass
class RePoseTrainConfig:
    """Supplement section 8: AdamW 1e-4, p = 10% null condition, T = 1000 linear, EMA 0.9999; eq 4 lambda."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    cond_drop_prob: float = 0.1
    vlb_weight: float = 0.001
    ema_decay: float = 0.9999
    max_grad_norm: float | None = 1.0
    extra: dict = field(default_factory=dict)


def _parameters(modules: Iterable[nn.Module | None]) -> list[nn.Parameter]:
    seen, params = set(), []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def make_optimizer(modules: Iterable[nn.Module | None], config: RePoseTrainConfig | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules`` (denoiser, PoseAlign)."""
    cfg = config or RePoseTrainConfig()
    return torch.optim.AdamW(_parameters(modules), lr=cfg.learning_rate, betas=cfg.betas,
                             weight_decay=cfg.weight_decay)


def make_ema(modules: Iterable[nn.Module | None], decay: float = 0.9999) -> EMAModel:
    """diffusers' :class:`EMAModel` over the trainable parameters of ``modules`` (``ema.step(params)`` after each
    optimiser step, ``ema.copy_to(params)`` for evaluation; no warm-up beyond diffusers' default)."""
    return EMAModel(_parameters(modules), decay=decay)


def draw_training_noise(batch_size: int, latent_shape, scheduler: DDPMScheduler, cond_drop_prob: float,
                        generator: torch.Generator | None = None, dtype=torch.float32, device=None, *,
                        timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                        drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one training batch: ``timesteps`` (B,), ``noise`` (``latent_shape``), ``drop`` (B,)
    bool, drawn on the CPU from ``generator`` in that order; the ones given are kept and not drawn. A script can
    draw them for a whole optimisation step and slice them per micro-batch, so gradient accumulation sees the
    draws of the unsplit batch."""
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    if noise is None:
        noise = torch.randn(tuple(latent_shape), generator=generator, dtype=dtype)
    if drop is None:
        drop = torch.rand(batch_size, generator=generator) < cond_drop_prob
    return timesteps.to(device), noise.to(device), drop.to(device)


def training_loss(
    denoiser: RePoseDenoiser,
    batch: dict[str, torch.Tensor],
    *,
    scheduler: DDPMScheduler,
    pose_align: nn.Module | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    config: RePoseTrainConfig | None = None,
    generator: torch.Generator | None = None,
    pose_guidance=None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    drop: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eq 4 on one batch, as tensors (``loss`` carries the gradient; ``mse``, ``vlb`` for logging); no backward.

    ``batch``: ``target_latents`` y_0 (B, C, h, w), ``pose_latents`` F_T (B, C, h, w), and either
    ``source_image`` (B, 3, H, W, the range ``encode`` expects; needs ``pose_align`` and ``encode``) or
    ``aligned_features`` F_S^N. Optional ``target_pose_image`` (0..1) for ``pose_guidance`` (eq 15 at training time;
    needs ``decode``). ``timesteps`` / ``noise`` / ``drop`` override the random draws (evaluation, or draws made
    for a whole accumulated step by :func:`draw_training_noise`); the missing ones come from ``generator``.
    """
    cfg = config or RePoseTrainConfig()
    y0 = batch["target_latents"]
    b = y0.shape[0]
    device = y0.device
    timesteps, noise, drop = draw_training_noise(b, y0.shape, scheduler, cfg.cond_drop_prob, generator, y0.dtype,
                                                 device, timesteps=timesteps, noise=noise, drop=drop)
    y_t = scheduler.add_noise(y0, noise, timesteps)                                   # eq 1 closed form
    if "aligned_features" in batch:
        aligned = batch["aligned_features"]
    else:
        if pose_align is None or encode is None:
            raise ValueError("training_loss: give batch['aligned_features'] or pose_align and encode")
        aligned = pose_align(batch["source_image"], batch["pose_latents"], encode).features
    out = denoiser(y_t, timesteps, batch["pose_latents"], aligned, drop_condition=drop).sample
    offset = None
    if pose_guidance is not None:
        if decode is None:
            raise ValueError("training_loss: pose_guidance needs decode")
        c = y0.shape[1]
        abar = scheduler.alphas_cumprod.to(device)[timesteps]
        grad = pose_guidance.gradient(y_t, timesteps, out[:, :c], abar, decode, batch.get("target_pose_image"))
        offset = pose_guidance.scale * (1 - abar).sqrt().reshape(-1, 1, 1, 1).to(grad.dtype) * grad   # eq 15
        offset = torch.where(drop[:, None, None, None], torch.zeros_like(offset), offset)
    return hybrid_loss(out, noise, y_t, y0, timesteps, scheduler, cfg.vlb_weight, offset)


def training_step(
    denoiser: RePoseDenoiser,
    batch: dict[str, torch.Tensor],
    *,
    scheduler: DDPMScheduler,
    optimizer: torch.optim.Optimizer | None = None,
    pose_align: nn.Module | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ema: EMAModel | None = None,
    config: RePoseTrainConfig | None = None,
    generator: torch.Generator | None = None,
    pose_guidance=None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    drop: torch.Tensor | None = None,
) -> dict[str, float]:
    """One plain-torch optimisation step of eq 4 (or only the loss, without ``optimizer``): :func:`training_loss`,
    backward, clipping to ``config.max_grad_norm``, the optimiser step and ``ema.step``. The accelerate script
    (training/train_repose.py) calls :func:`training_loss` and drives these itself (accumulation, mixed precision).
    Arguments as :func:`training_loss`; returns floats: ``loss``, ``mse``, ``vlb``.
    """
    cfg = config or RePoseTrainConfig()
    losses = training_loss(denoiser, batch, scheduler=scheduler, pose_align=pose_align, encode=encode, config=cfg,
                           generator=generator, pose_guidance=pose_guidance, decode=decode, timesteps=timesteps,
                           noise=noise, drop=drop)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.step(params)
    return {k: float(v.detach()) for k, v in losses.items()}
