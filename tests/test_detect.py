"""Pose detection: tiny ONNX models written here emit known YOLOX / SimCC outputs, so every step has a known answer.

The fake pose model "sees" the brightest pixel of its input crop: its SimCC x (y) output is the crop's column (row)
maximum, each bin repeated twice (split ratio 2), plus a per-keypoint constant (the keypoint's score). A white dot
in the photo therefore comes back as every keypoint, at the dot's pixel, through the real crop and inverse maps.
"""

import json
import logging
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the tests build tiny ONNX models with the onnx package (test extra)")
from onnx import TensorProto, helper  # noqa: E402

import onnxruntime  # noqa: E402

from posetransfer.core.pose import detect as D  # noqa: E402
from posetransfer.core.pose.keypoints import JOINT_NAMES  # noqa: E402
from posetransfer.core.pose.formats import load_pose_keypoint, read_openpose_json  # noqa: E402
from posetransfer.nodes import bridge  # noqa: E402
from posetransfer.nodes.detect_nodes import NO_FILE, PoseTransferPoseDetect  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
COCO17_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                "right_knee", "left_ankle", "right_ankle")
BLAZEPOSE_NAMES = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
                   "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
                   "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
                   "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
                   "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
                   "left_foot_index", "right_foot_index")
# What the fake pose model outputs for a white dot: the largest normalised channel value of pure white.
DOT = float(np.max((np.float32(255) - D.POSE_MEAN) / D.POSE_STD))
POSE_HW = (20, 10)   # fake pose model input (H, W): aspect 0.5
DET_HW = (64, 64)    # fake detector input; 8x8 + 4x4 + 2x2 = 84 anchor rows


# ------------------------------------------------------------------------------------------ model builders

def save_model(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def const(name, array, dtype=np.float32):
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(array, dtype), name))


def detector_model(path, rows, size=DET_HW, batch=1, labels=None):
    """A 'YOLOX' whose first output is always ``rows`` (shape (N, cols)); the image input is used (times 0)."""
    rows = np.asarray(rows, dtype=np.float32)
    nodes = [const("k", rows[None]),
             helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             const("zero", 0.0),
             helper.make_node("Mul", ["m", "zero"], ["m0"]),
             helper.make_node("Add", ["k", "m0"], ["output"])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, *rows.shape])]
    if labels is not None:
        nodes.append(const("labels", np.asarray(labels)[None], np.int64))
        outputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, [1, len(labels)]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, *size])]
    return save_model(path, nodes, inputs, outputs)


def pose_model(path, scores, size=POSE_HW, split=(2, 2), batch="N", names=("simcc_x", "simcc_y")):
    """Fake SimCC model: keypoint k is the brightest pixel of the crop with score ``scores[k]`` (dot pixels).
    ``names``: its outputs, x then y (one name: only the x output)."""
    bias = (np.asarray(scores, dtype=np.float32) - np.float32(DOT)).reshape(1, -1, 1)
    nodes = [const("bias", bias), const("unsq", [1, 3], np.int64), const("shape", [0, 1, -1], np.int64)]
    for tag, axes, k, out in zip(("col", "row"), ([1, 2], [1, 3]), split, names):
        nodes += [helper.make_node("ReduceMax", ["input"], [f"{tag}_max"], axes=axes, keepdims=0),
                  helper.make_node("Unsqueeze", [f"{tag}_max", "unsq"], [f"{tag}_4d"]),
                  helper.make_node("Concat", [f"{tag}_4d"] * k, [f"{tag}_rep"], axis=3),
                  helper.make_node("Reshape", [f"{tag}_rep", "shape"], [f"{tag}_flat"]),
                  helper.make_node("Add", [f"{tag}_flat", "bias"], [out])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *size])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, len(scores), side * k])
               for n, side, k in zip(names, (size[1], size[0]), split)]
    return save_model(path, nodes, inputs, outputs)


def yolox_row(centre, wh, stride, cell, obj, cls):
    """A raw YOLOX row that decodes to the box ``centre``, ``wh`` (model-input pixels) at grid ``cell``."""
    return [centre[0] / stride - cell[0], centre[1] / stride - cell[1],
            math.log(wh[0] / stride), math.log(wh[1] / stride), obj, *cls]


def row_index(stride, cell, size=DET_HW):
    start = sum((size[0] // s) * (size[1] // s) for s in D.YOLOX_STRIDES if s < stride)
    return start + cell[1] * (size[1] // stride) + cell[0]


# Scene: a 256x128 photo (detector letterbox ratio 0.25), two people far apart, one white dot each.
IMG_W, IMG_H = 256, 128
BOX_A, DOT_A = (40.0, 44.0, 56.0, 76.0), (52, 66)    # centre (48, 60); crop scale (20, 40); dot at crop (7, 13)
BOX_B, DOT_B = (192.0, 48.0, 208.0, 80.0), (194, 52)  # centre (200, 64); dot at crop (2, 4)
SCORE_A, SCORE_B = 0.9 * 0.95, 0.8 * 0.5


def scene_rows():
    rows = np.zeros((84, 7))  # 2 classes
    rows[row_index(8, (1, 1))] = yolox_row((12, 15), (4, 8), 8, (1, 1), 0.9, (0.95, 0.1))        # A
    rows[row_index(8, (2, 1))] = yolox_row((12.25, 15), (4, 8), 8, (2, 1), 0.8, (0.9, 0.0))      # A, duplicate
    rows[row_index(16, (3, 1))] = yolox_row((50, 16), (4, 8), 16, (3, 1), 0.8, (0.5, 0.5))       # B
    rows[row_index(32, (1, 1))] = yolox_row((40, 40), (20, 20), 32, (1, 1), 0.9, (0.1, 0.99))   # not a person
    rows[row_index(8, (6, 6))] = yolox_row((52, 52), (4, 4), 8, (6, 6), 0.9, (0.3, 0.0))         # 0.27: too weak
    return rows


def scene_image():
    img = np.zeros((IMG_H, IMG_W, 3), dtype=np.float32)
    for x, y in (DOT_A, DOT_B):
        img[y, x] = 1.0
    return img


BODY_SCORES = [0.5 + 0.02 * k for k in range(17)]
BODY_SCORES[3] = 0.2  # left ear: below the 0.3 threshold


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "det": detector_model(d / "yolox_tiny.onnx", scene_rows()),
        "pose": pose_model(d / "rtm_body.onnx", BODY_SCORES),
        "pose_b1": pose_model(d / "rtm_body_b1.onnx", BODY_SCORES, batch=1),
    }


def cpu_detector(det, pose, **kw):
    return D.PoseDetector(det, pose, providers=["CPUExecutionProvider"], **kw)


def expected_body(dot, scores, threshold=0.3):
    """COCO-18 body for keypoints all at ``dot`` with COCO-17 ``scores``, derived from the joint NAMES."""
    body = np.zeros((18, 3))
    for j, name in enumerate(JOINT_NAMES):
        if name == "neck":
            continue
        s = scores[COCO17_NAMES.index(name)]
        if s >= threshold:
            body[j] = (dot[0], dot[1], s)
    body[1] = (dot[0], dot[1], min(scores[COCO17_NAMES.index("left_shoulder")],
                                   scores[COCO17_NAMES.index("right_shoulder")]))
    return body


# ------------------------------------------------------------------------------------------ pure steps

def test_letterbox_top_left_pad_114():
    img = np.full((128, 256, 3), 200, dtype=np.uint8)
    canvas, r = D.letterbox(img, (64, 64))
    assert r == 0.25 and canvas.shape == (64, 64, 3)
    assert (canvas[:32] == 200).all() and (canvas[32:] == 114).all()
    canvas, r = D.letterbox(np.zeros((10, 32, 3), np.uint8), (64, 64))
    assert r == 2 and (canvas[:20] == 0).all() and (canvas[20:] == 114).all()


def test_decode_yolox_known_rows():
    rows = np.zeros((84, 6))
    rows[9] = [0.5, 0.875, math.log(0.5), 0.0, 0.8, 0.5]    # stride 8, cell (1, 1)
    rows[71] = [0.125, 0.0, 0.0, math.log(2.0), 1.0, 1.0]   # stride 16, cell (3, 1)
    rows[83] = [0.0, 0.0, 0.0, 0.0, 1.0, 0.25]              # stride 32, cell (1, 1)
    boxes, scores = D.decode_yolox(rows, (64, 64))
    assert np.allclose(boxes[9], [10, 11, 14, 19])      # centre (12, 15), 4 x 8
    assert np.allclose(boxes[71], [42, 0, 58, 32])      # centre (50, 16), 16 x 32
    assert np.allclose(boxes[83], [16, 16, 48, 48])     # centre (32, 32), 32 x 32
    assert scores.shape == (84, 1) and np.isclose(scores[9, 0], 0.4) and np.isclose(scores[83, 0], 0.25)
    with pytest.raises(ValueError, match=r"expected \(84, 5 \+ classes\)"):
        D.decode_yolox(rows[:80], (64, 64))


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    assert D.nms(boxes, [0.9, 0.8, 0.7, 0.95], 0.45).tolist() == [3, 2]
    pair = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=float)  # IoU exactly 1/3
    assert D.nms(pair, [0.9, 0.8], 1 / 3).tolist() == [0, 1]
    assert D.nms(pair, [0.9, 0.8], 0.3).tolist() == [0]


def test_box_center_scale():
    c, s = D.box_center_scale(BOX_A, 0.5)
    assert c.tolist() == [48, 60] and s.tolist() == [20, 40]
    c, s = D.box_center_scale((0, 0, 100, 10), 0.75)  # wide box: height grows to the aspect ratio
    assert c.tolist() == [50, 5] and np.allclose(s, [125, 125 / 0.75])


def test_crop_affine_and_its_inverse_are_exact():
    img = np.zeros((90, 120, 3), np.uint8)
    centre, scale = np.array([61.0, 45.0]), np.array([48.0, 64.0])  # 24x32 input: s = 0.5
    m = D.crop_matrix(centre, scale, (32, 24))
    for p in [(61, 45), (43, 29), (79, 75)]:
        img[:] = 0
        img[p[1], p[0]] = 255
        crop = cv2.warpAffine(img, m, (24, 32), flags=cv2.INTER_LINEAR)
        qy, qx = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
        assert crop[qy, qx, 0] == 255
        assert D.crop_to_image(np.array([qx, qy], float), centre, scale, (32, 24)).tolist() == list(p)
    q = np.array([[0.0, 0.0], [23.5, 31.25]])
    back = D.crop_to_image(q, centre, scale, (32, 24))
    assert np.allclose(np.c_[back, np.ones(2)] @ m.T, q)


def test_decode_simcc():
    x = np.zeros((1, 3, 8))
    y = np.zeros((1, 3, 6))
    x[0, 0, 5], y[0, 0, 2] = 0.9, 0.7      # (2.5, 1.0), score min(0.9, 0.7)
    x[0, 1, 1], y[0, 1, 4] = 0.4, 0.6      # (0.5, 2.0), score 0.4
    locs, scores = D.decode_simcc(x, y, 2.0)  # keypoint 2: all zero -> score 0, location -1
    assert locs[0].tolist() == [[2.5, 1.0], [0.5, 2.0], [-1, -1]]
    assert np.allclose(scores[0], [0.7, 0.4, 0.0])


def test_coco17_to_coco18_by_joint_names():
    pts = np.array([[10.0 * k, 100.0 + k] for k in range(17)])
    body = D.to_coco18(pts, np.full(17, 0.9))
    for j, name in enumerate(JOINT_NAMES):
        if name != "neck":
            assert body[j].tolist() == [*pts[COCO17_NAMES.index(name)], 0.9], name
    ls, rs = pts[COCO17_NAMES.index("left_shoulder")], pts[COCO17_NAMES.index("right_shoulder")]
    assert body[1].tolist() == [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, 0.9]


def test_neck_needs_both_shoulders():
    pts = np.arange(34, dtype=float).reshape(17, 2)
    scores = np.full(17, 0.9)
    scores[COCO17_NAMES.index("right_shoulder")] = 0.29
    body = D.to_coco18(pts, scores, threshold=0.3)
    assert body[1].tolist() == [0, 0, 0] and body[JOINT_NAMES.index("right_shoulder")].tolist() == [0, 0, 0]
    scores[COCO17_NAMES.index("right_shoulder")] = 0.3  # at the threshold counts; neck takes the smaller score
    scores[COCO17_NAMES.index("left_shoulder")] = 0.8
    assert D.to_coco18(pts, scores, threshold=0.3)[1, 2] == 0.3


def test_blazepose_mapping_by_joint_names():
    pts = np.array([[float(k), 2.0 * k] for k in range(33)])
    body = D.to_coco18(pts, np.full(33, 0.8), D.BLAZEPOSE_TO_COCO18, threshold=0.5)
    for j, name in enumerate(JOINT_NAMES):
        if name != "neck":
            assert body[j, :2].tolist() == pts[BLAZEPOSE_NAMES.index(name)].tolist(), name


# ------------------------------------------------------------------------------------------ the pipeline

def test_detect_boxes_decodes_thresholds_and_nms(models):
    det = cpu_detector(models["det"], models["pose"])
    assert det.detector_size == DET_HW and det.pose_size == POSE_HW
    boxes = det.detect_boxes(scene_image())
    assert boxes.shape == (2, 5)
    assert np.allclose(boxes[0], [*BOX_A, SCORE_A], atol=1e-4)
    assert np.allclose(boxes[1], [*BOX_B, SCORE_B], atol=1e-4)


def test_detector_input_is_letterboxed_bgr_0_255(models):
    det = cpu_detector(models["det"], models["pose"])
    seen = []

    class Spy:
        def __init__(self, session):
            self.session = session

        def get_inputs(self):
            return self.session.get_inputs()

        def run(self, names, feed):
            seen.append(next(iter(feed.values())))
            return self.session.run(names, feed)

    det._det = Spy(det._det)
    img = np.zeros((IMG_H, IMG_W, 3), np.uint8)
    img[..., 0] = 200  # red
    det.detect_boxes(img)
    blob = seen[0]
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32
    assert blob[0, :, 0, 0].tolist() == [0, 0, 200] and blob[0, :, 40, 0].tolist() == [114, 114, 114]


def test_detect_two_people_at_the_dots(models):
    for pose_file in (models["pose"], models["pose_b1"]):  # dynamic batch, and one person per run
        pose = cpu_detector(models["det"], pose_file).detect(scene_image())
        assert (pose.width, pose.height) == (IMG_W, IMG_H) and len(pose.people) == 2
        for person, dot in zip(pose.people, (DOT_A, DOT_B)):
            assert np.allclose(person.body, expected_body(dot, BODY_SCORES), atol=1e-3)
            assert person.face is None and person.left_hand is None and person.right_hand is None


def test_score_threshold_parameter(models):
    det = cpu_detector(models["det"], models["pose"], score_threshold=0.6)
    body = det.detect(scene_image()).people[0].body
    assert np.allclose(body, expected_body(DOT_A, BODY_SCORES, 0.6), atol=1e-3)
    assert (body[:, 2] > 0).sum() == 1 + sum(s >= 0.6 for s in BODY_SCORES)  # + the neck
    body = det.detect(scene_image(), score_threshold=0.95).people[0].body
    assert (body[:, 2] == 0).all()


def test_whole_image_mode_and_wholebody_parts(tmp_path):
    scores = np.full(133, 0.9)
    scores[23:91] = 0.8      # face
    scores[23] = 0.1         # first face point: missing
    scores[91:112] = 0.1     # left hand: all missing -> None
    scores[112:133] = 0.7    # right hand
    pose_file = pose_model(tmp_path / "dw-ll_ucoco_tiny.onnx", scores)
    img = np.zeros((32, 16, 3), np.float32)   # whole-image box 16x32 -> crop scale 20x40, centre (8, 16)
    img[20, 10] = 1.0                          # crop (6, 12)
    person, = cpu_detector(None, pose_file).detect(img).people  # no detector: always the whole image
    assert np.allclose(person.body, expected_body((10, 20), np.full(17, 0.9)), atol=1e-6)
    assert person.left_hand is None
    assert person.right_hand.shape == (21, 3) and np.allclose(person.right_hand, [10, 20, 0.7], atol=1e-6)
    assert person.face.shape == (70, 3) and person.face[0].tolist() == [0, 0, 0]
    assert np.allclose(person.face[1:68], [10, 20, 0.8], atol=1e-6)
    assert person.face[68].tolist() == person.body[JOINT_NAMES.index("right_eye")].tolist()
    assert person.face[69].tolist() == person.body[JOINT_NAMES.index("left_eye")].tolist()


def test_whole_image_mode_skips_the_detector(models):
    # whole-image box 256x128 -> crop scale (320, 640), centre (128, 64), s = 1/32: crop pixel q samples image
    # pixel 32 q + (-32, -256) exactly; the white square holds one such pixel, (96, 32) = crop (4, 9)
    img = np.zeros((IMG_H, IMG_W, 3), np.float32)
    img[32:64, 96:128] = 1.0
    pose = cpu_detector(models["det"], models["pose"]).detect(img, whole_image=True)
    person, = pose.people
    assert np.allclose(person.body, expected_body((96, 32), BODY_SCORES), atol=1e-6)


def test_end_to_end_detector_format(tmp_path, models):
    rows = np.array([[10, 11, 14, 19, 0.9], [0, 0, 30, 30, 0.95], [48, 12, 52, 20, 0.2]])
    det_file = detector_model(tmp_path / "yolox_e2e.onnx", rows, labels=[0, 1, 0])
    boxes = cpu_detector(det_file, models["pose"]).detect_boxes(scene_image())
    assert np.allclose(boxes, [[40, 44, 56, 76, 0.9]], atol=1e-5)


def test_no_person_found_gives_an_empty_frame(tmp_path, models):
    det_file = detector_model(tmp_path / "yolox_empty.onnx", np.zeros((84, 6)))
    pose = cpu_detector(det_file, models["pose"]).detect(scene_image())
    assert pose.people == [] and (pose.width, pose.height) == (IMG_W, IMG_H)


# ------------------------------------------------------------------------------------------ providers

def test_cpu_fallback_logs_one_line(models, monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="posetransfer"):
        det = D.PoseDetector(models["det"], models["pose"])
    lines = [r for r in caplog.records if r.name == "posetransfer"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "falls back to the CPU" in lines[0].getMessage() and "onnxruntime-gpu" in lines[0].getMessage()
    assert det.providers == ["CPUExecutionProvider"] and not det.on_gpu


def test_cuda_that_cannot_start_logs_one_line(models, monkeypatch, caplog):
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    monkeypatch.setattr(D, "_cuda_device_present", lambda: True)
    with caplog.at_level(logging.INFO, logger="posetransfer"):
        det = D.PoseDetector(models["det"], models["pose"])
    lines = [r for r in caplog.records if r.name == "posetransfer"]
    if det.on_gpu:
        assert lines == []
    else:
        assert len(lines) == 1 and "could not start its CUDA provider" in lines[0].getMessage()


def test_explicit_providers_log_nothing(models, caplog):
    with caplog.at_level(logging.INFO, logger="posetransfer"):
        cpu_detector(models["det"], models["pose"])
    assert [r for r in caplog.records if r.name == "posetransfer"] == []


# ------------------------------------------------------------------------------------------ errors

def test_missing_and_unreadable_files_name_the_file(tmp_path, models):
    with pytest.raises(FileNotFoundError, match=r"pose model file '.*nope\.onnx' not found"):
        cpu_detector(models["det"], tmp_path / "nope.onnx")
    with pytest.raises(FileNotFoundError, match=r"person detector file '.*gone\.onnx' not found.*yolox_l"):
        cpu_detector(tmp_path / "gone.onnx", models["pose"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"pose model '.*junk\.onnx': expected an ONNX model"):
        cpu_detector(None, junk)


def test_wrong_pose_model_outputs(tmp_path):
    one = pose_model(tmp_path / "one_output.onnx", BODY_SCORES, names=("simcc_x",))
    with pytest.raises(ValueError, match=r"one_output\.onnx'.*expected two SimCC outputs.*got 1 output"):
        cpu_detector(None, one)
    img = scene_image()
    split = pose_model(tmp_path / "bad_split.onnx", BODY_SCORES, split=(2, 3), names=("a", "b"))
    with pytest.raises(ValueError, match=r"bad_split\.onnx'.*same split ratio.*got shapes \[\(1, 17, 20\), "
                                         r"\(1, 17, 60\)\]"):
        cpu_detector(None, split).detect(img)
    hand = pose_model(tmp_path / "hand21.onnx", np.full(21, 0.9))
    with pytest.raises(ValueError, match=r"hand21\.onnx'.*K in \(17, 26, 133\)"):
        cpu_detector(None, hand).detect(img)


def test_wrong_detector_outputs(tmp_path, models):
    wrong_n = detector_model(tmp_path / "yolox_wrong.onnx", np.zeros((80, 6)))
    with pytest.raises(ValueError, match=r"yolox_wrong\.onnx'.*expected a YOLOX output of shape \(1, 84, 5 \+ "
                                         r"classes\).*got outputs of shapes \[\(1, 80, 6\)\]"):
        cpu_detector(wrong_n, models["pose"]).detect(scene_image())
    too_few = detector_model(tmp_path / "yolox_four.onnx", np.zeros((84, 4)))
    with pytest.raises(ValueError, match=r"yolox_four\.onnx'.*\(1, 84, 4\)"):
        cpu_detector(too_few, models["pose"]).detect(scene_image())


def test_bad_image_and_threshold(models):
    det = cpu_detector(models["det"], models["pose"])
    with pytest.raises(ValueError, match=r"image: expected an image of shape \(H, W, 3\), got shape \(4, 4\)"):
        det.detect(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"image: expected values in 0..1"):
        det.detect(np.full((4, 4, 3), 3.0))
    with pytest.raises(ValueError, match=r"score_threshold: expected a number from 0 to 1, got 1.5"):
        det.detect(scene_image(), score_threshold=1.5)
    with pytest.raises(ValueError, match=r"detect_boxes: this PoseDetector has no person detector"):
        cpu_detector(None, models["pose"]).detect_boxes(scene_image())


# ------------------------------------------------------------------------------------------ CLI helpers

def test_detect_pose_file_writes_openpose_json(tmp_path, models):
    from posetransfer.core.images import save_image

    image = tmp_path / "two.png"
    save_image(image, scene_image())
    out = tmp_path / "two.pose.json"
    pose = D.detect_pose_file(image, out, D.build_detector(models["pose"], models["det"]))
    back, = read_openpose_json(out)
    assert (back.width, back.height) == (IMG_W, IMG_H) and len(back.people) == 2
    assert np.allclose(back.people[1].body, expected_body(DOT_B, BODY_SCORES), atol=1e-3)
    assert np.allclose(back.people[0].body, pose.people[0].body)


def test_build_detector_needs_a_pose_model(models, monkeypatch):
    with pytest.raises(ValueError, match=r"pose_model: a person detector .* needs a pose model"):
        D.build_detector(None, models["det"])
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ValueError, match=r"pose_model: expected a DWPose ONNX file.*posetransfer\[mediapipe\]"):
        D.build_detector()


# ------------------------------------------------------------------------------------------ MediaPipe

def test_mediapipe_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    assert not D.mediapipe_available()
    with pytest.raises(ImportError, match=r"pip install 'posetransfer\[mediapipe\]'"):
        D.MediaPipeDetector()


def test_mediapipe_matches_the_sample_keypoints():
    pytest.importorskip("mediapipe", reason="optional extra posetransfer[mediapipe] not installed")
    from posetransfer.core.images import load_image

    want, = load_pose_keypoint((SAMPLES / "fashion_standing.pose.json").read_text())
    with D.MediaPipeDetector() as detector:
        got = detector.detect(load_image(SAMPLES / "fashion_standing.png"))
    assert (got.width, got.height) == (want.width, want.height) and len(got.people) == 1
    g, w = got.people[0], want.people[0]
    assert (g.present == w.present).all()
    assert np.abs(g.xy[w.present] - w.xy[w.present]).max() < 2.0
    assert np.abs(g.body[w.present, 2] - w.body[w.present, 2]).max() < 0.02


# ------------------------------------------------------------------------------------------ the node

@pytest.fixture
def model_dir(monkeypatch, tmp_path, models):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(tmp_path))
    for key, name in (("det", "yolox_tiny.onnx"), ("pose", "dw-tiny.onnx")):
        (tmp_path / name).write_bytes(Path(models[key]).read_bytes())
    (tmp_path / "notes.json").write_text("{}")
    yield tmp_path
    bridge.set_interrupt_callback(None)


@pytest.fixture
def bars(monkeypatch):
    made = []

    class Recording(bridge.ProgressBar):
        def __init__(self, total):
            super().__init__(total)
            made.append(self)

    monkeypatch.setattr(bridge, "ProgressBar", Recording)
    return made


def test_node_declaration(model_dir):
    required = PoseTransferPoseDetect.INPUT_TYPES()["required"]
    assert required["detector_model"][0] == [NO_FILE, "dw-tiny.onnx", "yolox_tiny.onnx"]
    assert required["detector_model"][1]["default"] == "yolox_tiny.onnx"
    assert required["pose_model"][0] == ["dw-tiny.onnx", "yolox_tiny.onnx"]
    assert required["pose_model"][1]["default"] == "dw-tiny.onnx"
    assert required["mode"][0] == ["detector", "whole_image"]
    assert required["score_threshold"][1]["default"] == 0.3


def test_node_detects_each_frame(model_dir, bars):
    images = torch.from_numpy(np.stack([scene_image(), scene_image()]))
    frames, = PoseTransferPoseDetect().detect(images, "yolox_tiny.onnx", "dw-tiny.onnx", "detector", 0.3)
    assert len(frames) == 2 and bars[0].total == 2 and bars[0].current == 2
    json.dumps(frames)
    assert frames[0]["canvas_width"] == IMG_W and frames[0]["canvas_height"] == IMG_H
    poses = load_pose_keypoint(frames, coords="pixel")
    for pose in poses:
        assert len(pose.people) == 2
        assert np.allclose(pose.people[0].body, expected_body(DOT_A, BODY_SCORES), atol=1e-3)


def test_node_whole_image_and_errors(model_dir, bars):
    img = torch.from_numpy(np.zeros((1, 32, 16, 3), np.float32))
    img[0, 20, 10] = 1.0
    frames, = PoseTransferPoseDetect().detect(img, NO_FILE, "dw-tiny.onnx", "whole_image", 0.3)
    assert np.allclose(load_pose_keypoint(frames)[0].people[0].body, expected_body((10, 20), BODY_SCORES),
                       atol=1e-3)
    with pytest.raises(ValueError, match=r"detector_model: mode 'detector' needs a YOLOX"):
        PoseTransferPoseDetect().detect(img, NO_FILE, "dw-tiny.onnx", "detector", 0.3)
    with pytest.raises(ValueError, match=r"pose_model: expected a DWPose"):
        PoseTransferPoseDetect().detect(img, "yolox_tiny.onnx", NO_FILE, "detector", 0.3)
    with pytest.raises(FileNotFoundError, match=r"'missing\.onnx' not found"):
        PoseTransferPoseDetect().detect(img, "yolox_tiny.onnx", "missing.onnx", "detector", 0.3)


def test_node_interrupt(model_dir, bars):
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise InterruptedError("cancelled")

    bridge.set_interrupt_callback(interrupt)
    images = torch.from_numpy(np.stack([scene_image()] * 3))
    with pytest.raises(InterruptedError):
        PoseTransferPoseDetect().detect(images, "yolox_tiny.onnx", "dw-tiny.onnx", "detector", 0.3)
    assert bars[0].total == 3 and bars[0].current == 1


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_detect_writes_the_detected_people(tmp_path, models):
    from posetransfer.cli import main
    from posetransfer.core.images import save_image
    from posetransfer.core.pose.formats import read_openpose_json

    img = tmp_path / "scene.png"
    save_image(img, scene_image())
    out = tmp_path / "scene.json"
    assert main(["detect", str(img), "--out", str(out), "--detector", str(models["pose"]),
                 "--person-detector", str(models["det"])]) == 0
    pose, = read_openpose_json(out)
    assert len(pose.people) == 2 and (pose.width, pose.height) == (IMG_W, IMG_H)
    bodies = sorted((p.body for p in pose.people), key=lambda b: b[0, 0])
    assert np.allclose(bodies[0], expected_body(DOT_A, BODY_SCORES), atol=1e-4)


def test_cli_transfer_without_pose_files_detects_them(tmp_path, models, capsys):
    from posetransfer.cli import main

    # No usable person in the scene: detection runs and the error is about the pose, not a crash.
    img = tmp_path / "scene.png"
    from posetransfer.core.images import save_image
    save_image(img, scene_image())
    code = main(["transfer", "--source", str(img), "--target-image", str(img), "--out", str(tmp_path / "o.png"),
                 "--detector", str(models["pose"]), "--person-detector", str(models["det"])])
    assert code == 2 and "pose" in capsys.readouterr().err
    assert main(["transfer", "--source", str(img), "--out", str(tmp_path / "o.png")]) == 2
    assert "--target-pose" in capsys.readouterr().err
