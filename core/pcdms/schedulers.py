"""PCDMs' noise schedules and the schedulers the official scripts build on them (``../shared/reference/pcdms/
README.md``). The UNet stages take any name of the shared vocabulary (:mod:`...schedulers`: ComfyUI's sampler names,
the same for RePose); the prior has its own two (it predicts CLIP embeddings, not latents)."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, UnCLIPScheduler

from ..schedulers import SCHEDULER_NAMES
from ..schedulers import make_scheduler as _make_shared_scheduler

__all__ = ["SD21_BASE_SCHEDULER_CONFIG", "PRIOR_SCHEDULER_CONFIG", "SIMPLIFIED_DDIM_CONFIG", "SCHEDULER_NAMES",
           "PRIOR_SCHEDULER_NAMES", "DEFAULT_SCHEDULERS", "make_scheduler", "make_prior_scheduler"]

# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json (PNDM); stages 2 and 3 build UniPC
# from it with from_config, as the official scripts do.
SD21_BASE_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# The Kandinsky-2.2 prior's UnCLIPScheduler (README: assumed from the public configuration).
PRIOR_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "variance_type": "fixed_small_log",
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "prediction_type": "sample",
    "beta_schedule": "squaredcos_cap_v2",
}
# The simplified demo's DDIMScheduler(...) call.
SIMPLIFIED_DDIM_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

PRIOR_SCHEDULER_NAMES = ("unclip", "ddim")
# What "default" means per stage: what the official scripts ran.
DEFAULT_SCHEDULERS = {"inpaint": "uni_pc_bh2", "refine": "uni_pc_bh2", "simplified": "ddim"}
# diffusers 0.24 (the official environment) ended UniPC on the last sigma; newer releases default to zero
_UNIPC_AS_OFFICIAL = {"final_sigmas_type": "sigma_min"}


def make_scheduler(name: str = "uni_pc_bh2", config: dict | None = None):
    """A UNet-stage scheduler on the SD-2.1-base schedule (or ``config``), by the shared vocabulary:
    ``uni_pc_bh2`` (official stages 2/3: order 2, x0-predicting, linspace spacing, ``final_sigmas_type="sigma_min"``
    as diffusers 0.24), ``uni_pc`` (bh1), ``ddim`` (leading spacing, steps_offset 1: the simplified demo's DDIM),
    ``dpmpp_2m``, ``euler``, ``ddpm``; the older names ``unipc`` / ``dpmsolver++`` as aliases."""
    return _make_shared_scheduler(name, config or SD21_BASE_SCHEDULER_CONFIG,
                                  {"uni_pc": _UNIPC_AS_OFFICIAL, "uni_pc_bh2": _UNIPC_AS_OFFICIAL})


def make_prior_scheduler(name: str = "unclip"):
    """The prior's scheduler: ``"unclip"`` (official) or ``"ddim"`` (same cosine schedule, x0 prediction,
    clipping at +-10, trailing spacing so the first step is t = 999)."""
    key = str(name).lower()
    if key == "unclip":
        return UnCLIPScheduler(**PRIOR_SCHEDULER_CONFIG)
    if key == "ddim":
        return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                             clip_sample=True, clip_sample_range=10.0, set_alpha_to_one=True,
                             timestep_spacing="trailing")
    raise ValueError(f"unknown prior scheduler {name!r}; expected one of {', '.join(PRIOR_SCHEDULER_NAMES)}")
