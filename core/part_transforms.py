"""Per-part transforms from keypoints: each body part moves by one affine map fitted to its joints.

Every function returns a ``(2, 3)`` matrix sending TARGET pixel coordinates to SOURCE pixel coordinates
(the direction a backward flow needs), or None when the joints do not determine it.

* Limb segment ``a -> b``: the target bone maps onto the source bone (direction and length), and the
  direction across the limb scales by the ratio of body scales, so a limb keeps its real width when the
  bone looks shorter (foreshortened) in one of the two poses. The along-bone ratio is clamped to
  ``[1/4, 4]`` times the body-scale ratio: a bone pointing at the camera has no usable length.
* Torso: least-squares affine over neck, shoulders and hips, ridge-regularised towards the best
  similarity so that a torso seen edge-on (shoulders on top of each other) does not blow up.
  Missing hips are inferred (a virtual hip one body scale below each shoulder, perpendicular to the
  shoulder line, away from the head), so waist-up portraits still get a torso.
* Head: least-squares similarity (rotation, uniform scale, translation) over the face joints and neck.
"""

from __future__ import annotations

import numpy as np

from .keypoints import JOINT_INDEX, Person
from .parts import body_scale

NECK, RSH, LSH, RHIP, LHIP, NOSE = (JOINT_INDEX[n] for n in
                                    ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "nose"))
HEAD_JOINTS = tuple(JOINT_INDEX[n] for n in ("nose", "right_eye", "left_eye", "right_ear", "left_ear", "neck"))
ALONG_CLAMP = 4.0


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
    return pts


def fit_part_transforms(source: Person, target: Person) -> dict[str, np.ndarray]:
    """Transforms of every part that both poses determine, keyed by part name (see module docstring)."""
    from .parts import BODY_PARTS

    s_scale, t_scale = body_scale(source), body_scale(target)
    if s_scale <= 0 or t_scale <= 0:
        return {}
    ratio = s_scale / t_scale
    out: dict[str, np.ndarray] = {}
    both = source.present & target.present
    for part in BODY_PARTS:
        if part.segment is not None:
            a, b = part.segment
            if both[a] and both[b]:
                m = limb_affine(target.body[a, :2], target.body[b, :2], source.body[a, :2], source.body[b, :2], ratio)
                if m is not None:
                    out[part.name] = m
        elif part.name == "torso":
            sp, tp = torso_points(source, s_scale), torso_points(target, t_scale)
            common = sorted(set(sp) & set(tp))
            if len(common) >= 2:
                out["torso"] = ridge_affine_fit(np.array([tp[j] for j in common]), np.array([sp[j] for j in common]))
        elif part.name == "head":
            common = [j for j in HEAD_JOINTS if both[j]]
            if common:
                m = similarity_fit(target.body[common, :2], source.body[common, :2])
                if len(common) == 1:  # translation only: add the body-scale ratio about that joint
                    c = target.body[common[0], :2]
                    m = np.array([[ratio, 0, 0], [0, ratio, 0]], float)
                    m[:, 2] = source.body[common[0], :2] - ratio * c
                out["head"] = m
    return out
