"""Checks on the poses a method is given, shared by the Pose-level entries (PCDMs, RePose) and their callers: the
source pose on its photo's canvas, the target poses on one canvas, one source frame per source image."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import fit_source_pose
from .keypoints import Pose

__all__ = ["place_pose", "pose_frames", "source_poses_for", "target_poses_on_one_canvas"]



def pose_frames(poses, what: str, person: int = 0) -> list[Pose]:
    """``poses`` (a Pose or a sequence of them) as a non-empty list whose every frame has person ``person``."""
    frames = [poses] if isinstance(poses, Pose) else list(poses)
    if not frames:
        raise ValueError(f"{what}: expected at least one frame, got an empty list")
    for i, p in enumerate(frames):
        if not isinstance(p, Pose):
            raise ValueError(f"{what}[{i}]: expected a Pose, got {type(p).__name__}")
        p.person(person, f"{what}[{i}]")
    return frames


def source_poses_for(images_hw: tuple[int, int], n_images: int, source_poses: Sequence[Pose], n_targets: int,
                     what: str = "source_pose", images_what: str = "source_image") -> list[Pose]:
    """One source frame per source image (1 image, or one per target frame), each fitted to the image canvas."""
    if n_images not in (1, n_targets):
        raise ValueError(f"{images_what}: expected 1 or one per target_pose frame ({n_targets}), got {n_images}")
    if len(source_poses) != n_images:
        raise ValueError(f"{what}: expected one frame per {images_what} ({n_images}), got {len(source_poses)}")
    h, w = images_hw
    return [fit_source_pose(p, w, h, f"{what}[{i}]") for i, p in enumerate(source_poses)]  # the one canvas rule


def target_poses_on_one_canvas(poses: Sequence[Pose], what: str = "target_pose") -> list[Pose]:
    """``poses`` unchanged when they share one canvas (the outputs are stacked into one batch), else a ValueError."""
    for i, p in enumerate(poses[1:], 1):
        if (p.width, p.height) != (poses[0].width, poses[0].height):
            raise ValueError(f"{what}[{i}]: canvas {p.width}x{p.height} differs from {what}[0]'s "
                             f"{poses[0].width}x{poses[0].height}; the outputs are stacked into one batch and need "
                             f"one size: bring the target poses to one canvas")
    return list(poses)


def place_pose(pose: Pose, size_hw: tuple[int, int]) -> Pose:
    """``pose`` on an image of ``size_hw``: its canvas scaled uniformly to fit and centred (the same aspect ratio:
    a plain scale; DeepFashion's 256x176 annotation frame in its 256x256 images padded with 40 px a side: x + 40)."""
    h, w = size_hw
    if (pose.height, pose.width) == (h, w):
        return pose
    s = min(w / pose.width, h / pose.height)
    offset = np.array([(w - pose.width * s) / 2, (h - pose.height * s) / 2])
    return pose.map_points(lambda xy: xy * s + offset, width=w, height=h)
