"""FlowWarp against a quick per-limb warp, on real pairs of one person seen from different sides.

Pairs: every ordered pair of the views in ``samples/turnaround/`` (one armoured character from the MIT
ComfyUI template media: front, back, two side views and a walking front view from a turnaround sheet, and
a smaller front and two side views from a multi-view sheet; about 100 and 176 px tall; keypoints detected
with MediaPipe, see ``samples/README.md``). A pair is *same-facing* when both views face the same way
(``facing.json``), else a *turn*. The source photo is warped into the target view's pose on the target's
canvas and compared with the target photo, on the target person only (its mask: the pixels brighter than
the black backdrop):

* SSIM: the map of Wang et al. (Gaussian window, sigma 1.5, 0..255, K1 0.01, K2 0.03, per channel, then
  averaged) averaged over the person mask; L1: mean absolute difference (0..255) over the person mask.

The baseline ("quick per-limb warp", about what one writes in an afternoon): the whole source image warped by
the least-squares similarity of all common joints as a backdrop, then the torso (least-squares affine of
neck, shoulders and hips), the head (similarity of the face joints) and each limb segment (bone onto bone,
width scaled by the similarity's scale) pasted over it, each from its source capsule of the skeleton.

Run with the project's venv (a few seconds)::

    python benchmarks/compare_perlimb.py            # table: group, pairs, SSIM and L1 of both methods
    python benchmarks/compare_perlimb.py --save DIR # also writes source | target | baseline | FlowWarp panels
    python benchmarks/compare_perlimb.py --height 64  # every view resized to 64 px high first (pedestrian crops)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))

from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp  # noqa: E402
from posetransfer.core.images import load_image  # noqa: E402
from posetransfer.core.pose.keypoints import JOINT_INDEX  # noqa: E402
from posetransfer.core.pose.formats import read_openpose_json  # noqa: E402
from posetransfer.core.pose.geometry import resize  # noqa: E402

DATA = ROOT / "samples" / "turnaround"
LIMBS = [("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_elbow"),
         ("left_elbow", "left_wrist"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
         ("left_hip", "left_knee"), ("left_knee", "left_ankle")]
TORSO = ["neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"]
HEAD = ["nose", "right_eye", "left_eye", "right_ear", "left_ear", "neck"]


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a.astype(np.float64) * 255, b.astype(np.float64) * 255
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (0, 0), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s.mean(-1)[mask].mean())


def person_of(image: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx((image.max(-1) > 0.08).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0


def _pts(person, names):
    return {n: person.body[JOINT_INDEX[n], :2] for n in names if person.present[JOINT_INDEX[n]]}


def _lstsq_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Affine (2, 3) sending ``src`` onto ``dst`` (least squares)."""
    a = np.hstack([src, np.ones((len(src), 1))])
    return np.linalg.lstsq(a, dst, rcond=None)[0].T


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if m is None:
        m = np.array([[1, 0, dst[:, 0].mean() - src[:, 0].mean()], [0, 1, dst[:, 1].mean() - src[:, 1].mean()]])
    return m


def per_limb_warp(image: np.ndarray, source, target, size: tuple[int, int]) -> np.ndarray:
    """The quick per-limb warp (see module docstring); ``size`` is the target canvas (H, W)."""
    h, w = size
    common = [n for n in JOINT_INDEX if source.present[JOINT_INDEX[n]] and target.present[JOINT_INDEX[n]]]
    s_all, t_all = _pts(source, common), _pts(target, common)
    src = np.array([s_all[n] for n in common])
    dst = np.array([t_all[n] for n in common])
    sim = _similarity(src, dst)
    scale = float(np.sqrt(abs(np.linalg.det(sim[:, :2]))))
    out = cv2.warpAffine(image, sim, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    torso_len = np.linalg.norm(src.max(0) - src.min(0)) / 3

    def paste(m, region):
        warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(region.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        nonlocal out
        out = mask * warped + (1 - mask) * out

    hs, ws = image.shape[:2]
    s_t, t_t = _pts(source, TORSO), _pts(target, TORSO)
    names = [n for n in TORSO if n in s_t and n in t_t]
    if len(names) >= 3:
        m = _lstsq_affine(np.array([s_t[n] for n in names]), np.array([t_t[n] for n in names]))
        region = np.zeros((hs, ws), np.uint8)
        cv2.fillConvexPoly(region, cv2.convexHull(np.array([s_t[n] for n in names], np.float32)).astype(np.int32), 1)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8))
        paste(m, region)
    s_h, t_h = _pts(source, HEAD), _pts(target, HEAD)
    names = [n for n in HEAD if n in s_h and n in t_h]
    if len(names) >= 2:
        m = _similarity(np.array([s_h[n] for n in names]), np.array([t_h[n] for n in names]))
        region = np.zeros((hs, ws), np.uint8)
        c = np.mean([s_h[n] for n in names if n != "neck"] or [s_h["neck"]], axis=0)
        cv2.circle(region, tuple(int(v) for v in c), max(2, int(0.3 * torso_len)), 1, -1)
        paste(m, region)
    for a, b in LIMBS:
        s_l, t_l = _pts(source, (a, b)), _pts(target, (a, b))
        if len(s_l) < 2 or len(t_l) < 2:
            continue
        sa, sb, ta, tb = s_l[a], s_l[b], t_l[a], t_l[b]
        ls, lt = np.linalg.norm(sb - sa), np.linalg.norm(tb - ta)
        if ls < 1 or lt < 1:
            continue
        us, ut = (sb - sa) / ls, (tb - ta) / lt
        ns, nt = np.array([-us[1], us[0]]), np.array([-ut[1], ut[0]])
        lin = (lt / ls) * np.outer(ut, us) + scale * np.outer(nt, ns)  # source -> target
        m = np.hstack([lin, (ta - lin @ sa)[:, None]])
        region = np.zeros((hs, ws), np.uint8)
        cv2.line(region, tuple(int(v) for v in sa), tuple(int(v) for v in sb), 1, max(2, int(0.3 * torso_len)))
        paste(m, region)
    return np.clip(out, 0, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--save", type=Path, help="write a panel per pair into this folder")
    ap.add_argument("--height", type=int, help="resize every view (photo and keypoints) to this canvas height "
                    "first, e.g. 100 or 64 to match small pedestrian crops")
    args = ap.parse_args(argv)
    facing = json.loads((DATA / "facing.json").read_text())
    views = {}
    for name in facing:
        pose = read_openpose_json(DATA / f"{name}.pose.json")[0]
        if pose.people and pose.people[0].present.sum() >= 8:
            image = load_image(DATA / f"{name}.png")
            if args.height:
                h, w = image.shape[:2]
                width = max(8, round(w * args.height / h))
                image, pose = resize(image, pose, width, args.height, interpolation="area")
            views[name] = (image, pose)
    rows = {"same-facing": [], "turn": []}
    for s, t in itertools.permutations(views, 2):
        (s_img, s_pose), (t_img, t_pose) = views[s], views[t]
        size = t_img.shape[:2]
        base = per_limb_warp(s_img, s_pose.people[0], t_pose.people[0], size)
        fw = flow_warp([s_img], [s_pose], [t_pose], FlowWarpOptions(retarget=False))[0].image.permute(1, 2, 0).numpy()
        mask = person_of(t_img)
        group = "same-facing" if facing[s] == facing[t] else "turn"
        rows[group].append([masked_ssim(base, t_img, mask), np.abs(base - t_img)[mask].mean() * 255,
                            masked_ssim(fw, t_img, mask), np.abs(fw - t_img)[mask].mean() * 255])
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            tiles = [cv2.resize(x, (size[1], size[0])) for x in (s_img, t_img, base, fw)]
            cv2.imwrite(str(args.save / f"{s}_to_{t}.png"),
                        cv2.cvtColor((np.hstack(tiles) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    print("| group | pairs | per-limb SSIM | FlowWarp SSIM | per-limb L1 | FlowWarp L1 |")
    print("|---|---:|---:|---:|---:|---:|")
    every = rows["same-facing"] + rows["turn"]
    for group, r in (*rows.items(), ("all", every)):
        if r:
            m = np.mean(r, axis=0)
            print(f"| {group} | {len(r)} | {m[0]:.3f} | {m[2]:.3f} | {m[1]:.1f} | {m[3]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
