"""Pose retargeting: put a target pose on the source person's body (the source's bone lengths, the target's angles).

What is kept and what is estimated:

* The skeleton is the tree :data:`BONES` rooted at the neck. Walking from the root, each retargeted bone keeps
  the TARGET bone's direction and takes the SOURCE bone's length.
* A source bone whose two joints are not both present takes the length of its mirror bone (left <-> right) when
  that one is measurable, else ``BONE_RATIOS[bone] * scale`` where ``scale`` is
  :func:`~..body.parts.body_scale` of the source (or, when that is 0, the median of ``length / ratio`` over the
  source's measurable bones).
* Foreshortening: a photo shows a bone's projection, never longer than the bone. A measured bone shorter
  than ``FORESHORTENED`` times its mirror bone takes the mirror's length (the better of left and right: a
  shin pointing at the camera in a jump measured 26 px against 103 px for the other); a bone whose own and
  mirror lengths are both below ``FORESHORTENED`` times ``BONE_RATIOS[bone] * scale`` takes that
  body-proportion prior. Bones without a mirror (neck, face) keep their measured length. The TARGET's
  bones are estimated the same way, and a retargeted bone is the source's length times the target bone's
  shown / estimated length (at most 1): a bone foreshortened in the target stays foreshortened, one
  foreshortened only in the source gets its full length back (a pose retargeted onto itself is unchanged).
* Joints missing in the target stay missing (their stored values are kept). A present target joint whose
  parent is missing in the target (a knee without its hip, or the neck itself) keeps the target's offset from
  its nearest present ancestor, scaled by ``k = scale(source) / scale(target)`` (``k = 1`` when the target has
  no measurable bone); with no present ancestor the offset is taken from the centroid of the target's present
  joints. A zero-length target bone has no direction: its child is put on its parent.
* Position, ``anchor="source"``: the result is translated so that its root coincides with the source's root,
  the root being the mid-hip when both hips are present in both poses, else the neck when present in both,
  else the centroid of the joints present in both (else of all present joints of each).
  ``anchor="target"``: the result's root (same rule, on the target alone) is put at the target's root.
* Confidences are the target's. The face and hands are the TARGET's, moved rigidly with their attached joint
  (face: nose; hands: their wrist; else that joint's nearest present ancestor): a point ``p`` goes to
  ``attached' + (p - attached) * k``. The source's own face and hands are not used; ``extra`` is the source's.
"""

from __future__ import annotations

import numpy as np

from .geometry import fit_pose
from .keypoints import FLIP_PERMUTATION, JOINT_INDEX, NUM_JOINTS, Person, Pose
from ..body.parts import body_scale

ROOT = JOINT_INDEX["neck"]


def _bone(parent: str, child: str) -> tuple[int, int]:
    return JOINT_INDEX[parent], JOINT_INDEX[child]


# Typical bone length as a fraction of body_scale (the torso length, neck to mid-hip), for adults seen from the
# front; consistent with the ratios body_scale itself uses (shoulder width 0.75, upper arm 0.6, forearm 0.55,
# thigh and shin 0.8, neck-nose 0.45, hip width 0.35). Neck-hip is sqrt(1 + 0.175^2); the face bones are
# anthropometric guesses (nose-eye ~0.1, eye-ear ~0.12), checked against the sample photos.
# Parent -> child, in an order where every parent is placed before its children.
BONE_RATIOS: dict[tuple[int, int], float] = {
    _bone("neck", "right_shoulder"): 0.375, _bone("right_shoulder", "right_elbow"): 0.6,
    _bone("right_elbow", "right_wrist"): 0.55,
    _bone("neck", "left_shoulder"): 0.375, _bone("left_shoulder", "left_elbow"): 0.6,
    _bone("left_elbow", "left_wrist"): 0.55,
    _bone("neck", "right_hip"): 1.02, _bone("right_hip", "right_knee"): 0.8, _bone("right_knee", "right_ankle"): 0.8,
    _bone("neck", "left_hip"): 1.02, _bone("left_hip", "left_knee"): 0.8, _bone("left_knee", "left_ankle"): 0.8,
    _bone("neck", "nose"): 0.45, _bone("nose", "right_eye"): 0.1, _bone("right_eye", "right_ear"): 0.12,
    _bone("nose", "left_eye"): 0.1, _bone("left_eye", "left_ear"): 0.12,
}
BONES: tuple[tuple[int, int], ...] = tuple(BONE_RATIOS)
_RHIP, _LHIP = JOINT_INDEX["right_hip"], JOINT_INDEX["left_hip"]
PARENT: dict[int, int] = {c: p for p, c in BONES}
ANCHORS: tuple[str, ...] = ("source", "target")
FORESHORTENED = 0.6  # a bone shorter than this times its mirror (or its body-proportion prior) is foreshortened
# Which body joint each extra part hangs from.
_PART_JOINT = {"face": JOINT_INDEX["nose"], "right_hand": JOINT_INDEX["right_wrist"],
               "left_hand": JOINT_INDEX["left_wrist"]}


def _bone_length(person: Person, bone: tuple[int, int]) -> float | None:
    a, b = bone
    if person.present[a] and person.present[b]:
        return float(np.hypot(*(person.xy[a] - person.xy[b])))
    return None


def _scale(person: Person) -> float:
    """body_scale, or the median of ``length / ratio`` over measurable bones; 0.0 when nothing is measurable."""
    scale = body_scale(person)
    if scale > 0:
        return scale
    estimates = [length / BONE_RATIOS[b] for b in BONES if (length := _bone_length(person, b))]
    return float(np.median(estimates)) if estimates else 0.0


def _source_lengths(source: Person, scale: float) -> dict[tuple[int, int], float]:
    """Every bone's length on the source: measured (unless clearly foreshortened), else the mirror bone's,
    else ``ratio * scale`` (see the module docstring)."""
    lengths = {}
    for bone in BONES:
        mirror = (FLIP_PERMUTATION[bone[0]], FLIP_PERMUTATION[bone[1]])
        prior = BONE_RATIOS[bone] * scale
        own = _bone_length(source, bone)
        other = _bone_length(source, mirror) if mirror != bone else None
        if own is None:
            length = prior if other is None else other
        elif other is not None and own < FORESHORTENED * other:
            length = other
        else:
            length = own
        if mirror != bone and length < FORESHORTENED * prior and (other is None or other < FORESHORTENED * prior):
            length = prior
        lengths[bone] = length
    return lengths


def _root_joints(a: np.ndarray, b: np.ndarray) -> list[int]:
    """Joints that define the root for two presence masks: both hips, else the neck, else all common joints."""
    both = a & b
    if both[_RHIP] and both[_LHIP]:
        return [_RHIP, _LHIP]
    if both[ROOT]:
        return [ROOT]
    return np.flatnonzero(both).tolist()


def retarget(source: Person, target: Person, anchor: str = "source") -> Person:
    """The target's pose with the source's bone lengths, in the source's frame (see the module docstring).

    Both people are in pixels of the same canvas. A ValueError names the input when the source has no
    measurable bone or the target no present joint.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor: expected one of {ANCHORS}, got {anchor!r}")
    t_xy, t_present = target.xy, target.present
    if not t_present.any():
        raise ValueError("target: no present body joints, nothing to retarget")
    s_scale = _scale(source)
    if s_scale <= 0:
        raise ValueError("source: no usable joints (need two connected body joints to measure the body)")
    t_scale = _scale(target)
    k = s_scale / t_scale if t_scale > 0 else 1.0
    lengths = _source_lengths(source, s_scale)
    t_lengths = _source_lengths(target, t_scale)

    out = np.zeros((NUM_JOINTS, 2))
    ref = t_xy[ROOT] if t_present[ROOT] else t_xy[t_present].mean(axis=0)

    def attach(j: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(target, result) position of ``j`` or its nearest present ancestor; the centroid reference if none."""
        while j is not None and not t_present[j]:
            j = PARENT.get(j)
        return (ref, ref) if j is None else (t_xy[j], out[j])

    if t_present[ROOT]:
        out[ROOT] = ref
    for p, c in BONES:
        if not t_present[c]:
            continue
        if t_present[p]:
            d = t_xy[c] - t_xy[p]
            norm = float(np.hypot(*d))
            # The target's own foreshortening is kept: its projected / estimated true length, at most 1.
            shown = min(1.0, norm / t_lengths[(p, c)]) if t_lengths[(p, c)] > 0 else 1.0
            out[c] = out[p] + (d / norm * lengths[(p, c)] * shown if norm > 0 else 0.0)
        else:
            t_a, o_a = attach(p)
            out[c] = o_a + (t_xy[c] - t_a) * k

    if anchor == "source":
        joints = _root_joints(source.present, t_present)
        if joints:
            shift = source.xy[joints].mean(axis=0) - out[joints].mean(axis=0)
        else:
            shift = source.xy[source.present].mean(axis=0) - out[t_present].mean(axis=0)
    else:
        joints = _root_joints(t_present, t_present)
        shift = t_xy[joints].mean(axis=0) - out[joints].mean(axis=0)

    body = target.body.copy()
    body[t_present, :2] = out[t_present] + shift
    result = Person(body, extra=dict(source.extra))
    for name, joint in _PART_JOINT.items():
        part = getattr(target, name)
        if part is None:
            continue
        part = part.copy()
        keep = part[:, 2] > 0
        t_a, o_a = attach(joint)
        part[keep, :2] = o_a + shift + (part[keep, :2] - t_a) * k
        setattr(result, name, part)
    return result


def retarget_pose(source: Pose, target: Pose, anchor: str = "source", source_index: int = 0,
                  target_index: int = 0) -> Pose:
    """:func:`retarget` of one person of each frame; the result is one person on the SOURCE canvas.

    With ``anchor="target"`` the target person is first mapped onto the source canvas by
    ``fit_pose(..., mode="contain")``; with ``anchor="source"`` the target's canvas does not matter.
    """
    s = source.person(source_index, "source")
    t = target.person(target_index, "target")
    if anchor == "target":
        t = fit_pose(Pose([t], target.width, target.height), source.width, source.height, "contain").people[0]
    return Pose([retarget(s, t, anchor)], source.width, source.height, dict(source.extra))
