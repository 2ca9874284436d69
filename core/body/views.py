"""Which way a person faces, from 2-D keypoints alone, and what that means for moving body parts.

When a person turns around, left and right swap sides in the image; in a side view the shoulders and hips
nearly coincide and the limbs of the far side are hidden behind the body. FlowWarp (:mod:`..warp.part_warp`) uses:

* :func:`facing`: the signed width of the torso, ``cross(across, down) / |down|^2`` with ``across`` the
  right -> left shoulder (and hip) vector and ``down`` neck -> mid-hip. About +0.75 for a person facing the
  camera (their right on the image's left), about -0.75 from the back, near 0 in a side view. This is the
  sign of the torso's shoulder x hip orientation: a mirror image of the torso flips it.
* :func:`view_flips`: source and target face opposite ways (both wider than :data:`SIDE_WIDTH`). Then each
  target limb is fed by the source limb on the same IMAGE side (:func:`mirrored`), not by its label: mapping
  the source's right shoulder onto the target's right shoulder would ask the torso for a reflection, which
  no real turn is; mapping by image side keeps every part transform a proper (non-mirrored) map. The
  texture that lands there is the source's front seen where the target shows the back: a warp cannot do
  better, and every part keeps its place and size.
* :func:`near_side`: in a side view, which side faces the camera: the side of the only visible ear, else
  the side the nose points to (a person facing image-right shows their right side), else the side with the
  higher joint confidences. :func:`side_view_depth_order` puts the far side's limbs behind the torso.
* :func:`uncross_legs`: thighs whose 2-D segments cross (hip-knee of one side crossing the other's) are
  taken as swapped knee/ankle labels, a common detector error, and swapped back. Legs genuinely crossed at
  the thigh are rare in photos; crossing at the shins is left alone.
"""

from __future__ import annotations

import numpy as np

from ..pose.keypoints import FLIP_PERMUTATION, JOINT_INDEX, Person
from .parts import BODY_PARTS

SIDE_WIDTH = 0.25  # |facing| below this: a side view (a front view is about 0.75, shoulder width / torso)
_J = JOINT_INDEX
_PAIRS = (("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"))


def facing(person: Person) -> float | None:
    """Signed torso width (see module docstring); None when neck/hips or both shoulder/hip pairs are missing."""
    p, xy = person.present, person.body[:, :2]
    across = [xy[_J[b]] - xy[_J[a]] for a, b in _PAIRS if p[_J[a]] and p[_J[b]]]
    hips = [xy[_J[h]] for h in ("right_hip", "left_hip") if p[_J[h]]]
    if not across or not hips or not p[_J["neck"]]:
        return None
    a = np.mean(across, axis=0)
    down = np.mean(hips, axis=0) - xy[_J["neck"]]
    n2 = float(down @ down)
    if n2 < 1e-6:
        return None
    return float(a[0] * down[1] - a[1] * down[0]) / n2


def is_side_view(person: Person) -> bool:
    f = facing(person)
    return f is not None and abs(f) < SIDE_WIDTH


def view_flips(source: Person, target: Person) -> bool:
    """True when source and target face opposite ways (front <-> back), neither in a side view."""
    fs, ft = facing(source), facing(target)
    return fs is not None and ft is not None and min(abs(fs), abs(ft)) >= SIDE_WIDTH and fs * ft < 0


def mirrored(person: Person) -> Person:
    """The same joints with left and right labels swapped (positions unchanged)."""
    out = person.copy()
    out.body = person.body[list(FLIP_PERMUTATION)].copy()
    return out


MIRROR_PART = {p.name: p.name.replace("right_", "@").replace("left_", "right_").replace("@", "left_")
               for p in BODY_PARTS}


def near_side(person: Person) -> str | None:
    """``"right"`` or ``"left"``: the side facing the camera in a side view (see module docstring)."""
    p, xy, conf = person.present, person.body[:, :2], person.body[:, 2]
    r_ear, l_ear = p[_J["right_ear"]], p[_J["left_ear"]]
    if r_ear != l_ear:
        return "right" if r_ear else "left"
    if p[_J["nose"]]:
        refs = [xy[_J[n]] for n in ("right_ear", "left_ear", "neck") if p[_J[n]]]
        if refs:
            dx = xy[_J["nose"], 0] - np.mean(refs, axis=0)[0]
            if abs(dx) > 1.0:
                return "right" if dx > 0 else "left"
    sides = {s: sum(conf[_J[f"{s}_{j}"]] for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))
             for s in ("right", "left")}
    if abs(sides["right"] - sides["left"]) > 1e-3:
        return max(sides, key=sides.get)
    return None


def side_view_depth_order(person: Person, depth_order: tuple[str, ...]) -> tuple[str, ...]:
    """``depth_order`` (back to front) with the far side's limbs moved behind the torso in a side view."""
    if not is_side_view(person):
        return depth_order
    near = near_side(person)
    if near is None:
        return depth_order
    far = "left_" if near == "right" else "right_"
    back = tuple(n for n in depth_order if n.startswith(far))
    return back + tuple(n for n in depth_order if not n.startswith(far))


def _segments_cross(a, b, c, d) -> bool:
    """Segments a-b and c-d cross at a point strictly inside both."""
    def orient(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0


def uncross_legs(person: Person) -> Person:
    """``person`` with knee and ankle labels swapped back when the thighs cross (see module docstring)."""
    p, xy = person.present, person.body[:, :2]
    rh, rk, lh, lk = (_J[n] for n in ("right_hip", "right_knee", "left_hip", "left_knee"))
    if not (p[rh] and p[rk] and p[lh] and p[lk]) or not _segments_cross(xy[rh], xy[rk], xy[lh], xy[lk]):
        return person
    out = person.copy()
    for a, b in (("right_knee", "left_knee"), ("right_ankle", "left_ankle")):
        out.body[[_J[a], _J[b]]] = person.body[[_J[b], _J[a]]]
    return out
