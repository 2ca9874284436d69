"""One sampler vocabulary for the diffusion methods (PCDMs, RePoseDM): ComfyUI's sampler names, each mapped to a
diffusers scheduler built on a method's own training noise schedule.

===============  ===========================================================================================
``ddpm``         ancestral DDPM (``DDPMScheduler``; a config with ``variance_type="learned_range"`` -- RePose --
                 keeps it, so the model's learned variance is used)
``ddim``         ``DDIMScheduler`` (eta 0 unless the caller passes one)
``dpmpp_2m``     ``DPMSolverMultistepScheduler``, algorithm dpmsolver++, order 2 (ComfyUI's dpmpp_2m)
``euler``        ``EulerDiscreteScheduler``
``uni_pc``       ``UniPCMultistepScheduler`` with solver_type bh1 (ComfyUI's uni_pc)
``uni_pc_bh2``   ``UniPCMultistepScheduler`` with solver_type bh2 (diffusers' default, ComfyUI's uni_pc_bh2; what
                 the official PCDMs scripts run)
===============  ===========================================================================================

Older names stay accepted (:data:`SCHEDULER_ALIASES`: ``unipc`` = diffusers' default UniPC, i.e. ``uni_pc_bh2``;
``dpmsolver++`` = ``dpmpp_2m``), so a script or a saved setting written before the vocabulary was shared still
selects the same scheduler. ``default`` is a method's own choice (:func:`resolve_scheduler_name`).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["SCHEDULER_NAMES", "SCHEDULER_ALIASES", "SCHEDULER_CHOICES", "FORMER_SCHEDULER_NAMES",
           "canonical_scheduler_name", "resolve_scheduler_name", "make_scheduler"]

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmpp_2m", "euler", "uni_pc", "uni_pc_bh2")
SCHEDULER_ALIASES = {"unipc": "uni_pc_bh2", "dpmsolver++": "dpmpp_2m", "dpm++": "dpmpp_2m", "dpmsolver": "dpmpp_2m",
                     "dpmpp": "dpmpp_2m", "dpm++_2m": "dpmpp_2m"}
# what a node / the command line offers: the method's own default first
SCHEDULER_CHOICES = ("default",) + SCHEDULER_NAMES
# The names the PCDMs / RePose samplers offered before the shared vocabulary (each an alias above): saved settings
# hold them -- ComfyUI checks a saved workflow's widget values against the node's list -- so the nodes still offer
# them, after SCHEDULER_CHOICES.
FORMER_SCHEDULER_NAMES = ("unipc", "dpmsolver++")


def canonical_scheduler_name(name: str) -> str:
    """A name of :data:`SCHEDULER_NAMES` (aliases mapped); ValueError naming the choices otherwise."""
    key = str(name).strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULER_NAMES:
        raise ValueError(f"scheduler: expected one of {', '.join(SCHEDULER_CHOICES)}, got {name!r}")
    return key


def resolve_scheduler_name(name: str | None, default: str) -> str:
    """``name`` as a canonical name; ``None`` or ``"default"`` give ``default`` (the method's own)."""
    if name is None or str(name).strip().lower() == "default":
        return canonical_scheduler_name(default)
    return canonical_scheduler_name(name)


def make_scheduler(name: str, config: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """The scheduler ``name`` (vocabulary above) on the noise schedule of ``config`` (a diffusers scheduler config:
    betas, train steps, prediction type, ...). ``overrides`` maps canonical names to extra keyword arguments for
    that scheduler (e.g. PCDMs' ``final_sigmas_type="sigma_min"`` for UniPC, as diffusers 0.24 ran it).

    ``variance_type`` is kept for ``ddpm`` only: the other samplers have no learned-variance path."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    key = canonical_scheduler_name(name)
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    extra = dict((overrides or {}).get(key, {}))
    if key == "ddpm":
        return DDPMScheduler.from_config(cfg, **extra)
    cfg.pop("variance_type", None)
    if key == "ddim":
        return DDIMScheduler.from_config(cfg, **extra)
    if key == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(cfg, **{"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                               **extra})
    if key == "euler":
        return EulerDiscreteScheduler.from_config(cfg, **extra)
    return UniPCMultistepScheduler.from_config(cfg, **{"solver_type": "bh1" if key == "uni_pc" else "bh2", **extra})
