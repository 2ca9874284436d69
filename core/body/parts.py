"""Body-part decomposition of the COCO-18 skeleton.

Two levels:

* ``BODY_PARTS``: eleven nearly rigid parts (head, torso, and the two segments of each limb). Each moves by
  one transform in the training-free FlowWarp, and each has a label in :func:`~..pose.render.render_part_labels`.
* ``SUB_POSES``: the structure-aware part-flow paper's three groups (head, torso, legs). The paper only
  names them ("grouping the human joints ... based on the inherent connection relationship"); we put the
  arms with the torso, which they hang from, and let the hips belong to both torso and legs, where they join.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..pose.keypoints import JOINT_INDEX


@dataclass(frozen=True)
class BodyPart:
    """A named rigid part.

    ``joints`` are the joints whose positions determine the part's transform. ``segment`` is the bone
    ``(a, b)`` for limb parts (a capsule around it is the part's region) and None for head and torso,
    whose regions are polygons around their joints. ``label`` is its value in part-label masks (0 is
    background).
    """

    name: str
    joints: tuple[int, ...]
    segment: tuple[int, int] | None
    label: int


def _j(*names: str) -> tuple[int, ...]:
    return tuple(JOINT_INDEX[n] for n in names)


BODY_PARTS: tuple[BodyPart, ...] = (
    BodyPart("head", _j("nose", "neck", "right_eye", "left_eye", "right_ear", "left_ear"), None, 1),
    BodyPart("torso", _j("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"), None, 2),
    BodyPart("right_upper_arm", _j("right_shoulder", "right_elbow"), _j("right_shoulder", "right_elbow"), 3),
    BodyPart("right_forearm", _j("right_elbow", "right_wrist"), _j("right_elbow", "right_wrist"), 4),
    BodyPart("left_upper_arm", _j("left_shoulder", "left_elbow"), _j("left_shoulder", "left_elbow"), 5),
    BodyPart("left_forearm", _j("left_elbow", "left_wrist"), _j("left_elbow", "left_wrist"), 6),
    BodyPart("right_thigh", _j("right_hip", "right_knee"), _j("right_hip", "right_knee"), 7),
    BodyPart("right_shin", _j("right_knee", "right_ankle"), _j("right_knee", "right_ankle"), 8),
    BodyPart("left_thigh", _j("left_hip", "left_knee"), _j("left_hip", "left_knee"), 9),
    BodyPart("left_shin", _j("left_knee", "left_ankle"), _j("left_knee", "left_ankle"), 10),
)
PART_BY_NAME: dict[str, BodyPart] = {p.name: p for p in BODY_PARTS}
PART_NAMES: tuple[str, ...] = tuple(p.name for p in BODY_PARTS)
NUM_PART_LABELS = len(BODY_PARTS) + 1  # + background

# Sub-poses of the structure-aware part-flow paper (head, torso, legs), as joint index sets.
SUB_POSES: dict[str, tuple[int, ...]] = {
    "head": _j("nose", "neck", "right_eye", "left_eye", "right_ear", "left_ear"),
    "torso": _j("neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                "left_wrist", "right_hip", "left_hip"),
    "leg": _j("right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle"),
}
# Parts that make up each sub-pose (for cropping part images and masks).
SUB_POSE_PARTS: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "torso": ("torso", "right_upper_arm", "right_forearm", "left_upper_arm", "left_forearm"),
    "leg": ("right_thigh", "right_shin", "left_thigh", "left_shin"),
}

# Default depth order for compositing parts in the target frame, back to front: where parts overlap, a
# later one wins. Limbs lie over the torso (arms crossing the chest stay visible), arms over legs.
DEFAULT_DEPTH_ORDER: tuple[str, ...] = (
    "torso", "right_thigh", "left_thigh", "right_shin", "left_shin", "head",
    "right_upper_arm", "left_upper_arm", "right_forearm", "left_forearm",
)


def body_scale(body) -> float:
    """A length in pixels that grows with the person's size, for limb widths and blur radii.

    The torso length (neck to mid-hip) when it is known; otherwise estimated from other bones with typical
    adult proportions (shoulder width ~0.75, upper arm ~0.6, thigh ~0.8, neck-nose ~0.45 torso lengths).
    ``body`` is a :class:`~..pose.keypoints.Person` or an ``(18, 3)`` array. Returns 0.0 when nothing is known.
    """
    import numpy as np

    arr = getattr(body, "body", body)
    present = arr[:, 2] > 0
    xy = arr[:, :2]

    def dist(a, b):
        return float(np.hypot(*(xy[a] - xy[b]))) if present[a] and present[b] else None

    j = JOINT_INDEX
    nose, neck, rsh, lsh = j["nose"], j["neck"], j["right_shoulder"], j["left_shoulder"]
    rhip, lhip = j["right_hip"], j["left_hip"]
    rel, lel, rkn, lkn = j["right_elbow"], j["left_elbow"], j["right_knee"], j["left_knee"]
    if present[neck] and (present[rhip] or present[lhip]):
        hips = [xy[i] for i in (rhip, lhip) if present[i]]
        return float(np.hypot(*(xy[neck] - np.mean(hips, axis=0))))
    estimates = []
    for (a, b), ratio in (((rsh, lsh), 0.75), ((rsh, rel), 0.6), ((lsh, lel), 0.6),
                          ((rhip, rkn), 0.8), ((lhip, lkn), 0.8),
                          ((rkn, j["right_ankle"]), 0.8), ((lkn, j["left_ankle"]), 0.8),
                          ((rel, j["right_wrist"]), 0.55), ((lel, j["left_wrist"]), 0.55), ((nose, neck), 0.45),
                          ((rhip, lhip), 0.35)):
        d = dist(a, b)
        if d:
            estimates.append(d / ratio)
    return float(np.median(estimates)) if estimates else 0.0


# Kinematic tree of the parts: child -> (parent, the joint they share). The torso is the root.
PART_PARENT: dict[str, tuple[str, int]] = {
    "head": ("torso", JOINT_INDEX["neck"]),
    "right_upper_arm": ("torso", JOINT_INDEX["right_shoulder"]),
    "left_upper_arm": ("torso", JOINT_INDEX["left_shoulder"]),
    "right_forearm": ("right_upper_arm", JOINT_INDEX["right_elbow"]),
    "left_forearm": ("left_upper_arm", JOINT_INDEX["left_elbow"]),
    "right_thigh": ("torso", JOINT_INDEX["right_hip"]),
    "left_thigh": ("torso", JOINT_INDEX["left_hip"]),
    "right_shin": ("right_thigh", JOINT_INDEX["right_knee"]),
    "left_shin": ("left_thigh", JOINT_INDEX["left_knee"]),
}


# Half-width of each part's region as a fraction of ``body_scale`` (torso length). Limbs: capsule radius
# around the bone. Torso: how far the shoulder/hip polygon is dilated. Head: the least radius of the
# capsule from the neck to the face centre (it grows with the face joints' spread, see ``part_fields``).
PART_RADIUS: dict[str, float] = {
    "head": 0.24,
    "torso": 0.16,
    "right_upper_arm": 0.16, "left_upper_arm": 0.16,
    "right_forearm": 0.13, "left_forearm": 0.13,
    "right_thigh": 0.22, "left_thigh": 0.22,
    "right_shin": 0.17, "left_shin": 0.17,
}


def part_radius(part_name: str, scale: float) -> float:
    """Region half-width in pixels of part ``part_name`` for a person of ``body_scale`` ``scale``."""
    if part_name not in PART_RADIUS:
        raise ValueError(f"part_name: unknown part {part_name!r}, expected one of {sorted(PART_RADIUS)}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale: expected a finite length >= 0 in pixels, got {scale!r}")
    return PART_RADIUS[part_name] * float(scale)

# Hands and feet lie beyond the wrist and ankle joints: the forearm and shin regions reach past their end
# joint by this fraction of ``body_scale`` along the bone (hands hang, feet stand below the ankle).
PART_EXTENSION: dict[str, float] = {
    "right_forearm": 0.12, "left_forearm": 0.12,
    "right_shin": 0.2, "left_shin": 0.2,
}
