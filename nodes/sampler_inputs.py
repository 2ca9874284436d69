"""The widgets the diffusion sampler nodes (the PCDMs stages, RePose Sampler) share: the seed and the scheduler.

The scheduler list is the shared vocabulary (:mod:`..core.schedulers`: ComfyUI's sampler names) followed by the
former names (:data:`~..core.schedulers.FORMER_SCHEDULER_NAMES`). ComfyUI validates a saved workflow's COMBO values
against the node's list, so without them a workflow saved with ``unipc`` or ``dpmsolver++`` would no longer run; the
core maps them to the same schedulers (:data:`~..core.schedulers.SCHEDULER_ALIASES`).
"""

from __future__ import annotations

from ..core.schedulers import FORMER_SCHEDULER_NAMES, SCHEDULER_ALIASES, SCHEDULER_CHOICES, canonical_scheduler_name

__all__ = ["MAX_SEED", "SCHEDULER_WIDGET_CHOICES", "seed_input", "scheduler_input", "scheduler_name"]

MAX_SEED = 0xFFFFFFFFFFFFFFFF
SCHEDULER_WIDGET_CHOICES = SCHEDULER_CHOICES + FORMER_SCHEDULER_NAMES
_FORMER_NOTE = (" Last in the list, the former names " +
                ", ".join(f"{name} (= {SCHEDULER_ALIASES[name]})" for name in FORMER_SCHEDULER_NAMES) +
                ": aliases kept so that saved workflows still load.")


def seed_input() -> tuple:
    return ("INT", {"default": 42, "min": 0, "max": MAX_SEED,
                    "tooltip": "Random seed (a CPU generator: the same seed gives the same result anywhere)."})


def scheduler_input(default: str, tooltip: str) -> tuple:
    """The scheduler COMBO: ``tooltip`` (what ``default`` and the names mean for this node) + the aliases' note."""
    return (list(SCHEDULER_WIDGET_CHOICES), {"default": default, "tooltip": tooltip + _FORMER_NOTE})


def scheduler_name(value) -> str:
    """The widget value checked (a direct call or an API prompt can bypass the list), unchanged: the core resolves
    ``default`` and the aliases. ValueError naming the choices otherwise."""
    if value != "default":
        canonical_scheduler_name(value)
    return value
