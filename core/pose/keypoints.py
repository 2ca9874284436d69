"""COCO-18 body keypoints: the joint table, the skeleton, and the pose type the whole project uses.

Conventions (see ``shared/reference/formats.md``):

* Joint order is OpenPose's COCO-18 (``JOINT_NAMES``). "Right" is the person's right.
* Coordinates are PIXELS of the pose's canvas, x to the right, y down, with the pixel centre convention
  of OpenPose/cv2 (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and its integer coordinate is ``j, i``).
* Each joint is ``(x, y, confidence)``. A joint is *missing* when its confidence is ``<= 0``; readers keep
  the stored coordinates of missing joints (usually ``0, 0``) so files round-trip unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

NUM_JOINTS = 18
NUM_FACE = 70
NUM_HAND = 21

JOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

# COCO-17: COCO's person keypoints in COCO's order (also the first 17 points of Halpe-26 and COCO-WholeBody).
COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO-17 keypoint k is COCO-18 joint COCO17_FROM_COCO18[k] (``coco17 = coco18[COCO17_FROM_COCO18]``).
COCO17_FROM_COCO18: tuple[int, ...] = tuple(JOINT_INDEX[name] for name in COCO17_NAMES)
# COCO-18 joint j is COCO-17 keypoint COCO18_FROM_COCO17[j]; None for the neck, which COCO-17 lacks (readers
# make it from the shoulders).
COCO18_FROM_COCO17: tuple[int | None, ...] = tuple(
    COCO17_NAMES.index(name) if name in COCO17_NAMES else None for name in JOINT_NAMES)

# Limbs in OpenPose/ControlNet drawing order; limb i is drawn with COLORS[i].
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# RGB; limb i and joint i use colour i.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# Joint index -> index of its mirror image (used by horizontal flips).
FLIP_PERMUTATION: tuple[int, ...] = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)


def _face_flip_permutation() -> tuple[int, ...]:
    """Mirror permutation of the 70 OpenPose face points (iBUG-68 plus the two pupils)."""
    perm = list(range(NUM_FACE))
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw line
    pairs += [(17 + i, 26 - i) for i in range(5)]                # eyebrows
    pairs += [(31, 35), (32, 34)]                                # nose bottom
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                      # inner lips
    pairs += [(68, 69)]                                          # pupils
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


FACE_FLIP_PERMUTATION: tuple[int, ...] = _face_flip_permutation()

# The largest canvas (of a pose or an image) any entry point accepts: checked on the width and height alone,
# before anything of that size is allocated. MAX_SIDE is ComfyUI's MAX_RESOLUTION (no ComfyUI image is longer).
# MAX_PIXELS (64 Mpx) holds 8K UHD (33 Mpx) and the photos of 61 Mpx cameras, yet bounds the memory: FlowWarp
# peaked at about 200-270 bytes per pixel (1 and 4 Mpx, GrabCut), so 13-18 GB at the cap, where a 16384 x 16384
# canvas would need 55-70 GB (a 20000 x 20000 pose grew a ComfyUI server past 24 GB before it was killed).
MAX_SIDE = 16384
MAX_PIXELS = 64 * 2**20
# A present joint may lie off the canvas (a hand outside a cropped photo, a retargeted limb), but no further
# than this many canvas widths / heights from it: beyond that it is a corrupt value (1e12, 1e300) that would
# overflow the drawing code or make the part transforms singular.
MAX_OFF_CANVAS = 4


def check_canvas_size(width: int, height: int, what: str = "") -> None:
    """ValueError (naming ``what`` when given) when a ``width`` x ``height`` canvas exceeds :data:`MAX_SIDE` per
    side or :data:`MAX_PIXELS` in all (cheap: nothing is allocated)."""
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(f"{what + ': ' if what else ''}canvas {width}x{height} is larger than the {MAX_SIDE} px per side and "
                         f"{MAX_PIXELS // 2**20} Mpx in all this package accepts (memory); resize it first")


def _as_keypoint_array(value, count: int | None, what: str) -> np.ndarray:
    """Flat ``[x, y, c, ...]`` or ``(count, 3)`` -> float64 ``(count, 3)``; a ValueError names ``what``.

    ``count=None`` accepts any number of keypoints (face arrays differ between producers)."""
    if isinstance(value, (str, bytes, dict)):
        raise ValueError(f"{what}: expected {count} keypoints as a list of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected {count} keypoints as numbers, got a value numpy cannot read ({exc})") from None
    if count is None:
        if arr.size % 3:
            raise ValueError(f"{what}: expected a multiple of 3 numbers (x, y, confidence), got {arr.size}")
        count = arr.size // 3
    if arr.ndim == 1:
        if arr.size != count * 3:
            raise ValueError(
                f"{what}: expected a flat list of {count * 3} numbers ({count} keypoints x (x, y, confidence)), "
                f"got {arr.size}")
        arr = arr.reshape(count, 3)
    elif arr.shape != (count, 3):
        raise ValueError(f"{what}: expected shape ({count}, 3), got {tuple(arr.shape)}")
    present = arr[:, 2] > 0
    bad = present & ~np.isfinite(arr[:, :2]).all(axis=1)
    if (~np.isfinite(arr[:, 2])).any() or bad.any():
        idx = int(np.flatnonzero(bad | ~np.isfinite(arr[:, 2]))[0])
        raise ValueError(f"{what}: keypoint {idx} is not finite ({arr[idx].tolist()}); expected real numbers")
    return arr.copy()


@dataclass
class Person:
    """One person: 18 body joints plus optional face (70) and hand (21 each) keypoints, all ``(N, 3)``.

    ``extra`` keeps any other keys of the person's dict (for example ``person_id``) for lossless round trips.
    """

    body: np.ndarray
    face: np.ndarray | None = None
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.body = _as_keypoint_array(self.body, NUM_JOINTS, "body keypoints")
        if self.face is not None:
            self.face = _as_keypoint_array(self.face, None, "face keypoints")
        for name in ("left_hand", "right_hand"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_keypoint_array(value, NUM_HAND, f"{name} keypoints"))

    @classmethod
    def from_xy(cls, xy: Sequence[Sequence[float] | None], confidence: float = 1.0) -> "Person":
        """Build from 18 ``(x, y)`` pairs, ``None`` for a missing joint."""
        if len(xy) != NUM_JOINTS:
            raise ValueError(f"xy: expected {NUM_JOINTS} joints, got {len(xy)}")
        body = np.zeros((NUM_JOINTS, 3))
        for i, p in enumerate(xy):
            if p is not None:
                body[i] = (p[0], p[1], confidence)
        return cls(body)

    @property
    def xy(self) -> np.ndarray:
        """``(18, 2)`` pixel coordinates (meaningless where :attr:`present` is False)."""
        return self.body[:, :2]

    @property
    def present(self) -> np.ndarray:
        """``(18,)`` bool: the joint was detected (confidence > 0)."""
        return self.body[:, 2] > 0

    def joint(self, name_or_index: str | int) -> np.ndarray | None:
        """``(x, y)`` of one joint, or None when it is missing."""
        i = JOINT_INDEX[name_or_index] if isinstance(name_or_index, str) else int(name_or_index)
        return self.body[i, :2].copy() if self.present[i] else None

    def bbox(self) -> tuple[float, float, float, float] | None:
        """``(x0, y0, x1, y1)`` of the present body joints, or None when there are none."""
        pts = self.xy[self.present]
        if len(pts) == 0:
            return None
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def bbox_area(self) -> float:
        """Area of :meth:`bbox` in square pixels; 0.0 when no body joint is present."""
        box = self.bbox()
        return 0.0 if box is None else (box[2] - box[0]) * (box[3] - box[1])

    def copy(self) -> "Person":
        return Person(self.body.copy(),
                      None if self.face is None else self.face.copy(),
                      None if self.left_hand is None else self.left_hand.copy(),
                      None if self.right_hand is None else self.right_hand.copy(),
                      dict(self.extra))

    def map_points(self, fn) -> "Person":
        """A copy with ``fn((N, 2) xy) -> (N, 2)`` applied to the present points of every part."""
        out = self.copy()
        for name in ("body", "face", "left_hand", "right_hand"):
            arr = getattr(out, name)
            if arr is None:
                continue
            keep = arr[:, 2] > 0
            if keep.any():
                arr[keep, :2] = fn(arr[keep, :2])
        return out


@dataclass
class Pose:
    """One frame: any number of people on a ``width`` x ``height`` pixel canvas.

    A batch of frames is a plain ``list[Pose]``. ``extra`` keeps unknown top-level keys of the frame's dict
    (``version``, ``animals``...) for lossless round trips.
    """

    people: list[Person]
    width: int
    height: int
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or not math.isfinite(v) \
                    or int(v) != v or v <= 0:
                raise ValueError(f"canvas {name}: expected a positive integer number of pixels, got {v!r}")
            setattr(self, name, int(v))
        check_canvas_size(self.width, self.height)
        if not isinstance(self.people, list) or not all(isinstance(p, Person) for p in self.people):
            raise ValueError(f"people: expected a list of Person, got {type(self.people).__name__}")

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    def copy(self) -> "Pose":
        return Pose([p.copy() for p in self.people], self.width, self.height, dict(self.extra))

    def map_points(self, fn, width: int | None = None, height: int | None = None) -> "Pose":
        """A copy with every present point mapped by ``fn`` and, optionally, a new canvas size."""
        return Pose([p.map_points(fn) for p in self.people], width or self.width, height or self.height,
                    dict(self.extra))

    def person(self, index: int = 0, what: str = "pose") -> Person:
        """The ``index``-th person, with a clear error when there is none."""
        if not self.people:
            raise ValueError(f"{what}: expected at least one person, got a frame with no people")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"{what}: expected a person index 0 or more (0 = first person), got {index!r}")
        if index >= len(self.people):
            raise ValueError(f"{what}: person index {index} out of range, the frame has {len(self.people)} people")
        return self.people[index]

    def largest_person(self, what: str = "pose") -> Person:
        """The person whose present body joints span the largest bounding box (the first of equals)."""
        if not self.people:
            raise ValueError(f"{what}: expected at least one person, got a frame with no people")
        return max(self.people, key=Person.bbox_area)


def _point_name(part: str, i: int) -> str:
    return f"joint {i} ({JOINT_NAMES[i]})" if part == "body" else f"{part} point {i}"


def check_joints(pose: Pose, what: str) -> None:
    """ValueError naming ``what``, the person and the joint when a present keypoint (body, face or hands) lies
    more than :data:`MAX_OFF_CANVAS` canvas sizes off the canvas (finiteness is :class:`Person`'s check)."""
    lo = -MAX_OFF_CANVAS * np.array([pose.width, pose.height], dtype=np.float64)
    hi = (1 + MAX_OFF_CANVAS) * np.array([pose.width, pose.height], dtype=np.float64)
    for p, person in enumerate(pose.people):
        for part in ("body", "face", "left_hand", "right_hand"):
            arr = getattr(person, part)
            if arr is None:
                continue
            bad = (arr[:, 2] > 0) & ((arr[:, :2] < lo) | (arr[:, :2] > hi)).any(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                x, y = arr[i, :2]
                raise ValueError(f"{what}: person {p}, {_point_name(part, i)} at ({x:.6g}, {y:.6g}) lies far "
                                 f"outside the {pose.width}x{pose.height} canvas; expected coordinates within "
                                 f"{MAX_OFF_CANVAS} canvas sizes of it (x from {lo[0]:g} to {hi[0]:g}, y from "
                                 f"{lo[1]:g} to {hi[1]:g})")


def check_has_pose(person: Person, what: str) -> None:
    """ValueError naming ``what`` when ``person`` has no pose to move a body into: fewer than two present body
    joints, or all of them on one point (within a pixel), which would give a picture without the person."""
    pts = person.xy[person.present]
    if len(pts) == 0:
        raise ValueError(f"{what}: the person has no body joints (every confidence is 0); expected a detected "
                         f"pose (check the detector's threshold, or pick another person)")
    if len(pts) < 2 or (pts.max(axis=0) - pts.min(axis=0)).max() < 1.0:
        x, y = pts[0]
        raise ValueError(f"{what}: all {len(pts)} present body joint(s) lie on one point ({x:.6g}, {y:.6g}); "
                         f"expected a pose with at least two joints apart")

