"""gallery/make_before_after.py composes the before/after gallery pictures from two runs' output folders."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_before_after", ROOT / "gallery" / "make_before_after.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _run(folder: Path, script, value: int) -> None:
    """A run folder whose every picture is one grey ``value``; turnaround and video panels hold 4 tiles of
    40 x 70."""
    (folder / "demo").mkdir(parents=True)
    (folder / "turnaround").mkdir()
    (folder / "video").mkdir()
    for case in script.DEMO_CASES:
        for suffix in ("", "_mask"):
            cv2.imwrite(str(folder / "demo" / f"{case}{suffix}.png"), np.full((50, 60, 3), value, np.uint8))
    for sub, pairs in (("turnaround", script.TURN_PAIRS), ("video", script.VIDEO_PAIRS)):
        for pair in pairs:
            panel = np.concatenate([np.full((70, 40, 3), 10 * (i + 1), np.uint8) for i in range(4)], axis=1)
            panel[:, 120:] = value  # the FlowWarp tile
            cv2.imwrite(str(folder / sub / f"{pair}.png"), panel)


def test_grids_put_before_and_after_side_by_side(tmp_path):
    script = _script()
    _run(tmp_path / "before", script, 60)
    _run(tmp_path / "after", script, 200)
    script.main(["--before", str(tmp_path / "before"), "--after", str(tmp_path / "after"), "--out", str(tmp_path)])
    demo = cv2.imread(str(tmp_path / "demo_before_after.jpg")).astype(float)
    cell, header = script.CELL, script.HEADER
    assert demo.shape == (header + cell * len(script.DEMO_CASES), 4 * cell, 3)
    body = demo[header:]
    assert abs(body[:, :2 * cell].mean() - 60) < 3 and abs(body[:, 2 * cell:].mean() - 200) < 3
    for name, w, pairs in (("turnaround", script.TURN_CELL, script.TURN_PAIRS),
                           ("video", script.VIDEO_CELL, script.VIDEO_PAIRS)):
        turn = cv2.imread(str(tmp_path / f"{name}_before_after.jpg")).astype(float)[header:]
        assert turn.shape[:2] == (len(pairs) * round(70 * w / 40), 5 * w), name
        # source | target | per-limb from the run before, then FlowWarp before, FlowWarp after.
        for i, value in enumerate((10, 20, 30, 60, 200)):
            assert abs(turn[:, i * w + 5:(i + 1) * w - 5].mean() - value) < 4, (name, i)


def test_only_writes_the_pictures_asked_for_from_their_folder_alone(tmp_path):
    script = _script()
    for run, value in (("before", 60), ("after", 200)):
        _run(tmp_path / run, script, value)
        for sub in ("demo", "turnaround"):  # only video/ is there
            for f in (tmp_path / run / sub).iterdir():
                f.unlink()
    script.main(["--before", str(tmp_path / "before"), "--after", str(tmp_path / "after"), "--out",
                 str(tmp_path / "out"), "--only", "video_before_after"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["video_before_after.jpg"]


def test_missing_run_files_name_the_file(tmp_path):
    script = _script()
    with pytest.raises(FileNotFoundError, match="fashion_standing_to_jumper_retargeted.png"):
        script.main(["--before", str(tmp_path), "--after", str(tmp_path), "--out", str(tmp_path / "out")])
