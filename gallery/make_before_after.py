"""Compose gallery/demo_before_after.jpg, turnaround_before_after.jpg and video_before_after.jpg from two runs
of FlowWarp.

Each run is a folder holding ``demo/`` (``posetransfer demo --out RUN/demo``), ``turnaround/``
(``python benchmarks/compare_perlimb.py --save RUN/turnaround``) and ``video/``
(``python benchmarks/compare_video.py --save RUN/video``), made by the code before and after a change
(``--only NAME`` writes just one picture, from just its subfolder)::

    git worktree add --detach /tmp/before <commit>; mkdir -p /tmp/pkg && ln -sfn /tmp/before /tmp/pkg/posetransfer
    PYTHONPATH=/tmp/pkg python -m posetransfer demo --out /tmp/run_before/demo
    PYTHONPATH=/tmp/pkg python /tmp/before/benchmarks/compare_perlimb.py --save /tmp/run_before/turnaround
    python -m posetransfer demo --out /tmp/run_after/demo
    python benchmarks/compare_perlimb.py --save /tmp/run_after/turnaround
    python gallery/make_before_after.py --before /tmp/run_before --after /tmp/run_after --label-before <commit>

demo_before_after: one row per demo case of :data:`DEMO_CASES`; columns result and mask (white = to generate)
before, then after. turnaround_before_after: one row per pair of :data:`TURN_PAIRS`; columns source, real
target view, the quick per-limb warp, FlowWarp before, FlowWarp after (compare_perlimb's panels are source |
target | per-limb | FlowWarp side by side). video_before_after: the same for the pairs of :data:`VIDEO_PAIRS`
(compare_video's panels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent
DEMO_CASES = ("fashion_standing_to_jumper_retargeted", "fashion_standing_to_jumper",
              "fashion_standing_to_model_red_background", "model_red_background_to_jumper_retargeted")
TURN_PAIRS = ("turn_front_to_turn_side1", "turn_front_to_turn_back", "turn_side1_to_turn_back",
              "turn_back_to_turn_side1", "turn_side2_to_turn_hero", "pix_front_to_pix_side1")
VIDEO_PAIRS = ("street_f22_to_street_f33", "street_f22_to_street_f44", "street_f11_to_street_f44",
               "kling_f00_to_kling_f11")
CELL = 220       # demo cells are scaled to this width and height
TURN_CELL = 100  # turnaround cells: this wide
VIDEO_CELL = 175  # video cells: this wide (the frames' own width)
HEADER = 24


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: missing or not an image; run the commands in this script's docstring")
    return image


def _header(labels: list[str], width: int) -> np.ndarray:
    row = np.full((HEADER, width * len(labels), 3), 255, np.uint8)
    for i, text in enumerate(labels):
        cv2.putText(row, text, (i * width + 4, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return row


def demo_grid(before: Path, after: Path, label_before: str, label_after: str) -> np.ndarray:
    rows = []
    for case in DEMO_CASES:
        cells = []
        for run in (before, after):
            for suffix in ("", "_mask"):
                cells.append(cv2.resize(_read(run / "demo" / f"{case}{suffix}.png"), (CELL, CELL),
                                        interpolation=cv2.INTER_AREA))
        rows.append(np.hstack(cells))
    labels = [f"{label_before}: result", f"{label_before}: mask", f"{label_after}: result", f"{label_after}: mask"]
    return np.vstack([_header(labels, CELL), *rows])


def panel_grid(before: Path, after: Path, label_before: str, label_after: str, folder: str = "turnaround",
               pairs: tuple[str, ...] = TURN_PAIRS, cell: int = TURN_CELL) -> np.ndarray:
    """One row per pair: the before run's four panel cells (source | target | per-limb | FlowWarp) and the
    after run's FlowWarp cell, from the compare scripts' ``--save`` panels in ``RUN/folder``."""
    rows = []
    for pair in pairs:
        old, new = _read(before / folder / f"{pair}.png"), _read(after / folder / f"{pair}.png")
        w = old.shape[1] // 4  # source | target | per-limb | FlowWarp
        cells = [old[:, i * w:(i + 1) * w] for i in range(4)] + [new[:, 3 * w:4 * w]]
        h = round(cells[0].shape[0] * cell / w)
        rows.append(np.hstack([cv2.resize(c, (cell, h), interpolation=cv2.INTER_AREA) for c in cells]))
    labels = ["source", "target", "per-limb", label_before, label_after]
    return np.vstack([_header(labels, cell), *rows])


def video_grid(before: Path, after: Path, label_before: str, label_after: str) -> np.ndarray:
    return panel_grid(before, after, label_before, label_after, "video", VIDEO_PAIRS, VIDEO_CELL)


GRIDS = {"demo_before_after": demo_grid, "turnaround_before_after": panel_grid, "video_before_after": video_grid}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="run folder of the code before (demo/, turnaround/)")
    ap.add_argument("--after", type=Path, required=True, help="run folder of the code after")
    ap.add_argument("--label-before", default="before", help="column label of the run before (e.g. its commit)")
    ap.add_argument("--label-after", default="after", help="column label of the run after")
    ap.add_argument("--out", type=Path, default=ROOT, help="folder for the .jpg files")
    ap.add_argument("--only", choices=sorted(GRIDS), nargs="+", default=sorted(GRIDS),
                    help="write only these pictures (each needs its run subfolder: demo/, turnaround/, video/)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        image = GRIDS[name](args.before, args.after, args.label_before, args.label_after)
        cv2.imwrite(str(args.out / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(args.out / f"{name}.jpg")


if __name__ == "__main__":
    main()
