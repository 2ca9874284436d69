"""Training logic of the single-spatial-transformation model (section 3.1, eq 8, appendix B) as plain torch
functions; the training script (on accelerate) builds the models, data and loop around :func:`train_step`.

Tasks (section 3.1.1, steps 5-7), alternated step by step (``task_for_step``: even steps task 1, odd task 2):

* Task 1, affine: a random upright affine map A is drawn, the made-up source pose ``p_st`` is the real target
  pose ``p_t`` sampled through A, and the flow net's ``W(p_st, p_t)`` at the correlation resolution is pulled
  towards the inverse flow ``s_f`` (eq 7). Loss ``lambda2 * L_aff`` (its term of eq 8); only W is updated.
  Both tasks step one Adam optimiser (one state, as a single optimiser of eq 8 would), so ``lambda2`` really sets
  how far task 1 moves W compared with task 2: with the paper's 0.001 the affine term is a weak regulariser.
* Task 2, reconstruction: ``W(p_s, p_t)`` warps the source, the refiner R makes ``y_o`` and the generator loss
  ``L_per + lambda1 * L_g`` (eq 5, eq 6) updates W and R; then D is updated on ``y_o`` (detached) and ``I_t``.

Schedules: ``"alternate"`` (default): constant learning rates, generative loss on from the start.
``"two_phase"`` (appendix B): for ``phase1_steps`` steps no generative loss (and no D updates) and lr
``phase1_lr`` (1e-6) everywhere; then the refiner's decoder at ``phase2_decoder_lr`` (1e-4) and the rest of the
generator (W and R's encoder) at ``phase2_lr`` (1e-8), with the generative loss. The paper counts phases in
epochs (about 100 of 300); the caller converts epochs to steps. The paper names no optimiser, betas or D learning
rate: Adam, betas (0.5, 0.999), D at ``discriminator_lr`` are our choices.

Batches are dicts of tensors: ``source_image``, ``target_image`` ``(B, 3, H, W)`` in 0..1 and ``source_pose``,
``target_pose`` ``(B, 18, H, W)`` Gaussian heatmaps (:func:`.single_transform.pose_to_heatmaps`), ``H = W`` the
flow net's ``sample_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .losses import (SINGLE_LAMBDA1, SINGLE_LAMBDA2, AffineRange, MultiScalePerceptualLoss,
                     PoseConditionedDiscriminator, adversarial_discriminator_loss, adversarial_generator_loss,
                     affine_preserving_loss, make_affine_task, random_upright_affine)
from .single_transform import SingleTransformFlowNet, SingleTransformRefiner

__all__ = ["SingleTrainConfig", "SingleTransformModels", "SingleTransformOptimizers", "make_optimizers",
           "task_for_step", "phase_for_step", "apply_schedule", "affine_task_loss", "reconstruction_losses",
           "train_step"]

SCHEDULES = ("alternate", "two_phase")


@dataclass
class SingleTrainConfig:
    lambda1: float = SINGLE_LAMBDA1          # generative loss weight (eq 8)
    lambda2: float = SINGLE_LAMBDA2          # affine-preserving loss weight (eq 8)
    lr: float = 1e-4                         # "alternate" schedule, generator
    discriminator_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gan_mode: str = "paper"                  # see losses.adversarial_generator_loss
    schedule: str = "alternate"
    phase1_steps: int = 0                    # "two_phase": steps of phase 1
    phase1_lr: float = 1e-6
    phase2_decoder_lr: float = 1e-4
    phase2_lr: float = 1e-8
    affine: AffineRange = field(default_factory=AffineRange)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "two_phase" and self.phase1_steps <= 0:
            raise ValueError("phase1_steps: the two-phase schedule needs a positive number of phase-1 steps")


@dataclass
class SingleTransformModels:
    flow_net: SingleTransformFlowNet
    refiner: SingleTransformRefiner
    discriminator: PoseConditionedDiscriminator

    def train(self, mode: bool = True) -> "SingleTransformModels":
        for m in (self.flow_net, self.refiner, self.discriminator):
            m.train(mode)
        return self


@dataclass
class SingleTransformOptimizers:
    generator: torch.optim.Optimizer       # param groups "flow_net", "refiner_encoder", "refiner_decoder"
    discriminator: torch.optim.Optimizer


def make_optimizers(models: SingleTransformModels, config: SingleTrainConfig) -> SingleTransformOptimizers:
    """Adam for W + R (one param group per part, so the two-phase schedule can set each) and for D."""
    groups = [
        {"name": "flow_net", "params": list(models.flow_net.parameters())},
        {"name": "refiner_encoder", "params": list(models.refiner.encoder.parameters())},
        {"name": "refiner_decoder", "params": list(models.refiner.decoder.parameters())},
    ]
    gen = torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
    dis = torch.optim.Adam(models.discriminator.parameters(), lr=config.discriminator_lr, betas=config.betas)
    return SingleTransformOptimizers(gen, dis)


def task_for_step(step: int) -> int:
    """1 (affine) on even steps, 2 (reconstruction) on odd ones."""
    return 1 if step % 2 == 0 else 2


def phase_for_step(step: int, config: SingleTrainConfig) -> int:
    """1 or 2 under the two-phase schedule; always 2 (generative loss on) under "alternate"."""
    return 1 if config.schedule == "two_phase" and step < config.phase1_steps else 2


def apply_schedule(optimizers: SingleTransformOptimizers, step: int, config: SingleTrainConfig) -> int:
    """Set the learning rates for ``step``; returns the phase."""
    phase = phase_for_step(step, config)
    if config.schedule == "two_phase":
        for g in optimizers.generator.param_groups:
            if phase == 1:
                g["lr"] = config.phase1_lr
            else:
                g["lr"] = config.phase2_decoder_lr if g.get("name") == "refiner_decoder" else config.phase2_lr
    return phase


def affine_task_loss(flow_net: SingleTransformFlowNet, target_pose: torch.Tensor, config: SingleTrainConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Task 1: ``L_aff`` (eq 7) of ``W(p_st, p_t)`` against ``s_f``, compared on the correlation grid."""
    matrices = random_upright_affine(target_pose.shape[0], tuple(target_pose.shape[-2:]), config.affine, generator)
    p_st, s_f = make_affine_task(target_pose, matrices)
    out = flow_net(p_st, target_pose)
    return affine_preserving_loss(out.flow_lowres, s_f)


def reconstruction_losses(models: SingleTransformModels, perceptual: MultiScalePerceptualLoss,
                          batch: Mapping[str, torch.Tensor], config: SingleTrainConfig, use_gan: bool = True
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Task 2 generator loss ``L_per + lambda1 L_g`` (eq 8 without the affine term); returns
    ``(loss, terms, y_o)``."""
    out = models.flow_net(batch["source_pose"], batch["target_pose"])
    y_o = models.refiner(batch["source_image"], out.flow)
    terms = {"perceptual": perceptual(y_o, batch["target_image"])}                       # eq 5
    loss = terms["perceptual"]
    if use_gan:
        terms["generative"] = adversarial_generator_loss(models.discriminator, y_o, batch["target_pose"],
                                                         config.gan_mode)              # eq 6
        loss = loss + config.lambda1 * terms["generative"]
    return loss, terms, y_o


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def train_step(models: SingleTransformModels, optimizers: SingleTransformOptimizers,
               perceptual: MultiScalePerceptualLoss, batch: Mapping[str, torch.Tensor], step: int,
               config: SingleTrainConfig, backward: Callable[[torch.Tensor], None] = _default_backward,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimisation step of the alternating scheme; ``step`` counts from 0. ``backward`` is e.g.
    ``accelerator.backward``. Returns the logged numbers (``task``, ``phase``, ``loss`` and its terms)."""
    phase = apply_schedule(optimizers, step, config)
    task = task_for_step(step)
    log: dict[str, float] = {"task": float(task), "phase": float(phase)}
    if task == 1:
        optimizers.generator.zero_grad(set_to_none=True)
        l_aff = affine_task_loss(models.flow_net, batch["target_pose"], config, generator)
        loss = config.lambda2 * l_aff                                                        # eq 8, affine term
        backward(loss)
        optimizers.generator.step()                 # only W has gradients; Adam skips R's parameters
        log.update(loss=loss.item(), affine=l_aff.item())
        return log
    use_gan = phase == 2
    models.discriminator.requires_grad_(False)
    try:
        optimizers.generator.zero_grad(set_to_none=True)
        loss, terms, y_o = reconstruction_losses(models, perceptual, batch, config, use_gan)
        backward(loss)
        optimizers.generator.step()
    finally:
        models.discriminator.requires_grad_(True)
    log.update(loss=loss.item(), **{k: v.item() for k, v in terms.items()})
    if use_gan:
        optimizers.discriminator.zero_grad(set_to_none=True)
        d_loss = adversarial_discriminator_loss(models.discriminator, y_o, batch["target_image"],
                                                batch["target_pose"], config.gan_mode)
        backward(d_loss)
        optimizers.discriminator.step()
        log["discriminator"] = d_loss.item()
    return log
