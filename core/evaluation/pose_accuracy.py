"""Pose accuracy of a generated image: run a pose detector on it and compare with the target pose.

Definitions (the project's; pose-transfer papers use varying PCK/PCKh variants):

* Both poses are brought to the generated image's pixel frame (each scaled by image size / its canvas size).
* Only joints PRESENT in the target count (``total``). A target joint the detector did not find counts as
  wrong.
* Reference size: ``max(width, height)`` of the bounding box of the target's present joints (the "bbox" PCK of
  Yang & Ramanan). A joint is correct when its detected position is within ``alpha * size`` of the target
  (``alpha = 0.1`` by default: PCK@0.1). Fewer than two target joints -> no reference size, PCK is NaN.
* ``mean_error_px``: mean Euclidean distance over joints present in both; ``mean_error_norm`` = that / size.
* Several detected people: the one with most correct joints is scored (ties: lower mean error).

A detector is any object with ``detect(image) -> Pose`` (``image``: float32 ``(H, W, 3)`` RGB in 0..1), such
as ``core.pose.detect.PoseDetector``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..pose.keypoints import Person, Pose

DEFAULT_ALPHA = 0.1


@dataclass
class PoseAccuracy:
    pck: float               # correct / total (NaN when undefined)
    correct: int
    total: int               # target joints present
    detected: int            # of those, found by the detector
    mean_error_px: float     # over joints present in both (NaN when none)
    mean_error_norm: float   # mean_error_px / ref_size
    ref_size: float          # max(bbox w, bbox h) of the target joints, in image pixels
    people_detected: int

    def to_dict(self) -> dict:
        return asdict(self)


def _scaled_person(pose: Pose | Person, size: tuple[int, int] | None, what: str) -> Person:
    """The first person of a Pose scaled to ``size=(height, width)``, or a Person as is."""
    if isinstance(pose, Person):
        return pose
    if not isinstance(pose, Pose):
        raise ValueError(f"{what}: expected a Pose or a Person, got {type(pose).__name__}")
    person = pose.person(0, what)
    if size is None or (pose.height, pose.width) == tuple(size):
        return person
    sx = size[1] / pose.width
    sy = size[0] / pose.height
    return person.map_points(lambda xy: xy * np.array([sx, sy]))


def _people(pose: Pose | Person | None, size, what: str) -> list[Person]:
    if pose is None:
        return []
    if isinstance(pose, Person):
        return [pose]
    if not isinstance(pose, Pose):
        raise ValueError(f"{what}: expected a Pose, got {type(pose).__name__}")
    out = []
    for i in range(len(pose.people)):
        p = pose.people[i]
        if size is not None and (pose.height, pose.width) != tuple(size):
            sx, sy = size[1] / pose.width, size[0] / pose.height
            p = p.map_points(lambda xy, sx=sx, sy=sy: xy * np.array([sx, sy]))
        out.append(p)
    return out


def _score(pred: Person | None, target: Person, ref: float, alpha: float) -> tuple[int, int, float]:
    """(correct, detected, mean error px) of one detected person."""
    t_ok = target.present
    if pred is None:
        return 0, 0, math.nan
    both = t_ok & pred.present
    if not both.any():
        return 0, 0, math.nan
    d = np.linalg.norm(pred.xy[both] - target.xy[both], axis=1)
    correct = int(np.sum(d <= alpha * ref)) if ref > 0 else 0
    return correct, int(both.sum()), float(d.mean())


def pose_accuracy(predicted: Pose | Person | None, target: Pose | Person, image_size: tuple[int, int] | None = None,
                  alpha: float = DEFAULT_ALPHA) -> PoseAccuracy:
    """Compare a detected pose with the target pose (see the module docstring). ``image_size=(height, width)``
    is the generated image's size (both poses are scaled to it); None keeps the coordinates as they are."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha: expected a fraction in (0, 1], got {alpha!r}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
        raise ValueError(f"image_size: expected (height, width), got {image_size!r}")
    tgt = _scaled_person(target, image_size, "target pose")
    people = _people(predicted, image_size, "predicted pose")
    total = int(tgt.present.sum())
    pts = tgt.xy[tgt.present]
    ref = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))) if total >= 2 else 0.0
    best = (0, 0, math.nan)
    for person in people or [None]:
        s = _score(person, tgt, ref, alpha)
        better = s[0] > best[0] or (s[0] == best[0] and (math.isnan(best[2]) or
                                                          (not math.isnan(s[2]) and s[2] < best[2])))
        if better:
            best = s
    correct, detected, err = best
    pck = correct / total if total and ref > 0 else math.nan
    return PoseAccuracy(pck=pck, correct=correct if ref > 0 else 0, total=total, detected=detected,
                        mean_error_px=err, mean_error_norm=err / ref if ref > 0 and not math.isnan(err) else math.nan,
                        ref_size=ref, people_detected=len(people))


def detect_pose(detector, image: np.ndarray, what: str = "image") -> Pose:
    """``detector.detect(image)`` with a check of what came back."""
    if not callable(getattr(detector, "detect", None)):
        raise ValueError(f"detector: expected an object with a detect(image) -> Pose method, got "
                         f"{type(detector).__name__}")
    pose = detector.detect(image)
    if not isinstance(pose, Pose):
        raise ValueError(f"detector: detect({what}) returned {type(pose).__name__}, expected a Pose")
    return pose


def summarize(results: list[PoseAccuracy]) -> dict:
    """Dataset-level numbers: PCK over all target joints (micro average), mean of per-image PCKs, mean
    keypoint error over all matched joints' per-image means, detection rate."""
    total = sum(r.total for r in results if r.ref_size > 0)
    correct = sum(r.correct for r in results if r.ref_size > 0)
    pcks = [r.pck for r in results if not math.isnan(r.pck)]
    errs = [r.mean_error_px for r in results if not math.isnan(r.mean_error_px)]
    nerrs = [r.mean_error_norm for r in results if not math.isnan(r.mean_error_norm)]
    all_total = sum(r.total for r in results)
    return {
        "pck": correct / total if total else math.nan,
        "pck_mean_per_image": float(np.mean(pcks)) if pcks else math.nan,
        "keypoint_error_px": float(np.mean(errs)) if errs else math.nan,
        "keypoint_error_norm": float(np.mean(nerrs)) if nerrs else math.nan,
        "joint_detection_rate": sum(r.detected for r in results) / all_total if all_total else math.nan,
        "images": len(results),
    }
