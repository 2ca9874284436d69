"""``posetransfer evaluate``: score a folder of generated images against the ground truth, as a paper did.

Pairing (``pred`` = generated image, ``gt`` = ground truth of the target):

* With ``pairs`` (a GFLA/PIDM pairs CSV ``from,to``): the generated image of pair (S, T) is the file in
  ``pred_dir`` whose name without extension is one of ``S_to_T``, ``S_2_T``, ``S_to_T_vis``, ``S_2_T_vis``
  (S, T without extension; PCDMs and GFLA/PIDM naming); the ground truth is the file of ``gt_dir`` named T
  (any image extension).
* Without pairs: every image of ``pred_dir``; its ground truth is the file of ``gt_dir`` with the same name
  without extension, else the part after the last ``_to_`` / ``_2_`` (a trailing ``_vis`` dropped).

Images are scored in the order of their file names (the papers sort them), which decides which images the
"full batches only" rules keep. Best-of-N (``best_of=N``, as PCDMs' test scripts keep the best of 4 samples
by SSIM): ``pred_dir`` holds N sub-folders, one per sample, laid out as above; for each pair the sample with
the highest SSIM against the ground truth (the profile's SSIM) is scored, the others are ignored (FID too);
the summary records it.

Outputs (in ``out_dir``): ``per_image.csv`` (one row per pair) and ``summary.json`` (profile, means, the
LPIPS/FID values as the paper computed them, what was used). Masked metrics need ``masks_dir`` (white =
person, named like the ground truth) or target poses (``annotations`` CSV or ``target_poses`` folder of
OpenPose JSON), from which a GFLA-style pose mask is drawn. Pose accuracy needs target poses and a detector
(see :mod:`.pose_accuracy`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from ..pose.keypoints import JOINT_INDEX, LIMBS, Person, Pose
from ..pose.inputs import place_pose as _scale_pose
from ..pose.formats import read_gfla_annotations, read_openpose_json, read_pairs_csv
from . import metrics as M
from .fid import activation_statistics, compute_features, frechet_distance, load_statistics, save_statistics
from .pose_accuracy import DEFAULT_ALPHA, detect_pose, pose_accuracy, summarize
from .profiles import BEST_OF_SELECTIONS, IMAGE_EXTENSIONS, PROFILES, Profile, get_profile, read_raw, used_count

CSV_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
FID_REF_STATS_NAME = "fid_reference_statistics.npz"
PAIR_SEPARATORS = ("_to_", "_2_")

# GFLA's produce_ma_mask limbs: the drawn skeleton plus neck-ear, hip-hip, hip-shoulder and ear-ear links, so
# the torso and head fill in.
MASK_LIMBS = LIMBS + tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in (
    ("neck", "right_ear"), ("neck", "left_ear"), ("right_hip", "left_hip"), ("left_hip", "left_shoulder"),
    ("right_hip", "right_shoulder"), ("right_ear", "left_ear")))


ProgressFn = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------- file pairing

def list_images(folder: str, what: str) -> list[str]:
    """Sorted file names of the images directly inside ``folder``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: no such folder: {folder}")
    names = sorted(n for n in os.listdir(folder)
                   if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                   and os.path.isfile(os.path.join(folder, n)))
    return names


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _index_by_stem(names: Sequence[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for n in names:
        index.setdefault(_stem(n), []).append(n)
    return index


def _lookup(index: dict[str, list[str]], stem: str, folder: str, what: str) -> str | None:
    found = index.get(stem)
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"{what}: {folder} has several images named {stem!r} ({', '.join(found)}); expected one")
    return found[0]


def gt_stem_candidates(pred_stem: str) -> list[str]:
    """Ground-truth names (no extension) a generated image's name may point to."""
    out = [pred_stem]
    for sep in PAIR_SEPARATORS:
        if sep in pred_stem:
            tail = pred_stem.rsplit(sep, 1)[1]
            out.append(tail)
            if tail.endswith("_vis"):
                out.append(tail[:-4])
    return out


def pred_stem_candidates(source: str, target: str) -> list[str]:
    s, t = _stem(source), _stem(target)
    return [f"{s}{sep}{t}{suffix}" for sep in PAIR_SEPARATORS for suffix in ("", "_vis")]


@dataclass
class Item:
    key: str                       # the generated image's file name (in the first sample folder)
    preds: list[str]               # candidate files (one, or N for best-of-N)
    gt: str
    source: str = ""


def _sample_dirs(pred_dir: str, best_of: int | None) -> list[str]:
    if best_of is None:
        return [pred_dir]
    subdirs = sorted(d for d in os.listdir(pred_dir)
                     if not d.startswith(".") and os.path.isdir(os.path.join(pred_dir, d)))
    if len(subdirs) != best_of:
        raise ValueError(f"--best-of {best_of}: expected {best_of} sample sub-folders in {pred_dir} (one per "
                         f"sample, same file names), found {len(subdirs)}: {subdirs[:8]}")
    return [os.path.join(pred_dir, d) for d in subdirs]


def pair_files(pred_dir: str, gt_dir: str, pairs: str | None = None, best_of: int | None = None) -> list[Item]:
    """Match generated images with their ground truth (rules in the module docstring); sorted by pred name."""
    if best_of is not None and (isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1):
        raise ValueError(f"best_of: expected a positive integer, got {best_of!r}")
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"--pred: no such folder: {pred_dir}")
    sample_dirs = _sample_dirs(pred_dir, best_of)
    first = list_images(sample_dirs[0], "--pred")
    gt_names = list_images(gt_dir, "--gt")
    if not first:
        raise ValueError(f"--pred: no images ({', '.join(IMAGE_EXTENSIONS)}) in {sample_dirs[0]}")
    if not gt_names:
        raise ValueError(f"--gt: no images in {gt_dir}")
    pred_index = _index_by_stem(first)
    gt_index = _index_by_stem(gt_names)
    matched: list[tuple[str, str, str]] = []   # (pred name, gt name, source)
    problems: list[str] = []
    if pairs is not None:
        if not os.path.isfile(pairs):
            raise FileNotFoundError(f"--pairs: no such file: {pairs}")
        for src, tgt in read_pairs_csv(pairs):
            pred = None
            for cand in pred_stem_candidates(src, tgt):
                pred = _lookup(pred_index, cand, sample_dirs[0], "--pred")
                if pred:
                    break
            gt = _lookup(gt_index, _stem(tgt), gt_dir, "--gt")
            if pred is None:
                problems.append(f"no generated image for pair {src} -> {tgt} (expected a name like "
                                f"{pred_stem_candidates(src, tgt)[0]}.png)")
            elif gt is None:
                problems.append(f"no ground truth {_stem(tgt)}.* in {gt_dir}")
            else:
                matched.append((pred, gt, src))
    else:
        for pred in first:
            gt = None
            for cand in gt_stem_candidates(_stem(pred)):
                gt = _lookup(gt_index, cand, gt_dir, "--gt")
                if gt:
                    break
            if gt is None:
                problems.append(f"{pred}: no ground truth in {gt_dir} (tried {gt_stem_candidates(_stem(pred))})")
            else:
                stem = _stem(pred)
                src = next((stem.rsplit(sep, 1)[0] for sep in PAIR_SEPARATORS if sep in stem), "")
                matched.append((pred, gt, src))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"--pred/--gt: cannot pair {len(problems)} image(s): {'; '.join(problems[:3])}{more}")
    seen: dict[str, int] = {}
    for pred, _, _ in matched:
        seen[pred] = seen.get(pred, 0) + 1
    dup = [p for p, c in seen.items() if c > 1]
    if dup:
        raise ValueError(f"--pairs: several pairs map to the same generated image {dup[0]}")
    items = []
    for pred, gt, src in sorted(matched):
        paths = []
        for d in sample_dirs:
            p = os.path.join(d, pred)
            if not os.path.isfile(p):
                raise ValueError(f"--best-of: sample folder {d} lacks {pred}; expected the same file names in "
                                 f"every sample folder")
            paths.append(p)
        items.append(Item(pred, paths, os.path.join(gt_dir, gt), src))
    return items


# ------------------------------------------------------------------------------------------ poses and masks

def _read_mask(path: str, size_hw: tuple[int, int]) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    m = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if m is None:
        raise ValueError(f"mask file {path!r}: expected an image OpenCV can decode")
    if m.shape != tuple(size_hw):
        m = cv2.resize(m, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
    return (m > 127).astype(np.uint8)


def pose_mask(pose: Pose | Person, size_hw: tuple[int, int], radius: float | None = None) -> np.ndarray:
    """A person mask drawn from keypoints, after GFLA's ``produce_ma_mask``: each limb (``MASK_LIMBS``) a
    quadrilateral of half-width ``radius`` around the segment, each joint a disc of ``radius``, then a 5x5
    closing. ``radius`` defaults to 4 px per 128 px of image height (GFLA's Market-1501 setting). Rasterised
    with OpenCV, so edge pixels may differ from skimage's. Coordinates must be in this image's pixels."""
    h, w = size_hw
    person = pose if isinstance(pose, Person) else pose.person(0, "target pose")
    r = 4.0 * h / 128.0 if radius is None else float(radius)
    mask = np.zeros((h, w), np.uint8)
    xy, ok = person.xy, person.present
    shift = 4
    scale = 1 << shift
    for a, b in MASK_LIMBS:
        if not (ok[a] and ok[b]):
            continue
        d = xy[a] - xy[b]
        n = np.hypot(*d)
        if n == 0:
            continue
        normal = np.array([-d[1], d[0]]) / n * r
        quad = np.array([xy[a] + normal, xy[a] - normal, xy[b] - normal, xy[b] + normal])
        cv2.fillConvexPoly(mask, np.round(quad * scale).astype(np.int32), 1, lineType=cv2.LINE_8, shift=shift)
    for i in np.flatnonzero(ok):
        center = tuple(int(v) for v in np.round(xy[i] * scale))
        cv2.circle(mask, center, int(round(r * scale)), 1, thickness=-1, lineType=cv2.LINE_8, shift=shift)
    kernel = np.ones((5, 5), np.uint8)
    return cv2.erode(cv2.dilate(mask, kernel), kernel)


class TargetPoses:
    """Target poses by ground-truth file name, from a GFLA annotation CSV or a folder of OpenPose JSON."""

    def __init__(self, annotations: str | None = None, folder: str | None = None,
                 annotation_size: tuple[int, int] | None = None):
        self.folder = folder
        self.annotation_size = annotation_size
        self.table: dict[str, Pose] = {}
        self.by_stem: dict[str, str] = {}
        self.from_csv = annotations is not None
        if annotations is not None:
            if not os.path.isfile(annotations):
                raise FileNotFoundError(f"--annotations: no such file: {annotations}")
            h, w = annotation_size or (256, 176)
            self.table = read_gfla_annotations(annotations, width=w, height=h)
            self.by_stem = {_stem(k): k for k in self.table}
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"--target-poses: no such folder: {folder}")

    def get(self, gt_path: str, gt_size_hw: tuple[int, int]) -> Pose:
        name = os.path.basename(gt_path)
        if self.from_csv:
            key = name if name in self.table else self.by_stem.get(_stem(name))
            if key is None:
                raise ValueError(f"--annotations: no row for the ground truth {name}")
            pose = self.table[key]
            if self.annotation_size is None:  # coordinates are pixels of the ground-truth image
                return Pose(pose.people, gt_size_hw[1], gt_size_hw[0])
            return _scale_pose(pose, gt_size_hw)
        for cand in (f"{_stem(name)}.json", f"{_stem(name)}_keypoints.json"):
            path = os.path.join(self.folder, cand)
            if os.path.isfile(path):
                poses = read_openpose_json(path, default_size=gt_size_hw)
                if not poses or not poses[0].people:
                    raise ValueError(f"--target-poses: {path}: expected a person, got none")
                return _scale_pose(poses[0], gt_size_hw)
        raise ValueError(f"--target-poses: no {_stem(name)}.json or {_stem(name)}_keypoints.json in {self.folder}")


def pcdms_selection_ssim(raw_gt: np.ndarray, raw_pred: np.ndarray) -> float:
    """The SSIM PCDMs' test script ranks its samples by (``BEST_OF_SELECTIONS["pcdms-script"]``): float32 0..255
    images as read (uint8 values) -> uint8, the ground truth resized to the sample's size with PIL bicubic."""
    gt8, pred8 = np.asarray(raw_gt).astype(np.uint8), np.asarray(raw_pred).astype(np.uint8)
    if gt8.shape != pred8.shape:
        gt8 = np.asarray(Image.fromarray(gt8).resize((pred8.shape[1], pred8.shape[0]), Image.BICUBIC))
    return M.structural_similarity(gt8, pred8, gaussian_weights=True, sigma=1.2, channel_axis=2)


# --------------------------------------------------------------------------------------------- evaluation

def _progress(progress) -> tuple[ProgressFn | None, Callable[[], None]]:
    """``progress``: a callable ``(stage, done, total)``, True for tqdm when installed, or False/None."""
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", leave=False)
        bar.n = done
        bar.refresh()

    def close():
        for bar in bars.values():
            bar.close()
    return update, close


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    return str(v)


@dataclass
class _Batcher:
    """Runs a model over items grouped in same-shape batches; results go back to their rows."""

    fn: Callable[[list[Any]], list[float]]
    size: int
    pending: list[tuple[int, Any]] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)

    def add(self, idx: int, payload, shape) -> None:
        if self.pending and self.pending[0][1][0] != shape:
            self.flush()
        self.pending.append((idx, (shape, payload)))
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = self.fn([p for _, (_, p) in self.pending])
        for (idx, _), v in zip(self.pending, values):
            self.results[idx] = v
        self.pending.clear()


def _chw(arrays) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))).float()


def evaluate(pred_dir: str, gt_dir: str, *, pairs: str | None = None, profile: str | Profile = "pcdms",
             size: tuple[int, int] | None = None, out_dir: str | None = None, lpips: bool = True,
             fid: bool = True, alexnet_weights=None, lpips_weights=None, fid_weights=None, fid_ref: str | None = None,
             best_of: int | None = None, masks_dir: str | None = None, annotations: str | None = None,
             annotation_size: tuple[int, int] | None = None, target_poses: str | None = None, detector=None,
             pck_alpha: float = DEFAULT_ALPHA, batch_size: int = 16, device: str = "cpu", progress=True,
             lpips_model: torch.nn.Module | None = None, fid_model: torch.nn.Module | None = None) -> dict:
    """Score ``pred_dir`` against ``gt_dir`` under a paper's ``profile`` (``pcdms``, ``pidm``, ``gfla``); see the
    module docstring. Returns the summary dict (also written to ``out_dir/summary.json`` with
    ``out_dir/per_image.csv`` when ``out_dir`` is given); ``summary["rows"]`` holds the per-image rows.

    ``size=(width, height)`` overrides the profile's resize size (PCDMs' 512 setting: ``(352, 512)``).
    LPIPS/FID weights are loaded from the user's files (``alexnet_weights``, ``lpips_weights``,
    ``fid_weights``; defaults in the torch hub cache); ``lpips=False`` / ``fid=False`` skip them.
    ``lpips_model`` / ``fid_model`` inject ready modules instead (tests). ``fid_ref``: the FID reference set,
    a folder of images or an ``.npz`` with ``mu``/``sigma`` (the papers used the TRAINING images); without it
    the ground-truth images are the reference, and the summary says so.
    """
    prof = _checked_profile(profile, size, batch_size)
    if detector is not None and annotations is None and target_poses is None:
        raise ValueError("detector: pose accuracy needs the target poses; pass --annotations CSV or "
                         "--target-poses DIR")
    if masks_dir is not None and not os.path.isdir(masks_dir):
        raise FileNotFoundError(f"--masks: no such folder: {masks_dir}")
    if fid_ref is not None and not os.path.exists(fid_ref):
        raise FileNotFoundError(f"--fid-ref: no such folder or file: {fid_ref}")
    items = pair_files(pred_dir, gt_dir, pairs, best_of)
    targets = TargetPoses(annotations, target_poses, annotation_size) \
        if (annotations is not None or target_poses is not None) else None

    # load the backbones first: a missing weight file fails before any work
    if lpips and lpips_model is None:
        from .lpips import load_lpips
        lpips_model = load_lpips(alexnet_weights, lpips_weights, device)
    if fid and fid_model is None:
        from .inception import load_inception
        fid_model = load_inception(fid_weights, device)
    lpips_model = lpips_model.to(device).eval() if lpips else None
    fid_model = fid_model.to(device).eval() if fid else None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)

    report, close_progress = _progress(progress)
    scorer = _Scorer(prof, pred_dir, batch_size, device, lpips_model, fid_model, masks_dir, targets, detector,
                     pck_alpha)
    try:
        rows = []
        for idx, item in enumerate(items):
            rows.append(scorer.score(idx, item))
            if report:
                report("score", idx + 1, len(items))
        scorer.flush()
        summary_metrics, notes, lpips_info = scorer.summarize(rows)
        fid_info = None
        if fid:
            value, fid_info = _fid(np.concatenate(scorer.fid_feats), fid_model, prof, items, fid_ref, out_dir,
                                   batch_size, device, report)
            # against the test ground truth (no --fid-ref) the number is not the papers' FID: another name
            summary_metrics["fid" if fid_ref is not None else "fid_vs_test_gt"] = value
        if scorer.pose_results:
            summary_metrics.update({f"pose_{k}": v for k, v in summarize(scorer.pose_results).items()})
            notes.append(f"pose accuracy: PCK@{pck_alpha} of max(bbox w, h) of the target joints, detector "
                         f"{type(detector).__name__}")
        summary = {
            "profile": prof.to_dict(), "pred_dir": os.path.abspath(pred_dir), "gt_dir": os.path.abspath(gt_dir),
            "pairs": os.path.abspath(pairs) if pairs else None, "count": len(rows),
            "best_of": None if best_of is None else {
                "n": best_of, "selected_by": BEST_OF_SELECTIONS[prof.best_of_selection] + " (as PCDMs' test "
                                             "scripts keep the best of 4 samples)",
                "note": "best-of-N scores are not comparable with single-sample scores"},
            "metrics": summary_metrics, "lpips": lpips_info, "fid": fid_info, "notes": notes,
        }
    finally:
        close_progress()
    if out_dir is not None:
        _write_csv(os.path.join(out_dir, CSV_NAME), rows)
        with open(os.path.join(out_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
            json.dump(_json_safe(summary), f, indent=2, allow_nan=False)
            f.write("\n")
    summary["rows"] = rows
    return summary


def _checked_profile(profile: str | Profile, size, batch_size) -> Profile:
    """The profile, resized to ``size=(width, height)`` when given; ValueError for a bad size or batch size."""
    prof = get_profile(profile)
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ValueError(f"size: expected (width, height), got {size!r}")
        prof = prof.with_size(int(size[0]), int(size[1]))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return prof


class _Scorer:
    """The per-image scores of one evaluation: SSIM/PSNR/L1/MAE at once, LPIPS and the FID features in batches
    (``flush`` runs what is left), pose accuracy when there is a detector; ``summarize`` averages the rows."""

    def __init__(self, prof: Profile, pred_dir: str, batch_size: int, device, lpips_model, fid_model,
                 masks_dir: str | None, targets: TargetPoses | None, detector, pck_alpha: float):
        self.prof, self.pred_dir, self.batch_size, self.device = prof, pred_dir, batch_size, device
        self.lpips_model, self.fid_model = lpips_model, fid_model   # None: that metric is off
        self.masks_dir, self.targets, self.detector, self.pck_alpha = masks_dir, targets, detector, pck_alpha
        self.masked = masks_dir is not None or targets is not None
        self.ssim_kw = prof.ssim_kwargs()
        self.lpips_b = _Batcher(self._run_lpips, batch_size)
        self.lpips_mb = _Batcher(self._run_lpips, batch_size)
        self.fid_pending: list[np.ndarray] = []
        self.fid_feats: list[np.ndarray] = []
        self.pose_results = []

    @torch.no_grad()
    def _run_lpips(self, payloads):
        a = _chw([p[0] for p in payloads]).to(self.device)
        b = _chw([p[1] for p in payloads]).to(self.device)
        return [float(v) for v in self.lpips_model(a, b).double().cpu()]

    def _flush_fid(self) -> None:
        if self.fid_pending:
            self.fid_feats.append(compute_features(self.fid_pending, self.fid_model, self.batch_size, self.device))
            self.fid_pending.clear()

    def flush(self) -> None:
        self.lpips_b.flush()
        self.lpips_mb.flush()
        if self.fid_model is not None:
            self._flush_fid()

    def _ssim(self, gt_rec, pred_rec, mask=None):
        g, p = self.prof.ssim_image(gt_rec), self.prof.ssim_image(pred_rec)
        if mask is not None:
            g = g * mask[:, :, None].astype(g.dtype)
            p = p * mask[:, :, None].astype(p.dtype)
        rng = p.max() - p.min()
        return M.structural_similarity(g, p, data_range=rng if rng > 0 else p.dtype.type(1), **self.ssim_kw)

    def _choose(self, item: Item, raw_gt, gt_rec) -> tuple[int, list[float]]:
        """Best of N: the index of the prediction kept and the selection SSIM of each (``[]`` for one)."""
        prof, cand_ssims = self.prof, []
        if len(item.preds) <= 1:
            return 0, cand_ssims
        for path in item.preds:
            raw_c = read_raw(path)
            rec = prof.rec_image(raw_c)
            _check_same(rec, gt_rec, path, item.gt, prof)
            cand_ssims.append(self._ssim(gt_rec, rec) if prof.best_of_selection == "profile"
                              else pcdms_selection_ssim(raw_gt, raw_c))
        return int(np.argmax(cand_ssims)), cand_ssims

    def score(self, idx: int, item: Item) -> dict:
        """The row of one pair (LPIPS and FID are queued, ``summarize`` adds LPIPS to the rows)."""
        prof = self.prof
        raw_gt = read_raw(item.gt)
        gt_rec = prof.rec_image(raw_gt)
        chosen, cand_ssims = self._choose(item, raw_gt, gt_rec)
        pred_path = item.preds[chosen]
        raw_pred = read_raw(pred_path)
        pred_rec = prof.rec_image(raw_pred)
        _check_same(pred_rec, gt_rec, pred_path, item.gt, prof)
        row: dict[str, Any] = {"pred": os.path.relpath(pred_path, self.pred_dir), "gt": os.path.basename(item.gt),
                               "source": item.source}
        row["ssim"] = cand_ssims[chosen] if cand_ssims and prof.best_of_selection == "profile" \
            else self._ssim(gt_rec, pred_rec)
        row["psnr"] = M.psnr(gt_rec, pred_rec, data_range=1)
        row["l1"] = M.l1(gt_rec, pred_rec)
        row["mae"] = M.mae_ratio(gt_rec, pred_rec)

        target = None if self.targets is None else self.targets.get(item.gt, raw_gt.shape[:2])
        mask_gt = None
        if self.masked:
            if self.masks_dir is not None:
                mask_gt = _read_mask(_find_mask(self.masks_dir, item.gt), raw_gt.shape[:2])
            else:
                mask_gt = pose_mask(_scale_pose(target, raw_gt.shape[:2]), raw_gt.shape[:2])
            m_rec = _resize_mask(mask_gt, gt_rec.shape[:2])
            row["masked_ssim"] = self._ssim(gt_rec, pred_rec, m_rec)
            row["masked_psnr"] = M.masked_psnr(gt_rec, pred_rec, m_rec, data_range=1)
            row["masked_l1"] = M.masked_l1(gt_rec, pred_rec, m_rec)
        if self.lpips_model is not None:
            self._queue_lpips(idx, item, pred_path, raw_gt, raw_pred, mask_gt)
        if self.fid_model is not None:
            self.fid_pending.append(prof.fid_image(raw_pred))
            if len(self.fid_pending) >= self.batch_size:
                self._flush_fid()
        if self.detector is not None:
            found = detect_pose(self.detector, raw_pred / np.float32(255.0), row["pred"])
            acc = pose_accuracy(found, target, image_size=raw_pred.shape[:2], alpha=self.pck_alpha)
            self.pose_results.append(acc)
            row.update({"pck": acc.pck, "pck_correct": acc.correct, "pck_total": acc.total,
                        "keypoint_error_px": acc.mean_error_px, "keypoint_error_norm": acc.mean_error_norm})
        if cand_ssims:
            row["best_of_index"] = chosen
            row["best_of_ssims"] = " ".join(f"{v:.6f}" for v in cand_ssims)
        return row

    def _queue_lpips(self, idx: int, item: Item, pred_path: str, raw_gt, raw_pred, mask_gt) -> None:
        prof = self.prof
        lg, lp = prof.lpips_image(raw_gt), prof.lpips_image(raw_pred)
        _check_same(lp, lg, pred_path, item.gt, prof, "LPIPS")
        self.lpips_b.add(idx, (lp, lg), lp.shape)
        if mask_gt is not None:
            if not prof.masked_lpips_resized:  # PIDM's calculate_mask_lpips: the images as stored
                lg, lp = prof.lpips_image(raw_gt, resize=False), prof.lpips_image(raw_pred, resize=False)
                _check_same(lp, lg, pred_path, item.gt, prof, "masked LPIPS")
            ml = _resize_mask(mask_gt, lg.shape[:2]).astype(np.float32)[:, :, None]
            self.lpips_mb.add(idx, (lp * ml, lg * ml), lp.shape)

    def summarize(self, rows: list[dict]) -> tuple[dict[str, Any], list[str], dict | None]:
        """``(metrics, notes, lpips_info)`` of the scored rows (FID and pose accuracy are the caller's); the
        rows get their LPIPS values."""
        summary_metrics: dict[str, Any] = {
            "ssim": _mean(r["ssim"] for r in rows), "psnr": _mean(r["psnr"] for r in rows),
            "l1": _mean(r["l1"] for r in rows), "mae": _mean(r["mae"] for r in rows)}
        notes: list[str] = []
        if any(math.isinf(r["psnr"]) for r in rows):
            notes.append("some pairs are identical (PSNR = inf); the mean PSNR is inf and written as null")
        if self.masked:
            for k in ("masked_ssim", "masked_psnr", "masked_l1"):
                summary_metrics[k] = _mean(r[k] for r in rows)
            notes.append("masked metrics: " + ("masks from --masks" if self.masks_dir else
                                               "GFLA-style pose masks drawn from the target poses"))
        if self.lpips_model is None:
            return summary_metrics, notes, None
        k = used_count(len(rows), self.prof.lpips_batch)
        masked_lpips = self.lpips_mb.results
        for i, r in enumerate(rows):
            r["lpips"] = self.lpips_b.results[i]
            r["lpips_counted"] = int(i < k)
            if masked_lpips:
                r["masked_lpips"] = masked_lpips[i]
        summary_metrics["lpips"] = _mean(r["lpips"] for r in rows[:k])
        summary_metrics["lpips_all_images"] = _mean(r["lpips"] for r in rows)
        if masked_lpips:
            summary_metrics["masked_lpips"] = _mean(r["masked_lpips"] for r in rows[:k])
        lpips_info = {"images_used": k, "batch": self.prof.lpips_batch,
                      "rule": "mean over full batches only, in file-name order (the paper's loop)"}
        return summary_metrics, notes, lpips_info


def _check_same(a: np.ndarray, b: np.ndarray, pred: str, gt: str, prof: Profile, metric: str = "SSIM/PSNR/L1"):
    if a.shape != b.shape:
        raise ValueError(f"{pred} and {gt}: {metric} under the {prof.name} profile needs images of one size, got "
                         f"{a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]} (the {prof.name} profile "
                         f"{'does not resize' if prof.rec_resize is None else 'resizes to a fixed size'}; "
                         f"use --profile pcdms or --size to resize)")


def _find_mask(masks_dir: str, gt_path: str) -> str:
    stem = _stem(gt_path)
    for name in sorted(os.listdir(masks_dir)):
        s, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and s in (stem, f"{stem}_mask"):
            return os.path.join(masks_dir, name)
    raise ValueError(f"--masks: no mask named {stem}.* or {stem}_mask.* in {masks_dir}")


def _resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size_hw):
        return mask
    return cv2.resize(mask, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def _fid(feats, model, prof: Profile, items, fid_ref, out_dir, batch_size, device, report):
    n = len(feats)
    k = used_count(n, prof.fid_batch)
    info: dict[str, Any] = {"batch": prof.fid_batch, "pred_images_used": k,
                            "rule": "statistics over full batches only, in file-name order (the paper's loop)"}
    if k < 2:
        raise ValueError(f"FID: needs at least 2 generated images, got {k}; pass --no-fid")
    mu1, s1 = activation_statistics(feats[:k])
    if fid_ref is not None and os.path.isfile(fid_ref):
        mu2, s2 = load_statistics(fid_ref)
        info.update({"reference": os.path.abspath(fid_ref), "reference_kind": "statistics file"})
    else:
        if fid_ref is not None:
            paths = [os.path.join(fid_ref, nm) for nm in list_images(fid_ref, "--fid-ref")]
            info.update({"reference": os.path.abspath(fid_ref), "reference_kind": "image folder"})
        else:
            paths = sorted({it.gt for it in items})
            info.update({"reference": "the ground-truth images of the evaluated pairs",
                         "reference_kind": "ground truth",
                         "reference_note": f"NOT the published protocol: the paper used the {prof.fid_reference}; "
                                           f"pass --fid-ref DIR|NPZ to compare with its table"})
        m = used_count(len(paths), prof.fid_batch)
        if m < 2:
            raise ValueError(f"--fid-ref: needs at least 2 reference images, got {len(paths)}")
        ref = compute_features((prof.fid_image(read_raw(p)) for p in paths[:m]), model, batch_size, device,
                               progress=_counter(report, "fid (reference)", m))
        mu2, s2 = activation_statistics(ref)
        info["reference_images_used"] = m
        if out_dir is not None:
            save_statistics(os.path.join(out_dir, FID_REF_STATS_NAME), mu2, s2)
            info["reference_statistics_saved"] = FID_REF_STATS_NAME
    if mu2.shape != mu1.shape:
        raise ValueError(f"--fid-ref: the reference statistics have {mu2.shape[0]} features, the network gives "
                         f"{mu1.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2), info


def _counter(report, stage: str, total: int):
    if report is None:
        return None
    done = [0]

    def step(k: int):
        done[0] += k
        report(stage, done[0], total)
    return step


def _write_csv(path: str, rows: list[dict]) -> None:
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_csv_value(r.get(c)) for c in columns])


# -------------------------------------------------------------------------------------------------- CLI

def _size_arg(text: str, order: str = "WxH") -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected {order} such as 176x256, got {text!r}") from None
    if a <= 0 or b <= 0:
        raise ValueError(f"expected positive {order}, got {text!r}")
    return a, b


def add_evaluate_arguments(p) -> None:
    """Arguments of ``posetransfer evaluate`` (call on its sub-parser)."""
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of generated images")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth images")
    p.add_argument("--pairs", metavar="CSV", help="pairs CSV (from,to); default: pair by file name")
    p.add_argument("--profile", default="pcdms", choices=sorted(PROFILES),
                   help="measure as this paper did (default: pcdms)")
    p.add_argument("--size", metavar="WxH", help="override the profile's resize size (PCDMs 512: 352x512)")
    p.add_argument("--out", default=os.path.join("outputs", "evaluate"), metavar="DIR",
                   help="where per_image.csv and summary.json go (default: outputs/evaluate)")
    p.add_argument("--lpips-weights", metavar="PATH", help="lpips v0.1 alex.pth (linear layers)")
    p.add_argument("--alexnet-weights", metavar="PATH",
                   help="torchvision alexnet-owt-7be5be79.pth (default: torch hub cache)")
    p.add_argument("--fid-weights", metavar="PATH",
                   help="torchvision inception_v3_google-0cc3c7bd.pth (default: torch hub cache)")
    p.add_argument("--fid-ref", metavar="DIR|NPZ",
                   help="FID reference: training images (as the papers) or an .npz with mu/sigma")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--best-of", type=int, metavar="N",
                   help="--pred holds N sample folders; keep the best sample per pair by SSIM (PCDMs' scripts)")
    p.add_argument("--masks", metavar="DIR", help="person masks named like the ground truth (masked metrics)")
    p.add_argument("--annotations", metavar="CSV", help="GFLA/PIDM annotation CSV of the targets (masks, PCK)")
    p.add_argument("--annotation-size", metavar="HxW",
                   help="frame of the annotation coordinates (default: each ground-truth image's size); a frame of "
                        "another aspect ratio is centred in the image, e.g. 256x176 for DeepFashion images stored "
                        "256x256 with 40 px padding (x + 40)")
    p.add_argument("--target-poses", metavar="DIR", help="OpenPose JSON of the targets, named like the ground truth")
    p.add_argument("--pck-alpha", type=float, default=DEFAULT_ALPHA, help="PCK threshold (fraction of bbox size)")
    p.add_argument("--batch-size", type=int, default=16, help="network batch size (memory only)")
    p.add_argument("--device", default="cpu", help="torch device for LPIPS/FID (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def evaluate_main(args, detector=None) -> int:
    """Run ``posetransfer evaluate`` from parsed arguments; prints the summary; returns 0."""
    size = _size_arg(args.size, "WxH") if args.size else None
    ann_size = None
    if args.annotation_size:
        h, w = _size_arg(args.annotation_size, "HxW")
        ann_size = (h, w)
    summary = evaluate(
        args.pred, args.gt, pairs=args.pairs, profile=args.profile, size=size, out_dir=args.out,
        lpips=not args.no_lpips, fid=not args.no_fid, alexnet_weights=args.alexnet_weights,
        lpips_weights=args.lpips_weights, fid_weights=args.fid_weights, fid_ref=args.fid_ref,
        best_of=args.best_of, masks_dir=args.masks, annotations=args.annotations, annotation_size=ann_size,
        target_poses=args.target_poses, detector=detector, pck_alpha=args.pck_alpha,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    m = summary["metrics"]
    print(f"profile {summary['profile']['name']}: {summary['count']} images"
          + (f", best of {args.best_of}" if args.best_of else ""))
    for k, v in m.items():
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    if summary["fid"] and summary["fid"].get("reference_note"):
        print(f"  note: FID reference: {summary['fid']['reference_note']}")
    print(f"wrote {os.path.join(args.out, CSV_NAME)} and {os.path.join(args.out, SUMMARY_NAME)}")
    return 0
