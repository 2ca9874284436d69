"""``posetransfer generate``: one generated image per pair of a dataset pairs file, named as ``evaluate`` pairs them.

Layouts: a GFLA / PIDM pairs CSV (``from,to``) with the annotation CSV (``name:keypoints_y:keypoints_x``), or a
PCDMs pairs JSON (``[{"source_image", "target_image"}]``) with a folder of PCDMs pose text files (one ``NAME.txt``
per image). Keypoints are in the annotation frame (``annotation_size`` H x W; default: each image's own size) and
are placed on the image centred with a uniform scale, as ``evaluate`` places them (DeepFashion's 256 x 176
annotations on its 256 x 256 padded images: x + 40).

Output: ``OUT/S_to_T.png`` per pair (S, T: the image names without folder and extension), or with ``samples`` N > 1
``OUT/sample_00/S_to_T.png`` ... ``OUT/sample_{N-1}/S_to_T.png`` (``evaluate --best-of N`` reads that layout). Each
pair is generated with the same seed whatever ran before, so a run is resumable: pairs whose files all exist are
skipped, and a resumed run writes what an uninterrupted one would. Files are written under a temporary name and
renamed, so an interrupted write leaves no partial image that would be skipped.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .pose.keypoints import Pose
from .pose.inputs import place_pose

__all__ = ["DatasetPoses", "GenerateReport", "read_pairs", "output_name", "sample_dirs", "generate"]


def read_pairs(path: str) -> list[tuple[str, str]]:
    """A pairs CSV (GFLA / PIDM) or a pairs JSON (PCDMs), by extension."""
    from .evaluation.datasets import read_pairs_json
    from .pose.formats import read_pairs_csv

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pairs: no such file: {path}")
    pairs = read_pairs_json(path) if path.lower().endswith(".json") else read_pairs_csv(path)
    if not pairs:
        raise ValueError(f"--pairs: {path}: no pairs")
    return pairs


def output_name(source: str, target: str) -> str:
    """The generated image's file name for a pair: ``S_to_T.png`` (the first name ``evaluate`` looks for)."""
    from .evaluation.evaluate import pred_stem_candidates

    return pred_stem_candidates(source, target)[0] + ".png"


def sample_dirs(out_dir: str, samples: int) -> list[str]:
    """Where each sample goes: ``out_dir`` itself for one sample, else ``out_dir/sample_00`` ..."""
    if samples == 1:
        return [out_dir]
    return [os.path.join(out_dir, f"sample_{k:02d}") for k in range(samples)]


class DatasetPoses:
    """Poses by image name, from a GFLA annotation CSV or a folder of PCDMs pose text files, placed on the image."""

    def __init__(self, annotations: str | None = None, poses_dir: str | None = None,
                 annotation_size: tuple[int, int] | None = None):
        from .pose.formats import read_gfla_annotations

        if (annotations is None) == (poses_dir is None):
            raise ValueError("--annotations / --poses: give one of them (the GFLA annotation CSV, or the folder of "
                             "PCDMs pose .txt files)")
        self.annotation_size = annotation_size
        self.poses_dir = poses_dir
        self.table: dict[str, Pose] = {}
        if annotations is not None:
            if not os.path.isfile(annotations):
                raise FileNotFoundError(f"--annotations: no such file: {annotations}")
            h, w = annotation_size or (256, 176)
            table = read_gfla_annotations(annotations, width=w, height=h)
            self.table = {os.path.basename(k): v for k, v in table.items()}
        elif not os.path.isdir(poses_dir):
            raise FileNotFoundError(f"--poses: no such folder: {poses_dir}")

    def get(self, name: str, size_hw: tuple[int, int]) -> Pose:
        """The pose of image ``name`` on its ``size_hw`` canvas."""
        if self.poses_dir is None:
            pose = self.table.get(os.path.basename(name))
            if pose is None:
                raise ValueError(f"--annotations: no row for {name}")
            if self.annotation_size is None:  # coordinates are pixels of the image itself
                return Pose(pose.people, size_hw[1], size_hw[0])
            return place_pose(pose, size_hw)
        from .evaluation.datasets import txt_name
        from .pose.formats import read_pcdms_pose_txt

        path = os.path.join(self.poses_dir, txt_name(name))
        if not os.path.isfile(path):
            raise ValueError(f"--poses: no pose file {path} for {name}")
        h, w = self.annotation_size or size_hw
        return place_pose(read_pcdms_pose_txt(path, width=w, height=h), size_hw)


@dataclass
class GenerateReport:
    total: int
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def _progress(total: int, enabled: bool):
    if not enabled:
        return lambda done, skipped: None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        def update(done, skipped):
            print(f"\rgenerate: {done}/{total} pairs ({skipped} already there)", end="", file=sys.stderr, flush=True)

        return update, lambda: print(file=sys.stderr)
    bar = tqdm(total=total, desc="generate", unit="pair")

    def update(done, skipped):
        bar.n = done
        bar.set_postfix(skipped=skipped, refresh=False)
        bar.refresh()

    return update, bar.close


def _image_hw(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError) as exc:
        raise ValueError(f"image file {path!r}: expected an image, got unreadable data ({exc})") from None


def _write(path: str, image: np.ndarray) -> None:
    from .images import save_image

    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial.png")
    save_image(tmp, image)
    os.replace(tmp, path)


def generate(pairs_file: str, images_dir: str, out_dir: str, run: Callable[[np.ndarray, Pose, Pose], list],
             *, annotations: str | None = None, poses_dir: str | None = None,
             annotation_size: tuple[int, int] | None = None, samples: int = 1, limit: int | None = None,
             progress: bool = True) -> GenerateReport:
    """Generate every pair of ``pairs_file``: ``run(source image (H, W, 3) float, source pose, target pose)`` returns
    ``samples`` images (H', W', 3) at the target's canvas. Images are read from ``images_dir`` (the names of the
    pairs file, relative to it); the target canvas is the target image's size (the ground truth evaluate compares
    with)."""
    from .images import load_image

    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"--images: no such folder: {images_dir}")
    if int(samples) < 1:
        raise ValueError(f"--samples: expected 1 or more, got {samples}")
    pairs = read_pairs(pairs_file)
    if limit is not None:
        pairs = pairs[:int(limit)]
    poses = DatasetPoses(annotations, poses_dir, annotation_size)
    dirs = sample_dirs(out_dir, int(samples))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    names = [output_name(s, t) for s, t in pairs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"--pairs: several pairs map to the same output name {dup}")
    report = GenerateReport(total=len(pairs))
    update, close = _progress(len(pairs), progress)
    t0 = time.perf_counter()
    try:
        for i, ((src, tgt), name) in enumerate(zip(pairs, names)):
            paths = [os.path.join(d, name) for d in dirs]
            if all(os.path.isfile(p) for p in paths):
                report.skipped += 1
                update(i + 1, report.skipped)
                continue
            src_path, tgt_path = os.path.join(images_dir, src), os.path.join(images_dir, tgt)
            for path, what in ((src_path, "source"), (tgt_path, "target")):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"--images: no {what} image {path} (pair {src} -> {tgt})")
            image = load_image(src_path)
            tgt_hw = _image_hw(tgt_path)
            outs = run(image, poses.get(src, image.shape[:2]), poses.get(tgt, tgt_hw))
            if len(outs) != len(paths):
                raise ValueError(f"generate: expected {len(paths)} image(s) for pair {src} -> {tgt}, got {len(outs)}")
            for path, out in zip(paths, outs):
                _write(path, np.asarray(out, dtype=np.float32))
                report.files.append(path)
            report.written += 1
            update(i + 1, report.skipped)
    finally:
        close()
        report.seconds = time.perf_counter() - t0
    return report
