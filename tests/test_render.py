"""Known-answer tests for posetransfer.core.pose.render."""

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from posetransfer.core.pose.keypoints import COLORS, JOINT_INDEX, LIMBS, Person, Pose
from posetransfer.core.body.parts import (BODY_PARTS, DEFAULT_DEPTH_ORDER, PART_BY_NAME, PART_NAMES, PART_RADIUS,
                                          body_scale, part_radius)
from posetransfer.core.pose.render import (
    render_heatmaps, render_part_labels, render_part_masks, render_pidm_pose_map,
    render_skeleton, render_skeleton_batch,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MASK_INDEX = {p.name: k for k, p in enumerate(BODY_PARTS)}


def make_pose(width: int, height: int, **joints) -> Pose:
    """A one-person pose from ``joint_name=(x, y)`` keywords."""
    xy = [None] * 18
    for name, p in joints.items():
        xy[JOINT_INDEX[name]] = p
    return Pose([Person.from_xy(xy)], width, height)


def load_sample(name: str) -> Pose:
    d = json.loads((SAMPLES / f"{name}.pose.json").read_text())
    return Pose([Person(d["people"][0]["pose_keypoints_2d"])], d["canvas_width"], d["canvas_height"])


# An upright figure whose right forearm crosses the chest (right = image left on a person facing us).
CROSSED = dict(nose=(100, 40), neck=(100, 70), right_shoulder=(75, 72), left_shoulder=(125, 72),
               right_elbow=(70, 115), right_wrist=(125, 110), left_elbow=(130, 115), left_wrist=(132, 155),
               right_hip=(88, 160), left_hip=(112, 160), right_knee=(87, 215), left_knee=(113, 215),
               right_ankle=(86, 265), left_ankle=(114, 265), right_eye=(95, 35), left_eye=(105, 35),
               right_ear=(90, 38), left_ear=(110, 38))


# ------------------------------------------------------------------------------------------------ skeleton

def test_two_joint_skeleton_colours():
    img = render_skeleton(make_pose(100, 80, neck=(20, 40), right_shoulder=(60, 40)))
    assert img.shape == (80, 100, 3) and img.dtype == np.uint8
    assert tuple(img[40, 40]) == (int(255 * 0.6), 0, 0)      # limb 0 at the midpoint
    assert tuple(img[40, 20]) == COLORS[1]                    # neck joint
    assert tuple(img[40, 60]) == COLORS[2]                    # right shoulder joint
    assert tuple(img[10, 90]) == (0, 0, 0)
    assert not img[:30].any() and not img[51:].any()           # nothing else drawn


@pytest.mark.parametrize("side, scaling, coloured", [(600, True, True), (400, True, False), (600, False, False)])
def test_stick_width_switches_at_500px(side, scaling, coloured):
    y = side // 2
    img = render_skeleton(make_pose(side, side, neck=(y - 100, y), right_shoulder=(y + 100, y)),
                          stick_scaling=scaling)
    assert img[y, y].any()
    assert bool(img[y + 6, y].any()) is coloured                # 6 px from the axis at the midpoint


def _controlnet_aux_by_hand(people, height, width):
    """controlnet_aux's draw_bodypose, written out: person by person, limbs then joints."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for body in people:
        for (k1, k2), color in zip(LIMBS, COLORS):
            if body[k1, 2] <= 0 or body[k2, 2] <= 0:
                continue
            Y = np.array([body[k1, 0], body[k2, 0]])
            X = np.array([body[k1, 1], body[k2, 1]])
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(Y)), int(np.mean(X))), (int(length / 2), 4), int(angle), 0,
                                       360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
        for k, color in enumerate(COLORS):
            if body[k, 2] > 0:
                cv2.circle(canvas, (int(body[k, 0]), int(body[k, 1])), 4, color, thickness=-1)
    return canvas


def test_skeleton_equals_hand_drawn_controlnet_aux():
    pose = load_sample("jumper")
    shifted = pose.people[0].map_points(lambda xy: xy + [9.3, 4.6])   # overlaps: drawing order matters
    pose = Pose([pose.people[0], shifted], pose.width, pose.height)
    expected = _controlnet_aux_by_hand([p.body for p in pose.people], pose.height, pose.width)
    np.testing.assert_array_equal(render_skeleton(pose), expected)
    # Roughly like the skeleton someone else's tool drew for this photo (another detector: loose check).
    ref = cv2.imread(str(SAMPLES / "jumper_skeleton.png"))
    if ref is not None:
        ours = cv2.dilate(render_skeleton(load_sample("jumper")).any(-1).astype(np.uint8), np.ones((25, 25)))
        theirs = ref.any(-1)
        assert (ours.astype(bool) & theirs).sum() > 0.6 * theirs.sum()


def test_skeleton_on_canvas_and_empty_frame():
    pose = make_pose(50, 40, neck=(10, 20), right_shoulder=(30, 20))
    canvas = np.full((40, 50, 3), 7, np.uint8)
    img = render_skeleton(pose, canvas)
    assert (canvas == 7).all() and tuple(img[0, 0]) == (7, 7, 7) and tuple(img[20, 10]) == COLORS[1]
    with pytest.raises(ValueError, match="canvas"):
        render_skeleton(pose, np.zeros((50, 40, 3), np.uint8))
    assert not render_skeleton(Pose([], 50, 40)).any()


def test_skeleton_batch():
    a = make_pose(50, 40, neck=(10, 20), right_shoulder=(30, 20))
    b = make_pose(50, 40, neck=(20, 10))
    out = render_skeleton_batch([a, b])
    assert out.shape == (2, 40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1], render_skeleton(b))
    with pytest.raises(ValueError, match="poses"):
        render_skeleton_batch([a, make_pose(40, 50, neck=(10, 10))])
    with pytest.raises(ValueError, match="poses"):
        render_skeleton_batch([])


# ------------------------------------------------------------------------------------------------ heatmaps

def test_heatmaps_known_values():
    hm = render_heatmaps(make_pose(64, 48, nose=(30, 20), neck=(10.6, 40.2)), sigma=6.0)
    assert hm.shape == (18, 48, 64) and hm.dtype == np.float32
    assert np.unravel_index(hm[0].argmax(), hm[0].shape) == (20, 30)
    assert hm[0, 20, 30] == 1.0
    for dy, dx in [(3, 4), (-3, -4), (4, -3), (0, 7)]:
        assert hm[0, 20 + dy, 30 + dx] == pytest.approx(math.exp(-(dx * dx + dy * dy) / 72), rel=1e-6)
    assert np.unravel_index(hm[1].argmax(), hm[1].shape) == (40, 11)   # sub-pixel joint: nearest pixel
    assert hm[1, 40, 11] == pytest.approx(math.exp(-(0.4 ** 2 + 0.2 ** 2) / 72), rel=1e-6)
    assert not hm[2:].any()                                            # missing joints
    with pytest.raises(ValueError, match="sigma"):
        render_heatmaps(make_pose(8, 8, nose=(1, 1)), sigma=0)


def test_heatmaps_fast_at_512():
    pose = load_sample("astronaut")
    t = time.perf_counter()
    hm = render_heatmaps(pose)
    assert time.perf_counter() - t < 0.2 and hm.shape == (18, 512, 512)


# ------------------------------------------------------------------------------------------------ PIDM map

def test_pidm_pose_map():
    m = render_pidm_pose_map(make_pose(100, 80, neck=(20, 30), right_shoulder=(60, 30)))
    assert m.shape == (20, 80, 100) and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    # RGB: PIDM blends limbs at 0.6 over the joints and its colour table is read as BGR (limb 0 is blue).
    np.testing.assert_allclose(m[:3, 30, 40] * 255, [0, 0, 153], atol=1e-4)
    np.testing.assert_allclose(m[:3, 30, 20] * 255, [0, 34, 255], atol=1e-4)   # neck under limb 0's tip
    # Limb 0's distance channel: 0 on the ellipse, int(k / 3) / 255 at k L1-steps from it.
    limb = np.zeros((80, 100), np.uint8)
    cv2.fillConvexPoly(limb, cv2.ellipse2Poly((40, 30), (20, 4), 180, 0, 360, 1), 255)
    d = m[3]
    assert (d[limb > 0] == 0).all() and limb[26, 40] and not limb[25, 40]
    for k in range(1, 27):
        assert d[26 - k, 40] == np.float32(int(k / 3) / 255)
    assert d[30, 99] == np.float32(int((99 - 60) / 3) / 255)                    # beyond the tip, along x
    assert (m[4:] == 1).all()                                                   # missing limbs: all ones


# ---------------------------------------------------------------------------------------------- part masks

def test_part_radius_table():
    assert set(PART_RADIUS) == set(PART_NAMES)
    assert part_radius("right_thigh", 100.0) == pytest.approx(100 * PART_RADIUS["right_thigh"])
    with pytest.raises(ValueError, match="part_name"):
        part_radius("tail", 100.0)


def test_part_masks_on_sample():
    pose = load_sample("fashion_standing")
    body = pose.people[0].body
    masks = render_part_masks(pose)
    assert masks.shape == (len(BODY_PARTS), 350, 350) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    scale = body_scale(body)
    for k, part in enumerate(BODY_PARTS):
        assert masks[k].any(), part.name
        if part.segment is None:
            continue
        a, b = body[list(part.segment), :2]
        mid = (a + b) / 2
        normal = np.array([-(b - a)[1], (b - a)[0]]) / np.hypot(*(b - a))
        far = np.round(mid + normal * 0.6 * scale).astype(int)
        assert masks[k, int(round(mid[1])), int(round(mid[0]))] == 1, part.name
        assert masks[k, far[1], far[0]] == 0, part.name
    nose = body[JOINT_INDEX["nose"], :2].round().astype(int)
    assert masks[MASK_INDEX["head"], nose[1], nose[0]] == 1
    chest = ((body[1, :2] + (body[8, :2] + body[11, :2]) / 2) / 2).round().astype(int)
    assert masks[MASK_INDEX["torso"], chest[1], chest[0]] == 1
    assert masks[MASK_INDEX["head"], 345, 5] == 0


def test_capsule_radius_and_missing_parts():
    pose = make_pose(200, 200, neck=(100, 50), right_hip=(100, 150), right_shoulder=(60, 60),
                     right_elbow=(60, 120))
    r = part_radius("right_upper_arm", 100.0)         # body_scale = neck to hip = 100
    m = render_part_masks(pose)[MASK_INDEX["right_upper_arm"]]
    assert m[90, 60 + math.floor(r)] == 1 and m[90, 60 + math.floor(r) + 1] == 0
    assert m[60 - math.floor(r), 60] == 1 and m[60 - math.floor(r) - 1, 60] == 0   # round cap
    m2 = render_part_masks(pose, radius_scale=2.0)[MASK_INDEX["right_upper_arm"]]
    assert m2[90, 60 + math.floor(2 * r)] == 1
    masks = render_part_masks(pose)
    for name in ("right_forearm", "left_upper_arm", "left_thigh", "head"):
        assert not masks[MASK_INDEX[name]].any(), name
    rt = math.floor(part_radius("torso", 100.0))      # torso hull dilated: reaches above the neck
    assert masks[MASK_INDEX["torso"], 50 - rt, 100] == 1 and masks[MASK_INDEX["torso"], 49 - rt, 100] == 0
    nosed = make_pose(200, 200, nose=(100, 20), neck=(100, 50), right_hip=(100, 150))
    rh = math.floor(part_radius("head", 100.0))       # one face joint: no spread, disc of the head radius
    head = render_part_masks(nosed)[MASK_INDEX["head"]]
    assert head[20, 100 + rh] == 1 and head[20, 101 + rh] == 0
    eared = make_pose(200, 200, right_ear=(60, 20), left_ear=(140, 20), neck=(100, 50), right_hip=(100, 150))
    head = render_part_masks(eared)[MASK_INDEX["head"]]   # a wide face: the disc grows past the ears
    assert head[20, 150] == 1 and head[20, 50] == 1 and head[20, 199] == 0


def test_labels_respect_depth_order():
    pose = make_pose(200, 300, **CROSSED)
    labels = render_part_labels(pose)
    assert labels.dtype == np.uint8 and labels.shape == (300, 200)
    mid = (np.array(CROSSED["right_elbow"]) + CROSSED["right_wrist"]) / 2
    x, y = (mid + [10, 0]).round().astype(int)        # on the forearm, inside the torso
    assert labels[y, x] == PART_BY_NAME["right_forearm"].label
    assert labels[130, 100] == PART_BY_NAME["torso"].label
    assert labels[40, 100] == PART_BY_NAME["head"].label
    assert labels[5, 5] == 0
    back_to_front = [n for n in DEFAULT_DEPTH_ORDER if n != "torso"] + ["torso"]
    assert render_part_labels(pose, depth_order=back_to_front)[y, x] == PART_BY_NAME["torso"].label
    with pytest.raises(ValueError, match="depth_order"):
        render_part_labels(pose, depth_order=["torso", "tail"])


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("fn", [render_heatmaps, render_pidm_pose_map, render_part_masks, render_part_labels])
def test_bad_person_and_empty_frame(fn):
    pose = make_pose(20, 20, nose=(5, 5))
    with pytest.raises(ValueError, match="person index 1"):
        fn(pose, person=1)
    with pytest.raises(ValueError, match="no people"):
        fn(Pose([], 20, 20))
    with pytest.raises(ValueError, match="pose"):
        fn({"people": []})
