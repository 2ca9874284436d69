"""FlowWarp against the quick per-limb warp on real video frames: the same person a fraction of a second to a
second apart, in front of a real (not black) backdrop, which is what the external pedestrian set looks like.

Clips (``samples/video/``, see ``samples/README.md``): ``kling`` (a man dancing in front of a graffiti wall,
~110 px tall), ``street`` (a woman dancing on a night street, she turns to a side view in the last frame)
and ``robe`` (a dancer in a wide robe, a loose-clothes case). Frames 0, 11, 22, 33 and 44 of each clip's 45,
keypoints by MediaPipe Pose mapped to COCO-18 (``core.pose.detect.MediaPipeDetector``'s mapping); frames
with no or a wrong detection are left out. Pairs are every ordered pair of frames within one clip, never
across clips. A pair is a *turn* when ``core.body.views`` says the view flips or one of the two frames is a
side view and the other is not, else *same-facing*.

Metrics as in ``compare_perlimb.py`` (person-masked SSIM and L1, 0..255), on the target person. The backdrop
is real here, so the target person's mask is FlowWarp's own segmentation of the target frame
(``segmentation.person_mask`` > 0.5, GrabCut seeded by the target keypoints): the same mask for both methods.
The baseline is ``compare_perlimb.per_limb_warp``.

Run with the project's venv (a few seconds)::

    python benchmarks/compare_video.py            # table per clip and group, then over all pairs
    python benchmarks/compare_video.py --save DIR # also writes source | target | per-limb | FlowWarp panels
    python benchmarks/compare_video.py --height 128  # every frame resized to 128 px high first (pedestrian size)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_perlimb import masked_ssim, per_limb_warp  # noqa: E402
from posetransfer.core.body.segmentation import person_mask  # noqa: E402
from posetransfer.core.body.views import is_side_view, view_flips  # noqa: E402
from posetransfer.core.images import load_image  # noqa: E402
from posetransfer.core.pose.formats import read_openpose_json  # noqa: E402
from posetransfer.core.pose.geometry import resize  # noqa: E402
from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp  # noqa: E402

DATA = ROOT / "samples" / "video"


def clip_of(name: str) -> str:
    """``street_f22`` -> ``street``: the file name's prefix says the clip."""
    return name.rsplit("_f", 1)[0]


import os
UP = float(os.environ.get("UP", "2"))


def up_warp(s_img, s_pose, t_pose):
    h, w = s_img.shape[:2]
    H, W = round(h * UP), round(w * UP)
    si, sp = resize(s_img, s_pose, W, H, interpolation=os.environ.get("INTERP", "bilinear"))
    _, tp = resize(None, t_pose, W, H) if False else (None, t_pose.map_points(lambda xy: (xy + 0.5) * UP - 0.5, W, H))
    out = flow_warp([si], [sp], [tp], FlowWarpOptions(retarget=False))[0].image.permute(1, 2, 0).numpy()
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)


def within_clip_pairs(names):
    """Every ordered pair of frames of the same clip."""
    return [(s, t) for s, t in itertools.permutations(names, 2) if clip_of(s) == clip_of(t)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--save", type=Path, help="write a panel per pair into this folder")
    ap.add_argument("--height", type=int, help="resize every frame (photo and keypoints) to this canvas height "
                                                "first, keeping the aspect ratio (e.g. 128: pedestrian-size people)")
    args = ap.parse_args(argv)
    views = {}
    for path in sorted(DATA.glob("*.png")):
        image = load_image(path)
        pose = read_openpose_json(path.with_suffix(".pose.json"))[0]
        if args.height:
            h, w = image.shape[:2]
            image, pose = resize(image, pose, max(8, round(w * args.height / h)), args.height, interpolation="area")
        views[path.stem] = (image, pose, person_mask(image, pose.people[0]) > 0.5)
    rows: dict[tuple[str, str], list] = {}
    for s, t in within_clip_pairs(sorted(views)):
        (s_img, s_pose, _), (t_img, t_pose, mask) = views[s], views[t]
        a, b = s_pose.people[0], t_pose.people[0]
        base = per_limb_warp(s_img, a, b, t_img.shape[:2])
        fw = up_warp(s_img, s_pose, t_pose)
        group = "turn" if view_flips(a, b) or is_side_view(a) != is_side_view(b) else "same-facing"
        rows.setdefault((clip_of(s), group), []).append(
            [masked_ssim(base, t_img, mask), np.abs(base - t_img)[mask].mean() * 255,
             masked_ssim(fw, t_img, mask), np.abs(fw - t_img)[mask].mean() * 255])
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.save / f"{s}_to_{t}.png"),
                        cv2.cvtColor((np.hstack([s_img, t_img, base, fw]) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    print("| clip | group | pairs | per-limb SSIM | FlowWarp SSIM | per-limb L1 | FlowWarp L1 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    every = []
    for (clip, group), r in sorted(rows.items()):
        m = np.mean(r, axis=0)
        every += r
        print(f"| {clip} | {group} | {len(r)} | {m[0]:.3f} | {m[2]:.3f} | {m[1]:.1f} | {m[3]:.1f} |")
    m = np.mean(every, axis=0)
    print(f"| all | all | {len(every)} | {m[0]:.3f} | {m[2]:.3f} | {m[1]:.1f} | {m[3]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
