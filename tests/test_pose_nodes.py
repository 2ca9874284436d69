"""Pose nodes on the real samples, with known answers."""

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posetransfer.core.images import load_image
from posetransfer.core.pose.formats import load_pose_keypoint
from posetransfer.core.pose.render import render_skeleton
from posetransfer.core.pose.retarget import retarget_pose
from posetransfer.nodes import bridge
from posetransfer.nodes.pose_nodes import (NO_FILE, PoseTransferLoadPose, PoseTransferRenderPose,
                                           PoseTransferRetargetPose, PoseTransferSelectPerson)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def frame(name):
    return json.loads((SAMPLES / f"{name}.pose.json").read_text())


def body(frame_dict, person=0):
    return np.array(frame_dict["people"][person]["pose_keypoints_2d"]).reshape(18, 3)


@pytest.fixture
def input_dir(monkeypatch, tmp_path):
    """A fallback input folder (ComfyUI hidden) holding two sample pose files and an image."""
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("jumper.pose.json", "fashion_standing.pose.json", "jumper.png"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    monkeypatch.setenv("POSETRANSFER_INPUT_DIR", str(tmp_path))
    return tmp_path


def two_people():
    """A 400x400 frame: fashion_standing shrunk to half size (small), then the jumper (big)."""
    small = body(frame("fashion_standing"))
    small[:, :2] *= 0.5
    big = frame("jumper")
    big["people"].insert(0, {"pose_keypoints_2d": small.reshape(-1).tolist()})
    return big


# ------------------------------------------------------------------------------------------------ load

def test_load_lists_json_files(input_dir):
    files = PoseTransferLoadPose.INPUT_TYPES()["required"]["pose_file"][0]
    assert files == [NO_FILE, "fashion_standing.pose.json", "jumper.pose.json"]


def test_load_file(input_dir):
    poses, width, height = PoseTransferLoadPose().load("jumper.pose.json", "")
    assert (width, height) == (400, 400) and len(poses) == 1
    np.testing.assert_allclose(body(poses[0]), body(frame("jumper")))
    json.dumps(poses)  # plain JSON-able data, as controlnet_aux passes around


def test_pasted_json_wins_and_normalised_becomes_pixels(input_dir):
    f = frame("fashion_standing")
    norm = body(f)
    norm[:, :2] /= 350.0
    pasted = json.dumps([{"people": [{"pose_keypoints_2d": norm.reshape(-1).tolist()}],
                          "canvas_width": 350, "canvas_height": 350}] * 2)
    poses, width, height = PoseTransferLoadPose().load("jumper.pose.json", pasted)
    assert (width, height) == (350, 350) and len(poses) == 2
    present = body(f)[:, 2] > 0
    np.testing.assert_allclose(body(poses[1])[present], body(f)[present], atol=1e-9)


def test_load_errors_name_the_input(input_dir):
    with pytest.raises(ValueError, match="pose_json / pose_file"):
        PoseTransferLoadPose().load(NO_FILE, "  ")
    with pytest.raises(ValueError, match="pose_json.*JSON"):
        PoseTransferLoadPose().load(NO_FILE, "{not json")
    with pytest.raises(ValueError, match="pose_json.*at least one frame"):
        PoseTransferLoadPose().load(NO_FILE, "[]")
    with pytest.raises(ValueError, match="pose_file.*gone.json"):
        PoseTransferLoadPose().load("gone.json", "")
    (input_dir / "bad.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    with pytest.raises(ValueError, match="pose_file 'bad.json'"):
        PoseTransferLoadPose().load("bad.json", "")


def test_validate_and_is_changed(input_dir):
    node = PoseTransferLoadPose
    assert node.VALIDATE_INPUTS(NO_FILE) is True
    assert node.VALIDATE_INPUTS("jumper.pose.json") is True
    assert "pose_file" in node.VALIDATE_INPUTS("missing.json")
    assert "inside the input folder" in node.VALIDATE_INPUTS("../outside.json")
    before = node.IS_CHANGED("jumper.pose.json", "")
    assert node.IS_CHANGED("jumper.pose.json", "") == before
    assert node.IS_CHANGED("jumper.pose.json", "[]") != before
    (input_dir / "jumper.pose.json").write_text(json.dumps(frame("fashion_standing")))
    assert node.IS_CHANGED("jumper.pose.json", "") != before


# ---------------------------------------------------------------------------------------------- render

def test_render_equals_core_render():
    f = frame("jumper")
    (image,) = PoseTransferRenderPose().render([f, two_people()])
    assert image.dtype == torch.float32 and tuple(image.shape) == (2, 400, 400, 3)
    for i, data in enumerate((f, two_people())):
        expected = render_skeleton(load_pose_keypoint(data)[0]).astype(np.float32) / 255.0
        np.testing.assert_array_equal(image[i].numpy(), expected)


def test_render_matches_sample_skeleton_picture():
    (image,) = PoseTransferRenderPose().render(frame("jumper"), stick_scaling=False)
    reference = load_image(SAMPLES / "jumper_skeleton.png")
    drawn, ref = image[0].numpy().max(axis=2) > 0.2, reference.max(axis=2) > 0.2
    # Another tool drew the reference (thinner sticks, slightly different joints): most of our strokes lie
    # within 7 px of its strokes.
    near_ref = cv2.dilate(ref.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert (drawn & near_ref).sum() / drawn.sum() > 0.9


def test_render_stretches_other_canvases_to_the_first():
    a, b = frame("jumper"), frame("fashion_standing")  # 400x400 then 350x350
    (image,) = PoseTransferRenderPose().render([a, b])
    assert tuple(image.shape) == (2, 400, 400, 3)
    pose = load_pose_keypoint(b)[0]
    stretched = pose.map_points(lambda xy: (xy + 0.5) * (400 / 350) - 0.5, 400, 400)  # pixel centres (geometry)
    np.testing.assert_array_equal(image[1].numpy(), render_skeleton(stretched).astype(np.float32) / 255.0)


def test_render_can_be_interrupted():
    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    bridge.set_interrupt_callback(cancel)
    try:
        with pytest.raises(Cancelled):
            PoseTransferRenderPose().render(frame("jumper"))
    finally:
        bridge.set_interrupt_callback(None)


# -------------------------------------------------------------------------------------------- retarget

def test_retarget_one_source_many_targets():
    source = frame("fashion_standing")
    targets = [frame("jumper"), frame("model_red_background")]
    (out,) = PoseTransferRetargetPose().retarget(source, targets, "source", 0, 0)
    assert len(out) == 2
    src = load_pose_keypoint(source)[0]
    for got, target in zip(out, targets):
        assert (got["canvas_width"], got["canvas_height"]) == (350, 350) and len(got["people"]) == 1
        expected = retarget_pose(src, load_pose_keypoint(target)[0], "source")
        np.testing.assert_allclose(body(got), expected.people[0].body)


def test_retarget_n_with_n_pairs_frames():
    sources = [frame("fashion_standing"), frame("model_red_background")]
    targets = [frame("jumper"), frame("jumper")]
    (out,) = PoseTransferRetargetPose().retarget(sources, targets, "target", 0, 0)
    assert [(f["canvas_width"], f["canvas_height"]) for f in out] == [(350, 350), (400, 400)]
    expected = retarget_pose(load_pose_keypoint(sources[1])[0], load_pose_keypoint(targets[1])[0], "target")
    np.testing.assert_allclose(body(out[1]), expected.people[0].body)


def test_retarget_errors_name_the_input():
    node = PoseTransferRetargetPose()
    two, three = [frame("jumper")] * 2, [frame("jumper")] * 3
    with pytest.raises(ValueError, match=r"source_pose: expected 1 frame or as many .* \(3\), got 2"):
        node.retarget(two, three)
    with pytest.raises(ValueError, match="source_person"):
        node.retarget(frame("jumper"), frame("jumper"), "source", 1, 0)
    with pytest.raises(ValueError, match="target_person"):
        node.retarget(frame("jumper"), two_people(), "source", 0, 2)
    with pytest.raises(ValueError, match="anchor"):
        node.retarget(frame("jumper"), frame("jumper"), "middle")
    with pytest.raises(ValueError, match="target_pose"):
        node.retarget(frame("jumper"), "nonsense")


# ---------------------------------------------------------------------------------------------- select

def test_select_largest_and_index():
    node = PoseTransferSelectPerson()
    data = two_people()
    (largest,) = node.select(data, "largest", 0)
    assert len(largest[0]["people"]) == 1
    np.testing.assert_allclose(body(largest[0]), body(frame("jumper")))
    (first,) = node.select([data, data], "index", 0)
    assert len(first) == 2
    np.testing.assert_allclose(body(first[1]), body(data, 0))
    assert (first[0]["canvas_width"], first[0]["canvas_height"]) == (400, 400)


def test_select_errors_name_the_input():
    node = PoseTransferSelectPerson()
    empty = {"people": [], "canvas_width": 10, "canvas_height": 10}
    with pytest.raises(ValueError, match=r"pose_keypoint\[1\].*no people"):
        node.select([frame("jumper"), empty], "largest", 0)
    with pytest.raises(ValueError, match=r"pose_keypoint\[0\] \(index\).*out of range"):
        node.select(two_people(), "index", 2)
    with pytest.raises(ValueError, match="mode"):
        node.select(two_people(), "smallest", 0)


# ------------------------------------------------------------------------- bad input (issue 12, part 4)

def test_load_binary_and_deeply_nested_json_name_the_input(input_dir):
    (input_dir / "photo.json").write_bytes((SAMPLES / "jumper.png").read_bytes())  # was a UnicodeDecodeError
    with pytest.raises(ValueError, match=r"pose_file 'photo.json': expected OpenPose JSON text \(UTF-8\), got binary"):
        PoseTransferLoadPose().load("photo.json", "")
    with pytest.raises(ValueError, match="pose_json: .*nested too deeply"):  # was a RecursionError
        PoseTransferLoadPose().load(NO_FILE, "[" * 100000)
    (input_dir / "deep.json").write_text("[" * 100000)
    with pytest.raises(ValueError, match="pose_file 'deep.json': .*nested too deeply"):
        PoseTransferLoadPose().load("deep.json", "")


def test_load_refuses_a_symlink_out_of_the_input_folder(input_dir, tmp_path_factory):
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.json"
    shutil.copy(SAMPLES / "jumper.pose.json", secret)
    (input_dir / "link.json").symlink_to(secret)
    (input_dir / "inner.json").symlink_to(input_dir / "jumper.pose.json")  # a link that stays inside: fine
    with pytest.raises(ValueError, match=r"pose_file: expected a file inside the input folder .*'link.json'"):
        PoseTransferLoadPose().load("link.json", "")
    assert "inside the input folder" in PoseTransferLoadPose.VALIDATE_INPUTS("link.json")
    files = PoseTransferLoadPose.INPUT_TYPES()["required"]["pose_file"][0]
    assert "link.json" not in files and "inner.json" in files
    assert PoseTransferLoadPose().load("inner.json", "")[1:] == (400, 400)


def test_pose_nodes_refuse_negative_indices_and_targets_without_a_pose():
    with pytest.raises(ValueError, match=r"pose_keypoint\[0\] \(index\): expected a person index 0 or more"):
        PoseTransferSelectPerson().select(two_people(), "index", -1)  # was: the last person
    with pytest.raises(ValueError, match=r"target_pose\[0\] \(target_person\): expected a person index 0 or more"):
        PoseTransferRetargetPose().retarget(frame("fashion_standing"), frame("jumper"), target_person=-1)
    point = frame("jumper")
    point["people"][0]["pose_keypoints_2d"] = [100.0, 120.0, 1.0] * 18
    with pytest.raises(ValueError, match=r"target_pose\[0\] \(target_person 0\): all 18 present .* one point"):
        PoseTransferRetargetPose().retarget(frame("fashion_standing"), point)


def test_render_refuses_joints_far_off_the_canvas():
    far = frame("jumper")
    far["people"][0]["pose_keypoints_2d"][3] = 1e12  # neck x: used to overflow OpenCV's int coordinates
    with pytest.raises(ValueError, match=r"pose_keypoint\[1\]: person 0, joint 1 \(neck\) at \(1e\+12, "):
        PoseTransferRenderPose().render([frame("jumper"), far])
