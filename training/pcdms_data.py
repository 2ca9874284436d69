"""PCDMs training examples from the PCDMs layout (pairs JSON + images + 18-line pose txt files) or the GFLA/PIDM
layout (annotation CSV + pairs CSV + images; :class:`.datasets.GFLAPairs`).

Each example: ``source_image`` / ``target_image`` (3, H, W) in 0..1, ``source_pose_image`` /
``target_pose_image`` (the OpenPose skeleton rendered by :func:`..core.pose.render.render_skeleton` on the frame, 0..1)
and ``source_pose`` / ``target_pose`` (36,) the prior's pose vectors (:func:`..core.pose.formats.pcdms_pose_vector`:
x / width, y / height, -1 for a missing joint). Images are squashed to the square frame as PCDMs does (512x512).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.images import load_image
from ..core.pose.keypoints import Pose
from .datasets import InputSpec

__all__ = ["PCDMsInputSpec", "PCDMsJsonPairs", "pose_txt_path"]


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.clip(a, 0, 1), dtype=np.float32)).permute(2, 0, 1)[:3].contiguous()


class PCDMsInputSpec(InputSpec):
    """The frame fitting of :class:`.datasets.InputSpec` with PCDMs' example fields (module doc)."""

    def example(self, source_image, source_pose, target_image, target_pose):
        from ..core.pose.formats import pcdms_pose_vector
        from ..core.pose.render import render_skeleton

        out = {"source_image": _chw(source_image), "target_image": _chw(target_image)}
        for prefix, pose in (("source", source_pose), ("target", target_pose)):
            if pose.people:
                out[f"{prefix}_pose_image"] = _chw(render_skeleton(pose).astype(np.float32) / 255.0)
                out[f"{prefix}_pose"] = torch.from_numpy(pcdms_pose_vector(pose))
            else:
                out[f"{prefix}_pose_image"] = torch.zeros(3, *self.size)
                out[f"{prefix}_pose"] = torch.full((36,), -1.0)
        return out


def pose_txt_path(pose_dir: str, name: str) -> str:
    """The PCDMs pose file of image ``name``: the same relative name with ``.txt``."""
    return os.path.join(pose_dir, os.path.splitext(name)[0] + ".txt")


class PCDMsJsonPairs(Dataset):
    """The PCDMs layout: ``pairs`` JSON list of ``{"source_image", "target_image"}`` (names relative to
    ``image_dir``), one 18-line ``x y`` pose text file per image in ``pose_dir`` (default ``image_dir``), named
    like the image with ``.txt``, normalised by the image's size."""

    def __init__(self, pairs_json: str, image_dir: str, spec: InputSpec, pose_dir: str | None = None):
        from ..core.evaluation.datasets import read_pairs_json

        self.spec = spec
        self.pairs = read_pairs_json(pairs_json)
        if not self.pairs:
            raise ValueError(f"{pairs_json}: expected at least one pair, got none")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"--images: no such folder: {image_dir}")
        self.image_dir, self.pose_dir = image_dir, pose_dir if pose_dir is not None else image_dir
        names = sorted({n for p in self.pairs for n in p})
        absent = [n for n in names if not os.path.isfile(os.path.join(self.image_dir, n))]
        if absent:
            raise FileNotFoundError(f"{self.image_dir}: {len(absent)} image(s) of {pairs_json} are missing, "
                                    f"e.g. {absent[:3]}")
        no_pose = [n for n in names if not os.path.isfile(pose_txt_path(self.pose_dir, n))]
        if no_pose:
            raise FileNotFoundError(f"{self.pose_dir}: {len(no_pose)} pose txt file(s) are missing, e.g. "
                                    f"{[pose_txt_path(self.pose_dir, n) for n in no_pose[:3]]}")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, name: str) -> tuple[np.ndarray, Pose]:
        from ..core.pose.formats import read_pcdms_pose_txt

        image = load_image(os.path.join(self.image_dir, name))
        h, w = image.shape[:2]
        pose = read_pcdms_pose_txt(pose_txt_path(self.pose_dir, name), width=w, height=h)
        return self.spec.fit_image(image), self.spec.fit_pose(pose)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        src, tgt = self.pairs[index]
        (si, sp), (ti, tp) = self._load(src), self._load(tgt)
        return self.spec.example(si, sp, ti, tp)
