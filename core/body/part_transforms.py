"""Per-part transforms from keypoints: each body part moves by one affine map fitted to its joints.

Every function returns a ``(2, 3)`` matrix sending TARGET pixel coordinates to SOURCE pixel coordinates
(the direction a backward flow needs), or None when the joints do not determine it.

* Limb segment ``a -> b``: the target bone maps onto the source bone (direction and length), and the
  direction across the limb scales by the ratio of body scales, so a limb keeps its real width when the
  bone looks shorter (foreshortened) in one of the two poses. The along-bone ratio is clamped to
  ``[1/4, 4]`` times the body-scale ratio: a bone pointing at the camera has no usable length. A limb
  whose target bone is more than ``MAX_STRETCH`` times longer than the source's (relative to body scale)
  gets no transform: the source shows it end-on, and its few pixels would be smeared into streaks; the
  target shows a hole to generate there instead; :func:`foreshortened_limb_transforms` gives such a limb a map
  onto the source bone lengthened to the body-proportion length, used only to pick the source texture the
  hole is filled with (see :mod:`..warp.part_warp`), never as real content.
* Torso: least-squares affine over neck, shoulders and hips, ridge-regularised towards the best
  similarity, then checked (:func:`torso_transform`): a map that mirrors (determinant <= 0) or is not
  finite is never used; in order of preference the torso takes this affine with its anisotropy bounded
  (singular values at most ``MAX_ANISOTROPY`` apart, overall scale within ``SCALE_CLAMP`` of the body-scale
  ratio: this bounds shear too, since an affine is rotation x axis scales x rotation), else the best
  similarity (if its scale is within ``SCALE_CLAMP`` of the body-scale ratio), else a translation of the
  centroid with the body-scale ratio. A mirroring fit whose poses both have the neck and hips means left and
  right swapped image sides (a turn through a side view): the torso then follows its neck-to-hips axis like
  a limb (``"axis"``), since a similarity fitted to mirrored points shrinks. A torso seen edge-on (side view, shoulders and hips almost on top of
  each other) is first given a depth: each shoulder and hip pair is widened, about its midpoint and across
  the neck-hip axis, to at least ``SIDE_DEPTH`` body scales (a chest seen from the side), in both the
  transform and the part's region (:mod:`.part_fields`), so the fit is well conditioned and the region
  matches the body. Mirrored views (front <-> back) are handled before fitting, by :mod:`.views`.
  Missing hips are inferred (a virtual hip one body scale below each shoulder, perpendicular to the
  shoulder line, away from the head), so waist-up portraits still get a torso.
* Head: least-squares similarity (rotation, uniform scale, translation) over the face joints and neck, its
  scale kept within ``HEAD_SCALE_CLAMP`` of the body-scale ratio: the face joints' spread changes with the view
  (in a side view eyes and ears nearly coincide), not the head's size, so a front -> side fit alone drew the
  head twice too large.
"""

from __future__ import annotations

import numpy as np

from ..pose.keypoints import FLIP_PERMUTATION, JOINT_INDEX, Person
from .parts import BODY_PARTS, body_scale

NECK, RSH, LSH, RHIP, LHIP, NOSE = (JOINT_INDEX[n] for n in
                                    ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "nose"))
HEAD_JOINTS = tuple(JOINT_INDEX[n] for n in ("nose", "right_eye", "left_eye", "right_ear", "left_ear", "neck"))
ALONG_CLAMP = 4.0
MAX_ANISOTROPY = 2.0  # largest ratio of the torso map's two singular values
SCALE_CLAMP = 2.0  # the torso map's scale stays within [1/2, 2] x the body-scale ratio
MAX_STRETCH = 2.5  # a limb stretched more than this (vs body scale) is foreshortened in the source: left out
HEAD_SCALE_CLAMP = 1.25  # the head map's scale stays within [0.8, 1.25] x the body-scale ratio
SIDE_DEPTH = 0.4  # least shoulder / hip width of a torso, in body scales (the chest's depth in a side view)


def similarity_fit(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) sending ``dst`` points onto ``src`` points (Umeyama)."""
    dst, src = np.asarray(dst, float), np.asarray(src, float)
    if len(dst) == 1:
        return np.array([[1.0, 0, src[0, 0] - dst[0, 0]], [0, 1.0, src[0, 1] - dst[0, 1]]])
    md, ms = dst.mean(0), src.mean(0)
    d, s = dst - md, src - ms
    # Complex-number form of a 2-D similarity: s ~ z * d.
    dz, sz = d[:, 0] + 1j * d[:, 1], s[:, 0] + 1j * s[:, 1]
    denom = float(np.sum(np.abs(dz) ** 2))
    z = np.sum(sz * np.conj(dz)) / denom if denom > 1e-9 else 1.0
    lin = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.hstack([lin, (ms - lin @ md)[:, None]])


def ridge_affine_fit(dst: np.ndarray, src: np.ndarray, strength: float = 0.1) -> np.ndarray:
    """Least-squares affine ``dst -> src`` pulled towards the best similarity.

    Minimises ``sum |A d_i + c - s_i|^2 + lam |A - S|_F^2`` with ``S`` the similarity's linear part and
    ``lam = strength * sum |d_i - mean|^2`` (scale-free).
    """
    dst, src = np.asarray(dst, float), np.asarray(src, float)
    sim = similarity_fit(dst, src)
    if len(dst) < 3:
        return sim
    md, ms = dst.mean(0), src.mean(0)
    d, s = dst - md, src - ms
    lam = strength * float(np.sum(d ** 2))
    lin = (s.T @ d + lam * sim[:, :2]) @ np.linalg.inv(d.T @ d + lam * np.eye(2))
    return np.hstack([lin, (ms - lin @ md)[:, None]])


def limb_affine(t_a, t_b, s_a, s_b, scale_ratio: float) -> np.ndarray | None:
    """Affine map of one limb segment (target ``t_a -> t_b`` onto source ``s_a -> s_b``)."""
    t_a, t_b, s_a, s_b = (np.asarray(v, float) for v in (t_a, t_b, s_a, s_b))
    lt, ls = np.linalg.norm(t_b - t_a), np.linalg.norm(s_b - s_a)
    if lt < 1e-6 and ls < 1e-6:
        return None
    u_t = (t_b - t_a) / lt if lt >= 1e-6 else (s_b - s_a) / ls
    u_s = (s_b - s_a) / ls if ls >= 1e-6 else u_t
    along = np.clip(ls / max(lt, 1e-6), scale_ratio / ALONG_CLAMP, scale_ratio * ALONG_CLAMP)
    n_t, n_s = np.array([-u_t[1], u_t[0]]), np.array([-u_s[1], u_s[0]])
    # Linear part: u_t -> along * u_s, n_t -> scale_ratio * n_s.
    lin = along * np.outer(u_s, u_t) + scale_ratio * np.outer(n_s, n_t)
    return np.hstack([lin, (s_a - lin @ t_a)[:, None]])


def torso_points(person: Person, scale: float) -> dict[int, np.ndarray]:
    """Torso joints by index, with virtual hips when they are missing (see module docstring)."""
    pts = {j: person.body[j, :2].copy() for j in (NECK, RSH, LSH, RHIP, LHIP) if person.present[j]}
    if RSH in pts and LSH in pts and (RHIP not in pts or LHIP not in pts):
        across = pts[LSH] - pts[RSH]
        down = np.array([-across[1], across[0]])
        down /= max(np.linalg.norm(down), 1e-6)
        mid = (pts[RSH] + pts[LSH]) / 2
        up_ref = person.body[NOSE, :2] if person.present[NOSE] else None
        if up_ref is not None and np.dot(up_ref - mid, down) > 0:
            down = -down
        elif up_ref is None and down[1] < 0:  # no face: assume the head is up in the image
            down = -down
        if RHIP not in pts:
            pts[RHIP] = pts[RSH] + down * scale
        if LHIP not in pts:
            pts[LHIP] = pts[LSH] + down * scale
    return _with_depth(pts, scale)


def _with_depth(pts: dict[int, np.ndarray], scale: float) -> dict[int, np.ndarray]:
    """Shoulder and hip pairs narrower than ``SIDE_DEPTH * scale`` across the neck-hip axis, widened to it
    about their midpoints (keeping the side each joint is on; a pair exactly on top of each other puts the
    right joint on the image's left, as seen from the front)."""
    if NECK not in pts or not all(j in pts for j in (RSH, LSH, RHIP, LHIP)):
        return pts
    down = (pts[RHIP] + pts[LHIP]) / 2 - pts[NECK]
    if np.linalg.norm(down) < 1e-6:
        return pts
    down /= np.linalg.norm(down)
    perp = np.array([down[1], -down[0]])  # right -> left of a person facing the camera (+x when upright)
    half = SIDE_DEPTH * scale / 2
    out = dict(pts)
    for r, l in ((RSH, LSH), (RHIP, LHIP)):
        width = float(np.dot(pts[l] - pts[r], perp))
        if abs(width) < 2 * half:
            sign = 1.0 if width >= 0 else -1.0
            mid = (pts[r] + pts[l]) / 2
            along = float(np.dot(pts[l] - pts[r], down))  # keep the pair's tilt along the body
            out[r] = mid - sign * half * perp - along / 2 * down
            out[l] = mid + sign * half * perp + along / 2 * down
    return out


def torso_transform(dst: np.ndarray, src: np.ndarray, ratio: float,
                    axis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, str]:
    """The torso map ``dst -> src`` and which fallback gave it: ``"affine"``, ``"axis"``, ``"similarity"`` or
    ``"translation"`` (see module docstring). ``ratio`` is the body-scale ratio source / target. ``axis``:
    the body axis (neck, hip midpoint) in the target and in the source, when both poses have it."""
    md, ms = dst.mean(0), src.mean(0)
    if len(dst) >= 3:
        lin = ridge_affine_fit(dst, src)[:, :2]
        if np.all(np.isfinite(lin)) and np.linalg.det(lin) <= 0 and axis is not None:
            # The torso's left and right lie on opposite image sides in the two poses (a turn through a side
            # view that view_flips does not mirror). Every fit over the side joints is then wrong: the affine
            # mirrors, and the least-squares similarity of mirrored points shrinks towards zero scale (a torso
            # drawn 1.7x too large on the turnaround samples). The neck-to-hips axis is the one torso direction
            # a turn keeps: map it like a limb (its length ratio along it, the body-scale ratio across).
            t_top, t_bottom, s_top, s_bottom = axis
            m = limb_affine(t_top, t_bottom, s_top, s_bottom, ratio)
            if m is not None:
                u, s, vt = np.linalg.svd(m[:, :2])
                m[:, :2] = u @ np.diag(np.clip(s, ratio / SCALE_CLAMP, ratio * SCALE_CLAMP)) @ vt
                m[:, 2] = s_top - m[:, :2] @ t_top
                return m, "axis"
        if np.all(np.isfinite(lin)) and np.linalg.det(lin) > 0:
            u, s, vt = np.linalg.svd(lin)
            g = float(np.clip(np.sqrt(s[0] * s[1]), ratio / SCALE_CLAMP, ratio * SCALE_CLAMP))
            r = np.sqrt(MAX_ANISOTROPY)
            s = np.clip(s / np.sqrt(s[0] * s[1]), 1 / r, r) * g
            lin = u @ np.diag(s) @ vt
            return np.hstack([lin, (ms - lin @ md)[:, None]]), "affine"
    sim = similarity_fit(dst, src)
    scale = float(np.sqrt(abs(np.linalg.det(sim[:, :2]))))
    if len(dst) >= 2 and ratio / SCALE_CLAMP <= scale <= ratio * SCALE_CLAMP:
        return sim, "similarity"
    lin = ratio * np.eye(2)
    return np.hstack([lin, (ms - lin @ md)[:, None]]), "translation"


def _stretch(source: Person, target: Person, a: int, b: int, ratio: float) -> float:
    """How many times longer bone ``a-b`` is in the target than in the source, relative to body scale."""
    ls = float(np.linalg.norm(source.body[b, :2] - source.body[a, :2]))
    lt = float(np.linalg.norm(target.body[b, :2] - target.body[a, :2]))
    return lt * ratio / max(ls, 1e-6)


def fit_part_transforms(source: Person, target: Person) -> dict[str, np.ndarray]:
    """Transforms of every part that both poses determine, keyed by part name (see module docstring)."""

    s_scale, t_scale = body_scale(source), body_scale(target)
    if s_scale <= 0 or t_scale <= 0:
        return {}
    ratio = s_scale / t_scale
    out: dict[str, np.ndarray] = {}
    both = source.present & target.present
    for part in BODY_PARTS:
        if part.segment is not None:
            a, b = part.segment
            if both[a] and both[b] and _stretch(source, target, a, b, ratio) <= MAX_STRETCH:
                m = limb_affine(target.body[a, :2], target.body[b, :2], source.body[a, :2], source.body[b, :2], ratio)
                if m is not None:
                    out[part.name] = m
        elif part.name == "torso":
            sp, tp = torso_points(source, s_scale), torso_points(target, t_scale)
            common = sorted(set(sp) & set(tp))
            if len(common) >= 2:
                axis = None
                if all(j in sp and j in tp for j in (NECK, RHIP, LHIP)):
                    axis = (tp[NECK], (tp[RHIP] + tp[LHIP]) / 2, sp[NECK], (sp[RHIP] + sp[LHIP]) / 2)
                out["torso"] = torso_transform(np.array([tp[j] for j in common]), np.array([sp[j] for j in common]),
                                               ratio, axis)[0]
        elif part.name == "head":
            common = [j for j in HEAD_JOINTS if both[j]]
            if common:
                m = similarity_fit(target.body[common, :2], source.body[common, :2])
                scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
                lo, hi = ratio / HEAD_SCALE_CLAMP, ratio * HEAD_SCALE_CLAMP
                if len(common) > 1 and not lo <= scale <= hi:  # see module docstring (head)
                    c_t, c_s = target.body[common, :2].mean(0), source.body[common, :2].mean(0)
                    m[:, :2] *= np.clip(scale, lo, hi) / max(scale, 1e-9)
                    m[:, 2] = c_s - m[:, :2] @ c_t
                if len(common) == 1:  # translation only: add the body-scale ratio about that joint
                    c = target.body[common[0], :2]
                    m = np.array([[ratio, 0, 0], [0, ratio, 0]], float)
                    m[:, 2] = source.body[common[0], :2] - ratio * c
                out["head"] = m
    return out


def foreshortened_limb_transforms(source: Person, target: Person) -> dict[str, np.ndarray]:
    """Maps of the limbs :func:`fit_part_transforms` leaves out as foreshortened in the source (target bone more
    than ``MAX_STRETCH`` times longer), onto the source bone lengthened, in its own direction, to the target's
    length times the body-scale ratio (no stretch). Where the source bone is short because the joint detector
    put the end joint too close (a hanging forearm with the wrist found at the elbow) this lands on the limb;
    where the limb really points at the camera it is a guess. So these maps only say which source pixels the
    hole left for the limb is filled from (the limb's own texture), and the hole stays marked to generate."""
    s_scale, t_scale = body_scale(source), body_scale(target)
    if s_scale <= 0 or t_scale <= 0:
        return {}
    ratio = s_scale / t_scale
    both = source.present & target.present
    out: dict[str, np.ndarray] = {}
    for part in BODY_PARTS:
        if part.segment is None:
            continue
        a, b = part.segment
        if not (both[a] and both[b]) or _stretch(source, target, a, b, ratio) <= MAX_STRETCH:
            continue
        s_a, s_b = source.body[a, :2].astype(float), source.body[b, :2].astype(float)
        lt = float(np.linalg.norm(target.body[b, :2] - target.body[a, :2]))
        ls = float(np.linalg.norm(s_b - s_a))
        if ls < 1e-6 or lt < 1e-6:  # no direction to lengthen along
            continue
        m = limb_affine(target.body[a, :2], target.body[b, :2], s_a, s_a + (s_b - s_a) / ls * lt * ratio, ratio)
        if m is not None:
            out[part.name] = m
    return out


LIMB_CHAINS = tuple(tuple(JOINT_INDEX[f"{side}_{j}"] for j in joints)
                    for side in ("right", "left")
                    for joints in (("shoulder", "elbow", "wrist"), ("hip", "knee", "ankle")))
GUESSED_CONFIDENCE = 0.01  # the confidence given to a joint :func:`missing_limb_transforms` placed


def _axis_angle(person: Person) -> float | None:
    """Angle of the torso's axis (neck -> mid-hip), None when the neck or both hips are missing."""
    p, xy = person.present, person.body[:, :2]
    hips = [xy[j] for j in (JOINT_INDEX["right_hip"], JOINT_INDEX["left_hip"]) if p[j]]
    if not p[JOINT_INDEX["neck"]] or not hips:
        return None
    d = np.mean(hips, axis=0) - xy[JOINT_INDEX["neck"]]
    return float(np.arctan2(d[1], d[0]))


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def missing_limb_transforms(source: Person, target: Person) -> tuple[Person, dict[str, np.ndarray]]:
    """Limbs the target pose lacks (an elbow, wrist, knee or ankle not detected: an arm behind the body, a
    hand out of the detector's reach) placed where the source's pose suggests, and their maps.

    Returns the target with the guessed joints added (confidence ``GUESSED_CONFIDENCE``) and, per limb
    segment that ends at a guessed joint, the map onto the source's own limb. Chosen (the target says
    nothing of where the limb is), with the source's bone lengths times the body-scale ratio unless said:

    * a missing elbow or knee between a shoulder and wrist (hip and ankle) the target has: where the two
      bones meet, bent to the side the source's limb bends to (two-bone inverse kinematics; on the line
      between them when they cannot reach). The bones are as long as the target's other arm or leg when it
      shows that one whole (the same person in the same view), else the source's times the body-scale
      ratio. (With the source's lengths only, a far leg of a side view whose body scale differed from the
      front view's was bent into a sharp knee jutting out sideways; a similarity of the source's limb onto
      the two joints kept it straight but also straightened a lifted leg, 0.002-0.008 SSIM less on the real
      video.)
    * else a missing middle joint: the upper arm or thigh at the source's angle to the torso's axis
      (neck -> mid-hip);
    * a missing wrist or ankle: the forearm or shin at the source's angle to the upper arm or thigh (a bent
      elbow stays bent).

    A guess, so the limb is a hole to generate (:func:`~..warp.part_warp.part_flow` uses the maps only for
    its placeholder texture); without it the limb is not drawn at all and the photo's backdrop shows where
    the person's arm or leg should be. A limb the source lacks, or whose shoulder or hip the target lacks,
    is not guessed. The far side of a target seen from the side is guessed too: its limbs are often there
    but undetected (a dancer's far leg lifted behind her); leaving them out lost 0.008 SSIM on the real
    video's turns (``benchmarks/compare_video.py``) and gained 0.002-0.003 on the armoured turnaround, whose
    far arm the body hides (measured with the source's lengths for the knee, before the rule above)."""
    s_scale, t_scale = body_scale(source), body_scale(target)
    if s_scale <= 0 or t_scale <= 0:
        return target, {}
    s_axis, t_axis = _axis_angle(source), _axis_angle(target)
    turn = t_axis - s_axis if s_axis is not None and t_axis is not None else 0.0
    grow = t_scale / s_scale
    body = target.body.copy()
    s_xy, s_ok = source.body[:, :2].astype(float), source.present
    out: dict[str, np.ndarray] = {}

    def guess(j: int, xy: np.ndarray) -> None:
        body[j, :2], body[j, 2] = xy, GUESSED_CONFIDENCE

    for root, mid, end in LIMB_CHAINS:
        have = body[:, 2] > 0
        if not have[root] or have[mid] and have[end] or not (s_ok[root] and s_ok[mid]):
            continue
        placed = []
        if not have[mid] and have[end] and s_ok[end]:
            lengths = _mirror_lengths(target, root, mid, end)
            if lengths is None:
                lengths = (np.linalg.norm(s_xy[mid] - s_xy[root]) * grow, np.linalg.norm(s_xy[end] - s_xy[mid]) * grow)
            guess(mid, _two_bone_joint(body[root, :2], body[end, :2], s_xy[root], s_xy[mid], s_xy[end], lengths))
            placed = [(root, mid), (mid, end)]
        else:
            if not have[mid]:
                guess(mid, body[root, :2] + _rotate(s_xy[mid] - s_xy[root], turn) * grow)
                placed.append((root, mid))
            if not have[end] and s_ok[end]:
                t_p, s_p = body[mid, :2] - body[root, :2], s_xy[mid] - s_xy[root]
                angle = float(np.arctan2(t_p[1], t_p[0]) - np.arctan2(s_p[1], s_p[0]))
                guess(end, body[mid, :2] + _rotate(s_xy[end] - s_xy[mid], angle) * grow)
                placed.append((mid, end))
        for a, b in placed:
            m = limb_affine(body[a, :2], body[b, :2], s_xy[a], s_xy[b], 1 / grow)
            if m is not None:
                out[_SEGMENT_PART[(a, b)]] = m
    if not out:
        return target, {}
    completed = Person(body, target.face, target.left_hand, target.right_hand, dict(target.extra))
    return completed, out


def _mirror_lengths(person: Person, root: int, mid: int, end: int) -> tuple[float, float] | None:
    """The two bone lengths of the other side's arm or leg of ``person`` (the chain mirroring ``root, mid,
    end``), None unless all three of its joints were detected."""
    other = [FLIP_PERMUTATION[j] for j in (root, mid, end)]
    if not person.present[other].all():
        return None
    xy = person.body[other, :2].astype(float)
    return float(np.linalg.norm(xy[1] - xy[0])), float(np.linalg.norm(xy[2] - xy[1]))


def _two_bone_joint(t_root, t_end, s_root, s_mid, s_end, lengths: tuple[float, float]) -> np.ndarray:
    """The middle joint of a two-bone limb from its two ends on the target, the bones ``lengths`` long, bent to
    the side the source's middle joint lies on (of its root -> end line)."""
    t_root, t_end = np.asarray(t_root, float), np.asarray(t_end, float)
    l1, l2 = lengths
    d_vec = t_end - t_root
    d = float(np.linalg.norm(d_vec))
    if d < 1e-6:
        return t_root.copy()
    u = d_vec / d
    if d >= l1 + l2 or d <= abs(l1 - l2):  # cannot reach (or folded flat): on the line, by the bones' lengths
        return t_root + u * d * (l1 / max(l1 + l2, 1e-6))
    along = (d * d + l1 * l1 - l2 * l2) / (2 * d)  # law of cosines
    off = np.sqrt(max(l1 * l1 - along * along, 0.0))
    s_line = s_end - s_root
    side = np.sign(s_line[0] * (s_mid - s_root)[1] - s_line[1] * (s_mid - s_root)[0]) or 1.0
    normal = np.array([-u[1], u[0]])  # the same handedness as the cross product's sign above
    return t_root + u * along + side * off * normal


_SEGMENT_PART = {tuple(p.segment): p.name for p in BODY_PARTS if p.segment is not None}
