"""Input checks the nodes share. Each raises a ValueError that names the input, says what was expected and
what came, before any model runs (the project rule: never a silent wrong image, never a crash deep in torch)."""

from __future__ import annotations

import math

import torch

from ..core.images import tensor_to_images
from ..core.pose.formats import load_pose_keypoint

IMAGE_NOTE = " RGBA: the alpha channel is dropped; a 1-channel image is used as grey."


def image(tensor, what: str) -> torch.Tensor:
    """A ComfyUI IMAGE checked (a float tensor [B, H, W, C], C in 1 / 3 / 4, finite, in 0..1) -> [B, H, W, 3]."""
    return torch.from_numpy(tensor_to_images(tensor, what))


def poses(data, what: str, person: bool = False) -> list:
    """A POSE_KEYPOINT input (one frame or a list) -> a non-empty list of Pose (pixels); ValueError naming ``what``
    when it is empty or malformed (canvas beyond the size limit, joints far off the canvas:
    :func:`..core.pose.formats.load_pose_keypoint`). With ``person``, every frame must hold a first person
    (:func:`with_person`)."""
    frames = load_pose_keypoint(data, what=what)
    if not frames:
        raise ValueError(f"{what}: expected at least one frame, got an empty list")
    return with_person(frames, what) if person else frames


def with_person(poses: list, what: str, index: int = 0, index_name: str | None = None) -> list:
    """``poses`` unchanged; ValueError naming ``what[i]`` when a frame has no person ``index``."""
    for i, pose in enumerate(poses):
        pose.person(index, f"{what}[{i}]" + (f" ({index_name})" if index_name else ""))
    return poses


def int_in(value, what: str, lo: int, hi: int | None = None, multiple: int = 1) -> int:
    """``value`` as an int in lo..hi (a multiple of ``multiple``), else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or value < lo or (hi is not None and value > hi) or int(value) % multiple:
        span = f"from {lo}" + (f" to {hi}" if hi is not None else "")
        kind = "an integer" if multiple == 1 else f"a multiple of {multiple}"
        raise ValueError(f"{what}: expected {kind} {span}, got {value!r}")
    return int(value)


def float_in(value, what: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in lo..hi, else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{what}: expected a number from {lo} to {hi}, got {value!r}")
    return float(value)


def one_or(n: int, what: str, expected: int, per: str) -> None:
    """ValueError unless ``n`` (the count of ``what``) is 1 or ``expected`` (one per ``per``)."""
    if n not in (1, expected):
        raise ValueError(f"{what}: expected 1 or one per {per} ({expected}), got {n}")


__all__ = ["IMAGE_NOTE", "image", "poses", "with_person", "int_in", "float_in", "one_or"]
