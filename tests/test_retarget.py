"""Known-answer tests for core.pose.retarget: the target's bone angles, the source's bone lengths."""

import json
from pathlib import Path

import numpy as np
import pytest

from posetransfer.core.pose.keypoints import Person, Pose
from posetransfer.core.body.parts import body_scale
from posetransfer.core.pose.retarget import BONE_RATIOS, BONES, retarget, retarget_pose

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def load(name: str) -> Pose:
    d = json.loads((SAMPLES / f"{name}.pose.json").read_text())
    return Pose([Person(d["people"][0]["pose_keypoints_2d"])], d["canvas_width"], d["canvas_height"])


def length(p: Person, a: int, b: int) -> float:
    return float(np.hypot(*(p.xy[a] - p.xy[b])))


def angle(p: Person, a: int, b: int) -> float:
    d = p.xy[b] - p.xy[a]
    return float(np.arctan2(d[1], d[0]))


def mid_hip(p: Person) -> np.ndarray:
    return (p.xy[8] + p.xy[11]) / 2


def without(p: Person, *joints: int) -> Person:
    out = p.copy()
    out.body[list(joints)] = 0
    return out


@pytest.mark.parametrize("name", ["fashion_standing", "jumper", "astronaut", "grace_hopper"])
@pytest.mark.parametrize("anchor", ["source", "target"])
def test_identity(name, anchor):
    pose = load(name)
    person = pose.people[0]
    rng = np.random.default_rng(0)
    person.face = np.column_stack([rng.uniform(0, 300, (70, 2)), np.ones(70)])
    person.right_hand = np.column_stack([rng.uniform(0, 300, (21, 2)), np.ones(21)])
    out = retarget_pose(pose, pose, anchor).people[0]
    for part in ("body", "face", "right_hand"):
        np.testing.assert_allclose(getattr(out, part), getattr(person, part), atol=1e-9)
    assert out.left_hand is None


def test_bones_take_target_angle_and_source_length():
    source, target = load("fashion_standing"), load("jumper")
    s, t = source.people[0], target.people[0]
    result = retarget_pose(source, target)
    out = result.people[0]
    assert (result.width, result.height) == (350, 350)
    assert np.array_equal(out.body[:, 2], t.body[:, 2])  # the target's confidences
    # Foreshortened: the standing source's right forearm (10 px, its left one 41 px) and the jumper's right
    # shin (26 px, its left one 103 px); these follow the foreshortening rule, checked below.
    short = {(3, 4), (9, 10)}
    for a, b in BONES:
        if (a, b) not in short:
            assert abs(length(out, a, b) - length(s, a, b)) < 1e-4, (a, b)
        assert abs(angle(out, a, b) - angle(t, a, b)) < 1e-4, (a, b)
    assert abs(length(out, 3, 4) - length(s, 6, 7)) < 1e-4  # the better side's length
    assert abs(length(out, 9, 10) - length(s, 9, 10) * length(t, 9, 10) / length(t, 12, 13)) < 1e-4
    # it really changed the pose: the jumper's left wrist is far above the standing one's
    assert out.xy[7, 1] < s.xy[7, 1] - 40


def test_anchor_source_and_target():
    source, target = load("fashion_standing"), load("jumper")
    s, t = source.people[0], target.people[0]
    on_source = retarget_pose(source, target, "source").people[0]
    np.testing.assert_allclose(mid_hip(on_source), mid_hip(s), atol=1e-9)
    on_target = retarget_pose(source, target, "target").people[0]
    fitted = (mid_hip(t) + 0.5) * (350 / 400) - 0.5  # contain 400x400 -> 350x350: s = 0.875, no offset
    np.testing.assert_allclose(mid_hip(on_target), fitted, atol=1e-9)
    # the anchor only translates
    np.testing.assert_allclose(on_target.xy - on_source.xy, np.broadcast_to(fitted - mid_hip(s), (18, 2)), atol=1e-9)
    # no hips in the source: the neck is the root
    head = retarget(load("grace_hopper").people[0], t)
    np.testing.assert_allclose(head.xy[1], load("grace_hopper").people[0].xy[1], atol=1e-9)


def test_missing_source_bone_uses_mirror_then_proportions():
    s, t = load("fashion_standing").people[0], load("jumper").people[0]
    out = retarget(without(s, 6), t)  # left elbow missing: the left arm takes the right arm's lengths
    assert abs(length(out, 5, 6) - length(s, 2, 3)) < 1e-9
    # the right forearm (10 px, foreshortened, and now without a measurable mirror) takes the prior
    assert abs(length(out, 6, 7) - BONE_RATIOS[(6, 7)] * body_scale(s)) < 1e-9
    assert abs(length(out, 6, 7) - length(s, 6, 7)) > 3  # the true forearm length (41 px) was not used
    out = retarget(without(s, 3, 6), t)  # both elbows missing: typical proportions of the torso length
    scale = body_scale(s)
    for bone in ((2, 3), (3, 4), (5, 6), (6, 7)):
        assert abs(length(out, *bone) - BONE_RATIOS[bone] * scale) < 1e-9


def test_missing_target_joints_stay_missing():
    s, t = load("fashion_standing").people[0], load("jumper").people[0]
    t_gap = without(t, 9, 4)  # right knee and right wrist missing
    out = retarget(s, t_gap)
    assert out.present.tolist() == t_gap.present.tolist()
    assert out.body[9].tolist() == [0, 0, 0] and out.body[4].tolist() == [0, 0, 0]
    # the right ankle keeps the target's hip->ankle offset, scaled by the body-scale ratio
    k = body_scale(s) / body_scale(t)
    np.testing.assert_allclose(out.xy[10], out.xy[8] + (t.xy[10] - t.xy[8]) * k, atol=1e-9)
    # the other bones are still exact
    for a, b in ((8, 9), (1, 2), (2, 3), (12, 13)):
        if t_gap.present[a] and t_gap.present[b]:
            assert abs(length(out, a, b) - length(s, a, b)) < 1e-9


def test_target_without_neck():
    s, t = load("fashion_standing").people[0], load("jumper").people[0]
    out = retarget(s, without(t, 1))
    assert not out.present[1] and out.present.sum() == 17
    np.testing.assert_allclose(mid_hip(out), mid_hip(s), atol=1e-9)
    for a, b in ((8, 9), (12, 13), (2, 3), (0, 14)):
        assert abs(length(out, a, b) - length(s, a, b)) < 1e-9
        assert abs(angle(out, a, b) - angle(t, a, b)) < 1e-9


def test_face_and_hands_follow_their_joint():
    s, t = load("fashion_standing").people[0], load("jumper").people[0].copy()
    t.face = np.array([[225.0, 70.0, 1.0], [0, 0, 0]])
    t.left_hand = np.column_stack([t.xy[7] + [[0, 0], [10, -4]], [1, 0.5]])
    out = retarget(s, t)
    k = body_scale(s) / body_scale(t)
    np.testing.assert_allclose(out.face[0, :2], out.xy[0] + (t.face[0, :2] - t.xy[0]) * k, atol=1e-9)
    assert out.face[1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(out.left_hand[:, :2], out.xy[7] + [[0, 0], [10 * k, -4 * k]], atol=1e-9)
    assert out.left_hand[:, 2].tolist() == [1, 0.5]


def test_errors_name_the_input():
    s, t = load("fashion_standing").people[0], load("jumper").people[0]
    with pytest.raises(ValueError, match="^source"):
        retarget(Person(np.zeros((18, 3))), t)
    with pytest.raises(ValueError, match="^source"):
        retarget(without(s, *range(1, 18)), t)  # a lone nose: nothing to measure
    with pytest.raises(ValueError, match="^target"):
        retarget(s, Person(np.zeros((18, 3))))
    with pytest.raises(ValueError, match="^target"):
        retarget_pose(load("jumper"), Pose([], 10, 10))
    with pytest.raises(ValueError, match="anchor"):
        retarget(s, t, "middle")


def test_foreshortened_source_bone_takes_the_better_side():
    # A jump: the right shin points at the camera (26 px) while the left shows its length (103 px).
    src = Person.from_xy([(50, 20), (50, 40), (35, 42), (30, 70), (28, 95), (65, 42), (70, 70), (72, 95),
                          (42, 110), (40, 150), (40, 176), (58, 110), (60, 150), (60, 253), None, None, None, None])
    tgt = Person.from_xy([(50, 20), (50, 40), (35, 42), (30, 70), (28, 95), (65, 42), (70, 70), (72, 95),
                          (42, 110), (40, 190), (40, 290), (58, 110), (60, 190), (60, 290), None, None, None, None])
    out = retarget(src, tgt)
    shin = lambda p, k, a: float(np.hypot(*(p.xy[k] - p.xy[a])))  # noqa: E731
    assert shin(out, 9, 10) == pytest.approx(103, abs=1e-6)
    assert shin(out, 12, 13) == pytest.approx(103, abs=1e-6)
    # The source itself, retargeted onto its own pose, is unchanged (its foreshortening is the target's too).
    same = retarget(src, src)
    assert np.allclose(same.xy[src.present], src.xy[src.present], atol=1e-6)
