"""Redraw the FlowWarp workflows' template thumbnails (workflows/<name>.jpg) with the current FlowWarp.

    python gallery/make_workflow_thumbnails.py [--out workflows]

Each thumbnail shows what its workflow computes on the bundled photos (fashion_standing.png moved into the
pose of jumper.pose.json, retargeted as the workflows do): flowwarp_basic = source | target skeleton | result,
flowwarp_inpaint_sd = FlowWarp result | mask to generate | target skeleton (the inputs of its inpainting pass),
flowwarp_refine_pcdms = source | FlowWarp result (the coarse image its Refine stage starts from; the refined
picture needs the released weights). The PCDMs / RePose thumbnails show inputs only and are not redrawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp
from posetransfer.core.images import load_image
from posetransfer.core.pose.formats import read_openpose_json
from posetransfer.core.pose.render import render_skeleton

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
WIDTH = 512  # the thumbnails' width (ComfyUI's template browser scales them to its cards)
GAP = 3      # white gap between panels


def _panels(images: list[np.ndarray]) -> np.ndarray:
    """Square float RGB panels side by side, WIDTH wide, as uint8 BGR for cv2."""
    side = (WIDTH - GAP * (len(images) - 1)) // len(images)
    row = np.full((side, WIDTH, 3), 255, np.uint8)
    for i, img in enumerate(images):
        img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
        tile = cv2.resize((np.clip(img, 0, 1) * 255).round().astype(np.uint8), (side, side),
                          interpolation=cv2.INTER_AREA)
        row[:, i * (side + GAP): i * (side + GAP) + side] = tile
    return row[..., ::-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "workflows", help="folder for the .jpg files")
    args = ap.parse_args(argv)
    image = load_image(SAMPLES / "fashion_standing.png")
    source = read_openpose_json(SAMPLES / "fashion_standing.pose.json")[0]
    target = read_openpose_json(SAMPLES / "jumper.pose.json")[0]
    result = flow_warp([image], [source], [target], FlowWarpOptions(retarget=True))[0]
    warped = result.image.permute(1, 2, 0).cpu().numpy()
    mask = result.generate_mask.cpu().numpy()
    skeleton = render_skeleton(result.target_pose).astype(np.float32) / 255.0
    thumbnails = {"flowwarp_basic": [image, skeleton, warped],
                  "flowwarp_inpaint_sd": [warped, mask, skeleton],
                  "flowwarp_refine_pcdms": [image, warped]}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, images in thumbnails.items():
        path = args.out / f"{name}.jpg"
        cv2.imwrite(str(path), _panels(images), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(path)


if __name__ == "__main__":
    main()
