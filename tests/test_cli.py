"""The command line end to end on the bundled samples (``main([...])`` in-process, plus one subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import posetransfer
from posetransfer.cli import DEMO_CASES, main
from posetransfer.core.images import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SRC = SAMPLES / "fashion_standing.png"          # 350x350
SRC_POSE = SAMPLES / "fashion_standing.pose.json"
TGT_POSE = SAMPLES / "jumper.pose.json"          # 400x400 canvas


def transfer_args(out, *extra, target=TGT_POSE):
    return ["transfer", "--source", str(SRC), "--source-pose", str(SRC_POSE), "--target-pose", str(target),
            "--out", str(out), *extra]


def size(path):
    h, w = load_image(path).shape[:2]
    return w, h


def test_transfer_writes_result_on_target_canvas(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(transfer_args(out)) == 0
    assert size(out) == (400, 400)
    assert str(out) in capsys.readouterr().out


def test_transfer_retarget_writes_result_on_the_retargeted_canvas(tmp_path):
    # Retargeting puts the target pose on the source person's body, on the SOURCE canvas.
    out = tmp_path / "sub" / "dir" / "out.png"  # parent folders are created
    assert main(transfer_args(out, "--retarget", "--segmentation", "skeleton", "--background", "white")) == 0
    assert size(out) == (350, 350)
    img = load_image(out)
    assert img[0, 0].min() > 0.99  # white background
    assert img.std() > 0.05        # and a person on it


def test_transfer_extra_outputs(tmp_path):
    out, mask, flow, panel = (tmp_path / f"{n}.png" for n in ("out", "mask", "flow", "panel"))
    code = main(transfer_args(out, "--mask-out", str(mask), "--flow-out", str(flow), "--panel-out", str(panel),
                              "--fill", "telea", "--background", "keep"))
    assert code == 0
    assert size(mask) == size(flow) == (400, 400)
    m = load_image(mask)
    assert set(np.unique(m)) <= {0.0, 1.0}                       # binary: white = to generate
    assert 0 < m[..., 0].mean() < 0.5
    f = load_image(flow)
    assert f.min() < 0.9 < f.max()                               # a coloured flow picture, not blank
    pw, ph = size(panel)
    assert ph == 400 and pw >= 4 * 400                           # source | skeleton | result | mask


def test_multi_frame_target_gives_numbered_outputs(tmp_path, capsys):
    frames = [json.loads(TGT_POSE.read_text()), json.loads((SAMPLES / "model_red_background.pose.json").read_text())]
    target = tmp_path / "two.json"
    target.write_text(json.dumps(frames))
    out = tmp_path / "frame.png"
    assert main(transfer_args(out, "--mask-out", str(tmp_path / "m.png"), "--segmentation", "skeleton",
                              target=target)) == 0
    for name in ("frame_0000.png", "frame_0001.png", "m_0000.png", "m_0001.png"):
        assert (tmp_path / name).is_file(), name
    assert not out.exists()
    printed = capsys.readouterr().out
    assert "frame_0001.png" in printed


def test_normalised_target_pose_is_detected(tmp_path):
    frame = json.loads(TGT_POSE.read_text())
    w, h = frame["canvas_width"], frame["canvas_height"]
    kp = frame["people"][0]["pose_keypoints_2d"]
    frame["people"][0]["pose_keypoints_2d"] = [v / (w if i % 3 == 0 else h) if i % 3 < 2 else v
                                               for i, v in enumerate(kp)]
    target = tmp_path / "norm.json"
    target.write_text(json.dumps(frame))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(transfer_args(a, "--segmentation", "skeleton")) == 0
    assert main(transfer_args(b, "--segmentation", "skeleton", target=target)) == 0
    assert np.abs(load_image(a) - load_image(b)).max() < 0.02


@pytest.mark.parametrize("which", ["--source", "--source-pose", "--target-pose"])
def test_missing_file_is_one_line_and_exit_2(tmp_path, capsys, which):
    args = transfer_args(tmp_path / "out.png")
    missing = str(tmp_path / "does_not_exist.json")
    args[args.index(which) + 1] = missing
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert which in err and missing in err


def test_bad_json_and_size_mismatch_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(transfer_args(tmp_path / "o.png", target=bad)) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "invalid JSON" in err and len(err.strip().splitlines()) == 1
    # The jumper's pose (400x400) does not belong to the 350x350 photo.
    args = ["transfer", "--source", str(SRC), "--source-pose", str(TGT_POSE), "--target-pose", str(TGT_POSE),
            "--out", str(tmp_path / "o.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_bad_output_extension_fails_before_work(tmp_path, capsys):
    assert main(transfer_args(tmp_path / "out.nope")) == 2
    assert "--out" in capsys.readouterr().err


def test_render_pose(tmp_path):
    out = tmp_path / "skeleton.png"
    assert main(["render-pose", str(TGT_POSE), "--out", str(out)]) == 0
    img = load_image(out)
    assert img.shape == (400, 400, 3)
    assert img[0, 0].max() == 0 and img.max() > 0.5  # coloured limbs on black


def test_demo_reduced(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--only", "1"]) == 0
    name = DEMO_CASES[0].name
    for suffix in ("", "_mask", "_flow", "_panel"):
        assert (tmp_path / f"{name}{suffix}.png").is_file()
    out = capsys.readouterr().out
    assert f"{name}_panel.png" in out and " s" in out


def test_version_via_python_m_from_another_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "posetransfer", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"posetransfer {posetransfer.__version__}"
