"""One FlowWarp, whichever door: Python, the CLI's ``transfer`` and the FlowWarp node give the same pictures with
the same defaults; one method vocabulary (parts | single | structure, the node's old ``model`` as an alias); one
rule for a source pose of another canvas size; Render Pose's pixel-centre rule."""

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posetransfer.cli import main
from posetransfer.core.warp.flowwarp import METHODS, FlowWarpOptions, check_flow_model, flow_warp
from posetransfer.core.pose.geometry import fit_source_pose, same_frame
from posetransfer.core.images import encode_image, images_to_tensor, load_image, save_image
from posetransfer.core.pose.keypoints import JOINT_INDEX, Person, Pose
from posetransfer.core.pose.formats import load_pose_keypoint, read_openpose_json
from posetransfer.core.pose.render import render_skeleton
from posetransfer.nodes.flowwarp_nodes import PoseTransferFlowWarp
from posetransfer.nodes.pose_nodes import PoseTransferRenderPose, _on_canvas

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(autouse=True)
def no_comfy(monkeypatch):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)


def one_person(width, height, **joints):
    xy = [None] * 18
    for name, p in joints.items():
        xy[JOINT_INDEX[name]] = p
    return Pose([Person.from_xy(xy)], width, height)


# ---------------------------------------------------------------------------------------------- three doors

def test_core_cli_and_node_give_identical_pictures_with_their_defaults(tmp_path, capsys):
    # A 96x96 copy of the 350x350 photo with the pose detected on the original (every door rescales it), into the
    # jumper's pose on its 400x400 canvas. Defaults everywhere: retarget on, so the output has the photo's canvas.
    photo = cv2.resize(load_image(SAMPLES / "fashion_standing.png"), (96, 96), interpolation=cv2.INTER_AREA)
    src_png = tmp_path / "src.png"
    save_image(src_png, photo)
    image = load_image(src_png)  # what the CLI reads
    src_json, tgt_json = SAMPLES / "fashion_standing.pose.json", SAMPLES / "jumper.pose.json"

    core = flow_warp([image], read_openpose_json(src_json), read_openpose_json(tgt_json), FlowWarpOptions())[0]
    assert tuple(core.image.shape) == (3, 96, 96)  # retargeted onto the photo's canvas

    node = PoseTransferFlowWarp().warp(images_to_tensor(image), json.loads(src_json.read_text()),
                                       json.loads(tgt_json.read_text()))
    torch.testing.assert_close(node[0][0], core.image.permute(1, 2, 0), rtol=0, atol=0)
    torch.testing.assert_close(node[1][0], core.generate_mask, rtol=0, atol=0)
    torch.testing.assert_close(node[2][0], core.flow_image.permute(1, 2, 0), rtol=0, atol=0)

    outs = {name: tmp_path / f"{name}.png" for name in ("out", "mask", "flow")}
    assert main(["transfer", "--source", str(src_png), "--source-pose", str(src_json), "--target-pose", str(tgt_json),
                 "--out", str(outs["out"]), "--mask-out", str(outs["mask"]), "--flow-out", str(outs["flow"])]) == 0
    capsys.readouterr()
    expected = {"out": core.image.permute(1, 2, 0).numpy(), "mask": core.generate_mask.numpy(),
                "flow": core.flow_image.permute(1, 2, 0).numpy()}
    for name, path in outs.items():
        assert path.read_bytes() == encode_image(path, expected[name]).tobytes(), name

    # The pictures are what they say: the mask is 1 - visibility, the flow picture the flow's colours.
    assert torch.equal(core.generate_mask, 1 - core.visibility) and 0 < core.generate_mask.mean() < 0.5
    assert core.flow_image.min() < 0.9


def test_one_set_of_defaults():
    options = FlowWarpOptions()
    assert options.retarget is True and options.method == "parts"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.retarget = False  # the shared default instance cannot be changed by a caller
    # The node's widgets and the CLI's flags take core's defaults.
    required = PoseTransferFlowWarp.INPUT_TYPES()["required"]
    for field in ("method", "segmentation", "background", "fill", "retarget", "anchor", "source_person",
                  "target_person"):
        assert required[field][1]["default"] == getattr(options, field), field
    from posetransfer.cli import build_parser

    args = build_parser().parse_args(["transfer", "--source", "s.png", "--target-pose", "t.json", "--out", "o.png"])
    for field in ("method", "segmentation", "background", "fill", "retarget", "anchor", "source_person",
                  "target_person"):
        assert getattr(args, field) == getattr(options, field), field
    assert build_parser().parse_args(["transfer", "--source", "s", "--target-pose", "t", "--out", "o.png",
                                      "--no-retarget"]).retarget is False


# ------------------------------------------------------------------------------------------------ vocabulary

def test_one_method_vocabulary():
    assert METHODS == ("parts", "single", "structure")
    from posetransfer.cli import TRANSFER_METHODS

    assert set(METHODS) <= set(TRANSFER_METHODS)
    assert PoseTransferFlowWarp.INPUT_TYPES()["required"]["method"][0] == list(METHODS) + ["model"]
    with pytest.raises(ValueError, match="method: 'model' is now named by the flow model's kind: 'single'"):
        FlowWarpOptions(method="model")


class ZeroFlow:
    """A learned flow model that says its kind: zero flow, all visible."""

    def __init__(self, kind):
        self.flowwarp_method, self.calls = kind, 0

    def estimate(self, source, source_pose, target_pose):
        self.calls += 1
        h, w = target_pose.height, target_pose.width
        return torch.zeros(1, 2, h, w), torch.ones(1, 1, h, w)


def test_core_checks_the_flow_model_against_the_method():
    check_flow_model("parts", None)
    check_flow_model("single", ZeroFlow("single"))
    check_flow_model("structure", object.__new__(type("Unsaid", (), {"estimate": lambda *a: None})))  # kind unsaid
    with pytest.raises(ValueError, match="estimator: method 'parts' is training-free .* use method 'structure'"):
        check_flow_model("parts", ZeroFlow("structure"))
    with pytest.raises(ValueError, match="--model: method 'single' needs a trained single-spatial-transformation"):
        check_flow_model("single", None, "--model")
    with pytest.raises(ValueError, match="holds a single-spatial-transformation model.*use method 'single'"):
        check_flow_model("structure", ZeroFlow("single"))


def test_old_workflows_method_model_takes_the_flow_models_kind():
    image = np.random.default_rng(0).random((40, 32, 3)).astype(np.float32)
    pose = one_person(32, 40, neck=(16, 10), right_hip=(13, 28), left_hip=(19, 28), right_shoulder=(10, 11),
                      right_elbow=(8, 19))
    frame = [{"canvas_width": 32, "canvas_height": 40, "people": [{"pose_keypoints_2d": list(
        np.asarray(pose.people[0].body).reshape(-1))}]}]
    for kind in ("single", "structure"):
        model = ZeroFlow(kind)
        old = PoseTransferFlowWarp().warp(images_to_tensor(image), frame, frame, method="model", flow_model=model,
                                          segmentation="skeleton")
        new = PoseTransferFlowWarp().warp(images_to_tensor(image), frame, frame, method=kind, flow_model=model,
                                          segmentation="skeleton")
        assert model.calls == 2
        for a, b in zip(old[:4], new[:4]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with pytest.raises(ValueError, match=f"holds a .* use method '{kind}'"):
            other = "structure" if kind == "single" else "single"
            PoseTransferFlowWarp().warp(images_to_tensor(image), frame, frame, method=other, flow_model=model)


# ---------------------------------------------------------------------------------------------- canvas rule

@pytest.mark.parametrize("a, b, same", [
    ((350, 350), (96, 96), True),
    ((1000, 667), (512, 342), True),    # 667 * 0.512 = 341.5, rounded up
    ((1001, 667), (300, 200), True),    # both sides rounded down
    ((100, 50), (50, 26), True),        # 25 -> 26: within a pixel
    ((100, 50), (50, 27), False),       # two pixels off
    ((96, 120), (96, 96), False),
    ((400, 300), (350, 350), False),
    ((64, 80), (80, 64), False),        # rotated
])
def test_same_frame_within_a_pixel(a, b, same):
    assert same_frame(a, b) is same and same_frame(b, a) is same


def test_fit_source_pose_rescales_by_pixel_centres_or_refuses_by_name():
    pose = one_person(10, 10, neck=(0, 0), nose=(9, 4))
    assert fit_source_pose(pose, 10, 10) is pose
    fitted = fit_source_pose(pose, 20, 20)
    assert (fitted.width, fitted.height) == (20, 20)
    # x -> (x + 0.5) * 2 - 0.5: 0 -> 0.5, 9 -> 18.5, 4 -> 8.5
    np.testing.assert_allclose(fitted.people[0].body[JOINT_INDEX["neck"], :2], (0.5, 0.5))
    np.testing.assert_allclose(fitted.people[0].body[JOINT_INDEX["nose"], :2], (18.5, 8.5))
    with pytest.raises(ValueError, match=r"source_pose\[3\]: canvas 10x10 is not the frame of its image 20x14"):
        fit_source_pose(pose, 20, 14, "source_pose[3]")


def test_every_door_refuses_a_source_pose_of_another_frame(tmp_path, capsys):
    image = np.random.default_rng(1).random((40, 32, 3)).astype(np.float32)
    pose = one_person(32, 32, neck=(16, 10), right_hip=(13, 28), left_hip=(19, 28))  # 32x32: not 32x40's frame
    with pytest.raises(ValueError, match=r"source_pose\[0\]: canvas 32x32 is not the frame of its image 32x40"):
        flow_warp([image], [pose], [pose])
    frame = {"canvas_width": 32, "canvas_height": 32,
             "people": [{"pose_keypoints_2d": list(np.asarray(pose.people[0].body).reshape(-1))}]}
    with pytest.raises(ValueError, match=r"source_pose\[0\]: canvas 32x32 is not the frame of its image 32x40"):
        PoseTransferFlowWarp().warp(images_to_tensor(image), frame, frame)
    save_image(tmp_path / "s.png", image)
    (tmp_path / "p.json").write_text(json.dumps(frame))
    assert main(["transfer", "--source", str(tmp_path / "s.png"), "--source-pose", str(tmp_path / "p.json"),
                 "--target-pose", str(tmp_path / "p.json"), "--out", str(tmp_path / "o.png")]) == 2
    assert "canvas 32x32 is not the frame of its image 32x40" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- Render Pose's canvas

def test_render_pose_stretches_frames_by_pixel_centres():
    # A 10x10 frame drawn on the first frame's 40x40 canvas: x -> (x + 0.5) * 4 - 0.5 (core.pose.geometry), so the
    # neck at (4, 2) lands on (17.5, 9.5) and the right shoulder at (1, 2) on (5.5, 9.5) (not (16, 8) and (4, 8)).
    small = one_person(10, 10, neck=(4, 2), right_shoulder=(1, 2))
    moved = _on_canvas(small, 40, 40)
    np.testing.assert_allclose(moved.people[0].body[JOINT_INDEX["neck"]], (17.5, 9.5, 1.0))
    np.testing.assert_allclose(moved.people[0].body[JOINT_INDEX["right_shoulder"]], (5.5, 9.5, 1.0))
    first = one_person(40, 40, neck=(10, 10))
    frames = [{"canvas_width": p.width, "canvas_height": p.height,
               "people": [{"pose_keypoints_2d": list(np.asarray(p.people[0].body).reshape(-1))}]}
              for p in (first, small)]
    (images,) = PoseTransferRenderPose().render(frames)
    drawn = (images[1].numpy() * 255).round().astype(np.uint8)
    by_hand = one_person(40, 40, neck=(17.5, 9.5), right_shoulder=(5.5, 9.5))
    np.testing.assert_array_equal(drawn, render_skeleton(by_hand))
    assert not np.array_equal(drawn, render_skeleton(one_person(40, 40, neck=(16, 8), right_shoulder=(4, 8))))
