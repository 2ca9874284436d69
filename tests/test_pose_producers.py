"""POSE_KEYPOINT from every producer ComfyUI users have, built the way each one writes it (read in its source):

* comfyui_controlnet_aux (Fannovel16, e8b689a): ``encode_poses_as_dict`` of ``dwpose/__init__.py`` and
  ``open_pose/__init__.py``: a list with one frame dict per image, coordinates normalised to the detect-resolution
  canvas, ``[x, y, 1.0]`` for a point, ``[0, 0, 0]`` for a missing one, ``None`` for an absent hand / face; OpenPose
  writes a failed hand / face peak as ``(-1 / W, -1 / H)`` with confidence 1.
* ComfyUI's SDPose Keypoint Extractor (``comfy_extras/nodes_sdpose.py``): pixel coordinates on the image canvas,
  every point with its heatmap score, a point the model could not place moved to ``(-1, -1)`` keeping its score,
  an extra ``foot_keypoints_2d`` and a 70-point face.
* OpenPose editors: huchenlei's Load Openpose JSON returns ``json.loads`` of the editor's text, a single frame dict
  (here with normalised coordinates); the ultimate-openpose-editor's blank output is a person whose arrays are ``[]``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from posetransfer.core.pose.keypoints import NUM_JOINTS
from posetransfer.core.pose.formats import dump_pose_keypoint, is_normalized, load_pose_keypoint

W, H = 512, 768  # a detect-resolution canvas
BODY_PX = np.array([[256 + 10 * (i % 5), 100 + 30 * i] for i in range(NUM_JOINTS)], dtype=np.float64)


def _flat(points, conf):
    return [v for (x, y), c in zip(points, conf) for v in (float(x), float(y), float(c))]


def _controlnet_aux_frame(missing=(), hands=True, face=True, failed_hand_points=()):
    body = BODY_PX / [W, H]
    conf = np.ones(NUM_JOINTS)
    body[list(missing)] = 0
    conf[list(missing)] = 0
    hand = np.array([[0.4 + 0.005 * i, 0.5] for i in range(21)])
    hand_flat = _flat(hand, np.ones(21))
    for i in failed_hand_points:  # OpenPose: a failed peak at (-1 / W, -1 / H), still [x, y, 1.0]
        hand_flat[3 * i:3 * i + 3] = [-1 / W, -1 / H, 1.0]
    face_pts = np.array([[0.5 + 0.001 * i, 0.1] for i in range(68)])
    person = {"pose_keypoints_2d": _flat(body, conf),
              "face_keypoints_2d": _flat(face_pts, np.ones(68)) if face else None,
              "hand_left_keypoints_2d": hand_flat if hands else None,
              "hand_right_keypoints_2d": hand_flat if hands else None}
    return {"people": [person], "canvas_height": H, "canvas_width": W}


def test_controlnet_aux_dwpose():
    frames = [_controlnet_aux_frame(missing=(9, 10)), _controlnet_aux_frame(hands=False, face=False)]
    poses = load_pose_keypoint(frames, what="dwpose")
    assert len(poses) == 2 and (poses[0].width, poses[0].height) == (W, H)
    person = poses[0].people[0]
    np.testing.assert_allclose(person.xy[person.present], BODY_PX[person.present], atol=1e-9)
    assert not person.present[[9, 10]].any() and person.present.sum() == NUM_JOINTS - 2
    np.testing.assert_allclose(person.left_hand[0, :2], [0.4 * W, 0.5 * H])
    assert person.face.shape == (68, 3)
    assert poses[1].people[0].left_hand is None and poses[1].people[0].face is None


def test_controlnet_aux_dwpose_body_off():
    """detect_body disabled: controlnet_aux writes 18 x [0, 0, 0]; the hands alone still decide the scale."""
    frame = _controlnet_aux_frame()
    frame["people"][0]["pose_keypoints_2d"] = [0.0] * (3 * NUM_JOINTS)
    (pose,) = load_pose_keypoint([frame])
    assert not pose.people[0].present.any()
    np.testing.assert_allclose(pose.people[0].left_hand[0, :2], [0.4 * W, 0.5 * H])


def test_controlnet_aux_openpose_failed_peaks():
    """Failed hand peaks sit at (-1 / W, -1 / H) with confidence 1: the frame is still normalised (controlnet_aux's
    |x| <= 1 rule), and those points come out missing instead of at the canvas corner."""
    frame = _controlnet_aux_frame(failed_hand_points=(3, 4))
    assert is_normalized(frame)
    (pose,) = load_pose_keypoint([frame])
    hand = pose.people[0].left_hand
    assert (hand[[3, 4], 2] == 0).all() and (hand[[0, 1, 2, 5], 2] == 1).all()
    np.testing.assert_allclose(pose.people[0].xy, BODY_PX, atol=1e-9)


def _sdpose_frames(width=640, height=480):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.95, NUM_JOINTS)
    body = BODY_PX * [width / W, height / H] * 0.6
    body[7] = -1  # _remap_keypoints: kp[invalid] = -1 (both coordinates), the score stays
    face = np.column_stack([np.linspace(300, 340, 70), np.full(70, 60.0)])
    hands = np.column_stack([np.linspace(200, 220, 21), np.full(21, 200.0)])
    person = {"pose_keypoints_2d": _flat(body, scores),
              "foot_keypoints_2d": _flat(np.full((6, 2), 400.0), np.full(6, 0.8)),
              "face_keypoints_2d": _flat(face, np.full(70, 0.9)),
              "hand_right_keypoints_2d": _flat(hands, np.full(21, 0.7)),
              "hand_left_keypoints_2d": _flat(hands, np.full(21, 0.1))}
    return [{"canvas_width": width, "canvas_height": height, "people": [person, json.loads(json.dumps(person))]}], body


def test_sdpose_keypoint_extractor():
    frames, body = _sdpose_frames()
    assert not is_normalized(frames[0])
    (pose,) = load_pose_keypoint(frames, what="sdpose")
    assert (pose.width, pose.height) == (640, 480) and len(pose.people) == 2
    person = pose.people[0]
    assert not person.present[7], "(-1, -1) is SDPose's 'not found', whatever its score"
    assert person.present.sum() == NUM_JOINTS - 1
    np.testing.assert_allclose(person.xy[person.present], body[person.present])
    assert person.face.shape == (70, 3)
    # the extra foot keypoints survive a round trip
    (dumped,) = dump_pose_keypoint(pose)
    assert dumped["people"][0]["foot_keypoints_2d"] == frames[0]["people"][0]["foot_keypoints_2d"]


def test_sdpose_all_points_lost_is_not_normalised():
    """A person SDPose lost entirely (every point at (-1, -1)) must not turn the frame 'normalised'."""
    frame = {"canvas_width": 64, "canvas_height": 64,
             "people": [{"pose_keypoints_2d": [-1.0, -1.0, 0.4] * NUM_JOINTS}]}
    assert not is_normalized(frame)
    (pose,) = load_pose_keypoint(frame)
    assert not pose.people[0].present.any()


def test_openpose_editor_single_dict_normalised():
    """huchenlei's Load Openpose JSON: ``json.loads`` of the editor's text, one frame dict, 0..1 coordinates."""
    frame = {"people": [{"pose_keypoints_2d": _flat(BODY_PX / [W, H], np.ones(NUM_JOINTS))}],
             "canvas_width": W, "canvas_height": H}
    poses = load_pose_keypoint(frame)
    assert len(poses) == 1
    np.testing.assert_allclose(poses[0].people[0].xy, BODY_PX, atol=1e-9)
    # the same as JSON text, as the STRING output of an editor would give it
    np.testing.assert_allclose(load_pose_keypoint(json.dumps(frame))[0].people[0].xy, BODY_PX, atol=1e-9)


def test_openpose_editor_blank_person():
    """ultimate-openpose-editor's output without a pose: one person whose arrays are all ``[]``."""
    blank = dict(pose_keypoints_2d=[], face_keypoints_2d=[], hand_left_keypoints_2d=[], hand_right_keypoints_2d=[])
    (pose,) = load_pose_keypoint([{"people": [blank], "canvas_width": 512, "canvas_height": 768}])
    person = pose.people[0]
    assert person.body.shape == (NUM_JOINTS, 3) and not person.present.any()
    assert person.face is None and person.left_hand is None


def test_a_wrong_body_length_is_still_an_error():
    with pytest.raises(ValueError, match="pose_keypoints_2d"):
        load_pose_keypoint({"people": [{"pose_keypoints_2d": [1.0, 2.0, 1.0]}], "canvas_width": 8, "canvas_height": 8})
