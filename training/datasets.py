"""Training data for the learned flow models (:mod:`.train_flow`): paired datasets in the GFLA/PIDM layout and a
self-supervised mode on any folder of photos with OpenPose keypoints.

Every dataset yields dicts of float tensors, the batches :mod:`..core.flow_models` step functions take:
``source_image``, ``target_image`` ``(3, H, W)`` in 0..1, ``source_pose``, ``target_pose`` ``(18, H, W)``
Gaussian heatmaps and, for the part-flow model, ``source_part_masks``, ``target_part_masks`` ``(P, H, W)``.
``H x W`` and the rendering settings come from the model (:class:`InputSpec`, :meth:`InputSpec.for_model`), and
images are brought to it the way the model's FlowWarp adapter brings photos at inference:

* single-transformation model (square ``sample_size``): ``"contain"`` fit, uniform scale, centred, black bars
  (as :class:`~..core.flow_models.single_transform.SingleTransformEstimator` does);
* part-flow model (``image_size`` ``[H, W]``): ``"stretch"`` to ``H x W`` (as
  :class:`~..core.flow_models.part_flow_net.PartFlowEstimator` does).

What the TARGET image is, per mode:

* :class:`GFLAPairs` (DeepFashion, Market-1501; annotation CSV + pairs CSV + image folder): the source and the
  target are two real photos of the same person (a ``from,to`` row of the pairs CSV); the target is the real
  photo of the person in the target pose. Keypoints are pixels of the dataset frame (DeepFashion 256x176,
  Market-1501 128x64). Images stored at another size are brought to the frame: square DeepFashion images
  (PIDM/GFLA's 256x256 with 40 px of white on each side, or any square multiple) lose the side borders
  (40/256 of the width each); images with the frame's aspect ratio are resized.
* :class:`SelfSupervisedPairs` (any folder of person photos with OpenPose JSON): the TARGET is always the real
  photo with its detected pose; the SOURCE is made from it, so every loss compares against real pixels:

  - ``"affine"``: the photo and its pose moved by a random upright affine transform (rotation, scale, shear,
    translation; borders replicated). The flow back to the target is exactly that affine map.
  - ``"parts"``: a made-up pose, the photo's pose with small random joint-angle changes (upper and lower arms,
    legs and head rotated about their parent joint), and the photo warped into it by the training-free part
    warp (:func:`..core.warp.flowwarp.warp_prepared`, method ``parts``; hidden areas and the uncovered background
    filled). The model learns to bring a part-warped picture back to the real photo: the source has the part
    warp's seams and fills, the target has none.

  Pairs are drawn from ``(seed, epoch, index)``, so a run (and a resumed run) sees the same pairs; call
  :meth:`SelfSupervisedPairs.set_epoch` to draw new ones each epoch (the training script does).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.evaluation.datasets import list_photos as _list_photos
from ..core.evaluation.profiles import IMAGE_EXTENSIONS
from ..core.images import load_image
from ..core.pose.keypoints import JOINT_INDEX, LIMBS, Person, Pose
from ..core.pose.formats import read_gfla_annotations, read_openpose_json, read_pairs_csv
from ..core.pose.render import render_heatmaps, render_part_masks

__all__ = ["InputSpec", "GFLAPairs", "SelfSupervisedPairs", "DATASET_FRAMES", "IMAGE_EXTENSIONS", "find_gfla_files",
           "to_frame", "perturb_pose", "random_upright_affine_matrix", "list_photos"]

# (height, width) of the frame the annotation CSVs' keypoints live in.
DATASET_FRAMES: dict[str, tuple[int, int]] = {"deepfashion": (256, 176), "market": (128, 64)}
DEEPFASHION_BORDER = 40 / 256  # white side borders of the square DeepFashion images, per unit of width
FITS = ("stretch", "contain")
_ASPECT_TOLERANCE = 0.03

# File names of the two layouts (GFLA: fasion-annotation-train.csv; PIDM: fasion-resize-annotation-train.csv;
# GFLA's Market-1501: market-annotation-train.csv), and image folders, tried in order.
_PREFIXES = {"deepfashion": ("fasion", "fashion", "fasion-resize", "fashion-resize", "deepfashion"),
             "market": ("market", "market-resize", "market1501")}
_IMAGE_DIRS = ("{split}", "{split}_256x256", "{split}_256x176", "{split}_highres", "img/{split}", "images/{split}",
               "fashion_resize/{split}", "bounding_box_{split}", "market_data/{split}", "img", "images", ".")


# ------------------------------------------------------------------------------------------ model inputs

@dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``size`` ``(H, W)``, how photos are fitted to it (``fit``), the heatmap ``sigma`` in
    pixels of ``size``, and for the part-flow model the sub-pose parts of its masks (ordered as the model's
    ``part_names``) and their radius scale."""

    size: tuple[int, int]
    fit: str = "stretch"
    sigma: float = 6.0
    sub_pose_parts: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    mask_radius_scale: float = 1.25

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit: expected one of {FITS}, got {self.fit!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size: expected (height, width) positive, got {self.size!r}")

    @classmethod
    def for_model(cls, model) -> "InputSpec":
        """From a :class:`SingleTransformFlowNet` (square ``sample_size``, contain fit) or a :class:`PartFlowNet`
        (``image_size``, stretch, its sub-pose masks)."""
        cfg = model.config
        if hasattr(cfg, "sample_size") and hasattr(cfg, "encoder_channels"):
            s = int(cfg.sample_size)
            return cls((s, s), "contain", float(cfg.heatmap_sigma))
        if hasattr(cfg, "image_size") and hasattr(model, "sub_pose_parts"):
            parts = tuple((n, tuple(model.sub_pose_parts[n])) for n in model.part_names)
            return cls(tuple(int(v) for v in cfg.image_size), "stretch", float(cfg.heatmap_sigma), parts,
                       float(cfg.part_mask_radius_scale))
        raise TypeError(f"expected a SingleTransformFlowNet or a PartFlowNet, got {type(model).__name__}")

    # -- images and poses to the model's frame

    def fit_transform(self, height: int, width: int) -> tuple[float, float, float, float]:
        """``(sx, sy, ox, oy)``: a canvas ``height x width`` maps to the model frame by
        ``x' = (x + 0.5) * sx - 0.5 + ox`` (same for y)."""
        h, w = self.size
        if self.fit == "stretch":
            return w / width, h / height, 0.0, 0.0
        s = min(h / height, w / width)
        return s, s, (w - width * s) / 2, (h - height * s) / 2

    def fit_pose(self, pose: Pose) -> Pose:
        sx, sy, ox, oy = self.fit_transform(pose.height, pose.width)
        scale, off = np.array([sx, sy]), np.array([ox, oy])
        return pose.map_points(lambda xy: (xy + 0.5) * scale - 0.5 + off, self.size[1], self.size[0])

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """``(h, w, 3)`` float -> ``(H, W, 3)`` on the model frame (area-resampled when shrinking; black bars in
        ``contain`` mode)."""
        h0, w0 = image.shape[:2]
        hh, ww = self.size
        sx, sy, ox, oy = self.fit_transform(h0, w0)
        if self.fit == "stretch" or (ox == 0 and oy == 0):
            interp = cv2.INTER_AREA if sx < 1 or sy < 1 else cv2.INTER_LINEAR
            return cv2.resize(image, (ww, hh), interpolation=interp).reshape(hh, ww, -1)
        img, s = image, sx
        if s < 1:  # shrink with area averaging first, then place the result exactly with an affine map
            w1, h1 = max(1, round(w0 * s)), max(1, round(h0 * s))
            img = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_AREA).reshape(h1, w1, -1)
        h1, w1 = img.shape[:2]
        ax, ay = s * w0 / w1, s * h0 / h1                     # resized image -> frame
        m = np.array([[ax, 0, 0.5 * ax - 0.5 + ox], [0, ay, 0.5 * ay - 0.5 + oy]], np.float64)
        out = cv2.warpAffine(img, m, (ww, hh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0))
        return out.reshape(hh, ww, -1)

    # -- tensors

    def pose_tensors(self, pose: Pose, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}_pose`` heatmaps (and ``{prefix}_part_masks``) of a pose already on the model frame."""
        out = {f"{prefix}_pose": torch.from_numpy(render_heatmaps(pose, self.sigma))}
        if self.sub_pose_parts is not None:
            from ..core.body.parts import BODY_PARTS

            index = {p.name: k for k, p in enumerate(BODY_PARTS)}
            masks = render_part_masks(pose, 0, self.mask_radius_scale)
            sub = np.zeros((len(self.sub_pose_parts), pose.height, pose.width), np.float32)
            for k, (_, parts) in enumerate(self.sub_pose_parts):
                for p in parts:
                    sub[k] = np.maximum(sub[k], masks[index[p]])
            out[f"{prefix}_part_masks"] = torch.from_numpy(sub)
        return out

    def example(self, source_image: np.ndarray, source_pose: Pose, target_image: np.ndarray,
                target_pose: Pose) -> dict[str, torch.Tensor]:
        """One training example from images and poses on the model frame."""
        out = {"source_image": _chw(source_image), "target_image": _chw(target_image)}
        out.update(self.pose_tensors(source_pose, "source"))
        out.update(self.pose_tensors(target_pose, "target"))
        return out


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.clip(image, 0, 1), dtype=np.float32)).permute(2, 0, 1).contiguous()


def _one_person(pose: Pose, person: Person | None = None) -> Pose:
    """A one-person pose (body only) on the same canvas."""
    person = person if person is not None else pose.people[0]
    return Pose([Person(person.body.copy())], pose.width, pose.height)


# -------------------------------------------------------------------------------------------- GFLA / PIDM

def find_gfla_files(root: str, dataset: str = "deepfashion", split: str = "train", annotations: str | None = None,
                    pairs: str | None = None, images: str | None = None, probe: str | None = None
                    ) -> tuple[str, str, str | None]:
    """``(annotation CSV, pairs CSV, image folder or None)``: the given paths, else the layout's usual names
    under ``root``. A FileNotFoundError names every file it looked for. ``probe``: an image name the folder
    must hold (the folder is only searched for when it is given)."""
    if dataset not in DATASET_FRAMES:
        raise ValueError(f"dataset: expected one of {tuple(DATASET_FRAMES)}, got {dataset!r}")

    def pick(given, kind, flag):
        if given is not None:
            if not os.path.isfile(given):
                raise FileNotFoundError(f"{flag}: no such file: {given}")
            return given
        names = [f"{p}-{kind}-{split}.csv" for p in _PREFIXES[dataset]]
        for n in names:
            if os.path.isfile(os.path.join(root, n)):
                return os.path.join(root, n)
        raise FileNotFoundError(f"{dataset} {kind} CSV not found in {root}: looked for {', '.join(names)}; "
                                f"pass {flag} PATH")

    if root is None or not os.path.isdir(root):
        if annotations is None or pairs is None:
            raise FileNotFoundError(f"--data: no such folder: {root}")
    ann = pick(annotations, "annotation", "--annotations")
    prs = pick(pairs, "pairs", "--pairs")
    if images is not None:
        if not os.path.isdir(images):
            raise FileNotFoundError(f"--images: no such folder: {images}")
        return ann, prs, images
    if probe is None:
        return ann, prs, None
    tried = []
    for pattern in _IMAGE_DIRS:
        d = os.path.normpath(os.path.join(root, pattern.format(split=split)))
        tried.append(d)
        if os.path.isfile(os.path.join(d, probe)):
            return ann, prs, d
    raise FileNotFoundError(f"{dataset} images: {probe!r} (from {prs}) is in none of the folders "
                            f"{', '.join(dict.fromkeys(tried))}; pass --images DIR")


def to_frame(image: np.ndarray, frame: tuple[int, int], dataset: str, what: str = "image") -> np.ndarray:
    """A stored dataset image -> the annotation frame ``(H, W)`` (see the module doc)."""
    fh, fw = frame
    h, w = image.shape[:2]
    if (h, w) == (fh, fw):
        return image
    if dataset == "deepfashion" and h == w and fh != fw:
        b = int(round(w * DEEPFASHION_BORDER))           # 40 px of a 256 px square image
        image = image[:, b:w - b]
        h, w = image.shape[:2]
    if abs(w / h - fw / fh) > _ASPECT_TOLERANCE * fw / fh:
        raise ValueError(f"{what}: {image.shape[1]}x{image.shape[0]} does not have the {dataset} frame's aspect "
                         f"ratio ({fw}x{fh}); expected images of the dataset as distributed")
    interp = cv2.INTER_AREA if h > fh else cv2.INTER_LINEAR
    return cv2.resize(image, (fw, fh), interpolation=interp).reshape(fh, fw, -1)


class GFLAPairs(Dataset):
    """DeepFashion / Market-1501 in the GFLA/PIDM layout: ``fasion-annotation-{split}.csv`` (or
    ``market-...``), ``fasion-pairs-{split}.csv`` and an image folder (see :func:`find_gfla_files`). Each item is
    one ``from,to`` row; the target is the real photo of the target pose (module doc). Pairs whose images or
    annotations are missing raise at construction (with ``check_images``), naming the first few."""

    def __init__(self, root: str | None, spec: InputSpec, dataset: str = "deepfashion", split: str = "train",
                 annotations: str | None = None, pairs: str | None = None, images: str | None = None,
                 check_images: bool = True):
        self.spec, self.dataset = spec, dataset
        ann_path, pairs_path, _ = find_gfla_files(root, dataset, split, annotations, pairs, images)
        self.frame = DATASET_FRAMES[dataset]
        self.poses = read_gfla_annotations(ann_path, width=self.frame[1], height=self.frame[0])
        self.pairs = read_pairs_csv(pairs_path)
        if not self.pairs:
            raise ValueError(f"{pairs_path}: expected at least one pair, got none")
        missing = sorted({n for p in self.pairs for n in p if n not in self.poses})
        if missing:
            raise ValueError(f"{pairs_path}: {len(missing)} image name(s) have no keypoints in {ann_path}, e.g. "
                             f"{missing[:3]}")
        _, _, self.image_dir = find_gfla_files(root, dataset, split, ann_path, pairs_path, images,
                                               probe=self.pairs[0][0])
        if check_images:
            absent = sorted(n for n in {n for p in self.pairs for n in p}
                            if not os.path.isfile(os.path.join(self.image_dir, n)))
            if absent:
                raise FileNotFoundError(f"{self.image_dir}: {len(absent)} image(s) of {pairs_path} are missing, "
                                        f"e.g. {absent[:3]}")
        self.annotation_path, self.pairs_path = ann_path, pairs_path

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, name: str) -> tuple[np.ndarray, Pose]:
        path = os.path.join(self.image_dir, name)
        image = to_frame(load_image(path), self.frame, self.dataset, path)
        return self.spec.fit_image(image), self.spec.fit_pose(self.poses[name])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        src, tgt = self.pairs[index]
        (si, sp), (ti, tp) = self._load(src), self._load(tgt)
        return self.spec.example(si, sp, ti, tp)


# ------------------------------------------------------------------------------------------ self-supervised

def list_photos(folder: str) -> list[str]:
    """Relative POSIX paths of the images below ``folder``, sorted."""
    return _list_photos(folder, what="--data")


def _openpose_file(json_dir: str, rel: str) -> str | None:
    stem = os.path.splitext(rel)[0]
    for cand in (f"{stem}_keypoints.json", f"{stem}.json", f"{rel}.json"):
        path = os.path.join(json_dir, *cand.split("/"))
        if os.path.isfile(path):
            return path
    return None


def _most_joints(json_path: str) -> int | None:
    """The most body joints of one person in the first frame of an OpenPose JSON (None: unreadable here; the
    full reader reports it when the photo is used)."""
    import json

    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        frame = data[0] if isinstance(data, list) else data
        counts = [sum(1 for c in p["pose_keypoints_2d"][2::3] if c > 0) for p in frame.get("people", [])]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return max(counts, default=0)


# Bones whose angle is jittered (parent joint, child joint) -> maximum rotation in degrees, applied parents first;
# each rotates the child's whole subtree (in the skeleton LIMBS, a tree rooted at the neck) about the parent.
DEFAULT_ANGLE_JITTER: dict[tuple[int, int], float] = {
    (JOINT_INDEX[parent], JOINT_INDEX[child]): degrees for parent, child, degrees in (
        ("neck", "nose", 10.0),                                                     # head
        ("right_shoulder", "right_elbow", 30.0), ("right_elbow", "right_wrist", 30.0),
        ("left_shoulder", "left_elbow", 30.0), ("left_elbow", "left_wrist", 30.0),
        ("right_hip", "right_knee", 15.0), ("right_knee", "right_ankle", 15.0),
        ("left_hip", "left_knee", 15.0), ("left_knee", "left_ankle", 15.0),
    )
}


def _subtree(joint: int) -> list[int]:
    out, todo = [], [joint]
    while todo:
        j = todo.pop()
        out.append(j)
        todo.extend(c for p, c in LIMBS if p == j)
    return out


def perturb_pose(pose: Pose, rng: np.random.Generator,
                 max_angles: Mapping[tuple[int, int], float] = DEFAULT_ANGLE_JITTER) -> Pose:
    """The first person of ``pose`` with each listed bone rotated about its parent joint by a uniform random
    angle within its limit (the child's subtree moves with it). Bones with a missing end are left alone."""
    body = pose.people[0].body.copy()
    present = body[:, 2] > 0
    for (p, c), limit in max_angles.items():
        angle = math.radians(rng.uniform(-limit, limit))
        if not (present[p] and present[c]) or limit <= 0:
            continue
        cs, sn = math.cos(angle), math.sin(angle)
        for j in _subtree(c):
            if present[j]:
                d = body[j, :2] - body[p, :2]
                body[j, :2] = body[p, :2] + (cs * d[0] - sn * d[1], sn * d[0] + cs * d[1])
    return Pose([Person(body)], pose.width, pose.height)


@dataclass(frozen=True)
class AffineJitter:
    """Ranges of the self-supervised affine pairs (kept upright, as the single-transformation paper's task 1)."""

    max_rotation: float = 10.0            # degrees
    scale: tuple[float, float] = (0.85, 1.15)
    max_shear: float = 0.08
    max_translation: float = 0.08         # fraction of the frame


def random_upright_affine_matrix(size: tuple[int, int], rng: np.random.Generator,
                                 ranges: AffineJitter = AffineJitter()) -> np.ndarray:
    """``(2, 3)`` float64 affine map about the frame centre, pixel coordinates (cv2's convention)."""
    h, w = size
    a = math.radians(rng.uniform(-ranges.max_rotation, ranges.max_rotation))
    s = math.exp(rng.uniform(math.log(ranges.scale[0]), math.log(ranges.scale[1])))
    k = rng.uniform(-ranges.max_shear, ranges.max_shear)
    t = rng.uniform(-ranges.max_translation, ranges.max_translation, 2) * (w, h)
    lin = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, k], [0, 1]]) * s
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.concatenate([lin, (c + t - lin @ c)[:, None]], axis=1)


SELF_SUPERVISED_MODES = ("affine", "parts")


class SelfSupervisedPairs(Dataset):
    """Pairs made from single photos (module doc): ``len = photos * len(modes)``; item ``i`` is photo
    ``i // len(modes)`` with mode ``modes[i % len(modes)]``.

    ``folder``: person photos (any depth); ``openpose_dir``: their OpenPose JSON (default: the same folder), named
    ``NAME.json``, ``NAME_keypoints.json`` or ``NAME.png.json`` after the photo's relative path. The person with
    the most joints of the first frame is used; photos without a JSON or with fewer than ``min_joints`` joints are
    skipped (``skipped`` lists them). Photos and poses are fitted to the model frame first; the part warp runs
    there with ``segmentation`` / ``background``.
    """

    def __init__(self, folder: str, spec: InputSpec, openpose_dir: str | None = None,
                 modes: Sequence[str] = SELF_SUPERVISED_MODES, seed: int = 0, min_joints: int = 8,
                 affine: AffineJitter = AffineJitter(),
                 angle_jitter: Mapping[tuple[int, int], float] = DEFAULT_ANGLE_JITTER,
                 segmentation: str = "grabcut", background: str = "inpaint", cache_size: int = 16):
        modes = tuple(modes)
        if not modes or any(m not in SELF_SUPERVISED_MODES for m in modes):
            raise ValueError(f"modes: expected some of {SELF_SUPERVISED_MODES}, got {modes!r}")
        from ..core.warp.flowwarp import FlowWarpOptions

        # The targets are jittered poses of this photo's own person: used exactly as made (no retargeting).
        self.options = FlowWarpOptions(method="parts", segmentation=segmentation, background=background,
                                       retarget=False)
        self.spec, self.modes, self.seed, self.epoch = spec, modes, int(seed), 0
        self.affine, self.angle_jitter = affine, dict(angle_jitter)
        json_dir = openpose_dir or folder
        if openpose_dir is not None and not os.path.isdir(openpose_dir):
            raise FileNotFoundError(f"--openpose-dir: no such folder: {openpose_dir}")
        self.items: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.min_joints = int(min_joints)
        for rel in list_photos(folder):
            js = _openpose_file(json_dir, rel)
            if js is None:
                self.skipped.append((rel, "no OpenPose JSON"))
                continue
            joints = _most_joints(js)
            if joints is not None and joints < self.min_joints:
                self.skipped.append((rel, f"{joints} joints (< min_joints {self.min_joints})"))
                continue
            self.items.append((os.path.join(folder, rel), js))
        if not self.items:
            raise FileNotFoundError(
                f"{folder}: no photo with OpenPose keypoints; expected images ({', '.join(IMAGE_EXTENSIONS)}) each "
                f"with a JSON named after it (NAME.json or NAME_keypoints.json) in {json_dir}"
                + (f"; {len(self.skipped)} photo(s) had none" if self.skipped else ""))
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = int(cache_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) * len(self.modes)

    def _photo(self, k: int) -> tuple[np.ndarray, Pose]:
        """Photo ``k`` and its pose on the model frame (cached with the part warp's prepared source)."""
        image_path, json_path = self.items[k]
        image = load_image(image_path)
        frames = read_openpose_json(json_path, default_size=image.shape[:2])
        if not frames or not frames[0].people:
            raise ValueError(f"{json_path}: expected a frame with at least one person, got none")
        pose = frames[0]
        person = max(pose.people, key=lambda p: int(p.present.sum()))
        if int(person.present.sum()) < self.min_joints:
            raise ValueError(f"{json_path}: the best person has {int(person.present.sum())} joints, fewer than "
                             f"min_joints={self.min_joints}; remove the photo or lower the limit")
        if (pose.height, pose.width) != image.shape[:2]:
            from ..core.pose.geometry import resize

            pose = resize(None, pose, image.shape[1], image.shape[0])[1]
        pose = _one_person(pose, person)
        return self.spec.fit_image(image), self.spec.fit_pose(pose)

    def _prepared(self, k: int, image: np.ndarray, pose: Pose):
        from ..core.warp.flowwarp import prepare_source

        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        prepared = prepare_source(image, pose, self.options, what=f"photo {self.items[k][0]}")
        if self._cache_size > 0:
            self._cache[k] = prepared
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return prepared

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, mode = divmod(index, len(self.modes))
        mode = self.modes[mode]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, pose = self._photo(k)
        h, w = self.spec.size
        if mode == "affine":
            m = random_upright_affine_matrix((h, w), rng, self.affine)
            source = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE).reshape(h, w, -1)
            lin, t = m[:, :2], m[:, 2]
            source_pose = pose.map_points(lambda xy: xy @ lin.T + t)
        else:
            from ..core.warp.flowwarp import warp_prepared

            source_pose = perturb_pose(pose, rng, self.angle_jitter)
            result = warp_prepared(self._prepared(k, image, pose), source_pose, self.options)
            source = result.image.permute(1, 2, 0).numpy()
        return self.spec.example(source, source_pose, image, pose)
