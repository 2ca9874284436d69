"""PCDMs' training objectives (paper Eq. 3, 6, 8; the official training scripts), beside RePose's in
:mod:`..repose.denoiser`: the noise schedules the stages train with, the random draws of a batch (timesteps and
offset noise) and the loss of each stage. ``training/train_pcdms.py`` runs them (data, dropout, accelerate).

Batches are the stage's prepared conditions (``training/train_pcdms.py``'s ``prepare``): ``x0`` (the target:
normalised CLIP embedding for the prior, scaled latents otherwise) and

* prior: ``source_embedding`` (B, D), ``source_pose`` / ``target_pose`` (B, 36);
* inpaint: ``masked_latents`` ([source | black]), ``pose_image`` ([source pose | target pose] in [-1, 1]),
  ``image_features`` (DINOv2 tokens), ``global_embedding`` (the target's CLIP embedding);
* simplified: as inpaint without ``global_embedding``;
* refine: ``cond_latents`` (the coarse image's latents), ``image_features``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import inpaint_unet_input, side_by_side_mask

__all__ = ["unet_noise_scheduler", "prior_noise_scheduler", "training_noise_scheduler", "draw_training_noise",
           "training_loss"]


def unet_noise_scheduler():
    """The SD-2.1-base training scheduler: DDPM, 1000 steps, scaled_linear 0.00085-0.012, epsilon."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def prior_noise_scheduler():
    """The prior's: DDPM squaredcos_cap_v2, prediction_type sample, 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                         clip_sample=False)


def training_noise_scheduler(stage: str):
    """The noise schedule ``stage`` trains with."""
    return prior_noise_scheduler() if stage == "prior" else unet_noise_scheduler()


def draw_training_noise(x0: torch.Tensor, scheduler, generator: torch.Generator | None, noise_offset: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training timesteps (B,) and noise shaped like ``x0``, drawn on the CPU from ``generator`` in that order. With
    ``noise_offset`` (official: 0.1) a per-sample (and per-channel, for latents) constant is added to the noise."""
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    if noise_offset:
        shape = (b, x0.shape[1]) + (1,) * (x0.ndim - 2) if x0.ndim > 2 else (b,) + (1,) * (x0.ndim - 1)
        noise = noise + noise_offset * torch.randn(shape, generator=generator)
    return t.to(x0.device), noise.to(x0.device)


def training_loss(stage: str, model, batch: dict, timesteps: torch.Tensor, noise: torch.Tensor, scheduler
                  ) -> torch.Tensor:
    """The MSE of ``stage``: the prior predicts the clean embedding (x0), the UNet stages the noise (epsilon)."""
    x0 = batch["x0"]
    noisy = scheduler.add_noise(x0, noise, timesteps)
    if stage == "prior":
        pred = model(noisy, timesteps, batch["source_embedding"], batch["source_pose"],
                     batch["target_pose"]).predicted_image_embedding
        return F.mse_loss(pred.float(), x0.float())
    if stage == "refine":  # Eq. 8
        cond = model.encode_conditions(batch["image_features"])
        pred = model(torch.cat([noisy, batch["cond_latents"]], 1), timesteps, **cond).sample
        return F.mse_loss(pred.float(), noise.float())
    b, _, h, w = x0.shape  # Eq. 6: inpaint / simplified on the [source | target] canvas
    mask = side_by_side_mask(b, h, w, dtype=x0.dtype, device=x0.device)
    sample = inpaint_unet_input(noisy, mask, batch["masked_latents"])
    if stage == "inpaint":
        cond = model.encode_conditions(batch["image_features"], batch["global_embedding"], batch["pose_image"])
    else:
        cond = model.encode_conditions(batch["image_features"], batch["pose_image"])
    pred = model(sample, timesteps, **cond).sample
    return F.mse_loss(pred.float(), noise.float())
