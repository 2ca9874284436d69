"""Tests for posetransfer.core.pose.formats: known answers, round trips on the real samples, error messages."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from posetransfer.core.pose.keypoints import COCO17_FROM_COCO18, COCO18_FROM_COCO17, NUM_JOINTS, Person, Pose
from posetransfer.core.pose.formats import (
    dump_pose_keypoint, format_gfla_keypoints, is_normalized, load_pose_keypoint, parse_gfla_keypoints,
    pcdms_pose_vector, read_gfla_annotations, read_openpose_json, read_pairs_csv, read_pcdms_pose_txt,
    write_gfla_annotations, write_openpose_json, write_pairs_csv, write_pcdms_pose_txt,
)

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.pose.json"))
PERSON_ARRAYS = ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")


def _sample(path: Path) -> dict:
    return json.loads(path.read_text())


def _assert_frames_equal(got: dict, want: dict, atol: float = 0.0) -> None:
    """Frame dicts equal: keypoint arrays numerically (absent == None), everything else exactly."""
    assert set(got) - {"canvas_width", "canvas_height"} == set(want) - {"canvas_width", "canvas_height"}
    assert (got["canvas_width"], got["canvas_height"]) == (want["canvas_width"], want["canvas_height"])
    for key in set(want) - {"people", "canvas_width", "canvas_height"}:
        assert got[key] == want[key]
    assert len(got["people"]) == len(want["people"])
    for gp, wp in zip(got["people"], want["people"]):
        assert set(gp) - set(PERSON_ARRAYS) == set(wp) - set(PERSON_ARRAYS)
        for key in PERSON_ARRAYS:
            if not wp.get(key):  # absent, None or []
                assert gp[key] is None
            else:
                np.testing.assert_allclose(gp[key], wp[key], rtol=0, atol=atol)
        for key in set(wp) - set(PERSON_ARRAYS):
            assert gp[key] == wp[key]


def _normalize(frame: dict) -> dict:
    """A copy of a pixel frame with present keypoints divided by the canvas (missing ones left at 0, 0, 0)."""
    out = copy.deepcopy(frame)
    w, h = frame["canvas_width"], frame["canvas_height"]
    for person in out["people"]:
        for key in PERSON_ARRAYS:
            arr = person.get(key)
            if arr:
                for i in range(0, len(arr), 3):
                    if arr[i + 2] > 0:
                        arr[i] /= w
                        arr[i + 1] /= h
    return out


def _rich_frame() -> dict:
    """Two people, face and hands on the first, extras everywhere, pixel coordinates."""
    rng = np.random.default_rng(0)

    def flat(n: int) -> list[float]:
        arr = np.column_stack([rng.uniform(5, 300, n), rng.uniform(5, 400, n), rng.uniform(0.1, 1, n)])
        arr[::5] = 0.0  # some missing points
        return arr.reshape(-1).tolist()

    return {
        "version": 1.3,
        "people": [
            {"person_id": [-1], "pose_keypoints_2d": flat(18), "face_keypoints_2d": flat(70),
             "hand_left_keypoints_2d": flat(21), "hand_right_keypoints_2d": flat(21), "pose_keypoints_3d": []},
            {"pose_keypoints_2d": flat(18), "face_keypoints_2d": None, "hand_left_keypoints_2d": []},
        ],
        "canvas_width": 320, "canvas_height": 480,
        "animals": [],
    }


# ---- POSE_KEYPOINT / OpenPose JSON -----------------------------------------------------------------------

def test_coco17_maps_known_answers_and_inverse():
    # COCO's keypoint order (nose, left eye, right eye, ... right ankle) against OpenPose's COCO-18, by hand.
    assert COCO17_FROM_COCO18 == (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
    assert COCO18_FROM_COCO17 == (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
    for k, j in enumerate(COCO17_FROM_COCO18):
        assert COCO18_FROM_COCO17[j] == k
    assert COCO18_FROM_COCO17.count(None) == 1 and COCO18_FROM_COCO17[1] is None  # the neck


def test_samples_exist():
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_file_round_trip(path: Path, tmp_path: Path):
    original = _sample(path)
    (pose,) = read_openpose_json(path)
    assert (pose.width, pose.height) == (original["canvas_width"], original["canvas_height"])
    np.testing.assert_array_equal(pose.people[0].body.reshape(-1), original["people"][0]["pose_keypoints_2d"])
    assert pose.people[0].face is None and pose.people[0].left_hand is None

    (frame,) = dump_pose_keypoint(pose)
    _assert_frames_equal(frame, original)
    json.dumps(frame, allow_nan=False)

    out = tmp_path / "again.json"
    write_openpose_json(out, pose)
    assert isinstance(json.loads(out.read_text()), dict)
    (again,) = read_openpose_json(out)
    assert (again.width, again.height) == (pose.width, pose.height)
    for a, b in zip(again.people, pose.people):
        np.testing.assert_array_equal(a.body, b.body)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_normalized_sample_is_detected_and_scaled(path: Path):
    original = _sample(path)
    normalized = _normalize(original)
    assert is_normalized(normalized)
    assert not is_normalized(original)
    (pixel,) = load_pose_keypoint(original)
    (scaled,) = load_pose_keypoint([normalized])
    np.testing.assert_allclose(scaled.people[0].body, pixel.people[0].body, rtol=0, atol=1e-9)
    # forced modes agree with auto
    (forced,) = load_pose_keypoint(normalized, coords="normalized")
    np.testing.assert_allclose(forced.people[0].body, pixel.people[0].body, rtol=0, atol=1e-9)
    (raw,) = load_pose_keypoint(normalized, coords="pixel")
    np.testing.assert_array_equal(raw.people[0].body.reshape(-1), normalized["people"][0]["pose_keypoints_2d"])
    # and back to normalised
    (dumped,) = dump_pose_keypoint(scaled, normalized=True)
    _assert_frames_equal(dumped, normalized, atol=1e-12)


def test_is_normalized_known_answers():
    body = [0.0] * 54
    assert not is_normalized({"people": []})
    assert not is_normalized({"people": [{"pose_keypoints_2d": body}]})  # nothing present: pixel
    body[0:3] = [0.5, 1.0, 0.9]
    body[3:6] = [7.0, 9.0, 0.0]  # missing joints do not count
    assert is_normalized({"people": [{"pose_keypoints_2d": body}]})
    body[3:6] = [1.5, 0.2, 0.3]
    assert not is_normalized({"people": [{"pose_keypoints_2d": body}]})
    # a hand coordinate outside [0, 1] makes the frame pixel
    hand = [0.0] * 63
    hand[0:3] = [2.0, 3.0, 0.5]
    body[3:6] = [0.0, 0.0, 0.0]
    assert not is_normalized({"people": [{"pose_keypoints_2d": body, "hand_left_keypoints_2d": hand}]})


def test_rich_frame_round_trip_face_hands_extras(tmp_path: Path):
    frame = _rich_frame()
    (pose,) = load_pose_keypoint(frame)
    assert pose.extra == {"version": 1.3, "animals": []}
    first, second = pose.people
    assert first.extra == {"person_id": [-1], "pose_keypoints_3d": []}
    assert first.face.shape == (70, 3) and first.left_hand.shape == (21, 3) and first.right_hand.shape == (21, 3)
    np.testing.assert_array_equal(first.face.reshape(-1), frame["people"][0]["face_keypoints_2d"])
    np.testing.assert_array_equal(first.right_hand.reshape(-1), frame["people"][0]["hand_right_keypoints_2d"])
    assert second.face is None and second.left_hand is None and second.right_hand is None

    (dumped,) = dump_pose_keypoint(pose)
    _assert_frames_equal(dumped, frame)
    assert dumped["people"][1]["hand_left_keypoints_2d"] is None
    assert all(type(v) is float for v in dumped["people"][0]["face_keypoints_2d"])
    assert type(dumped["canvas_width"]) is int

    path = tmp_path / "rich.json"
    write_openpose_json(path, pose)
    (again,) = read_openpose_json(path)
    for a, b in zip(again.people, pose.people):
        for name in ("body", "face", "left_hand", "right_hand"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        assert a.extra == b.extra
    assert again.extra == pose.extra


def test_dump_does_not_alias_extras():
    (pose,) = load_pose_keypoint(_rich_frame())
    (dumped,) = dump_pose_keypoint(pose)
    dumped["people"][0]["person_id"].append(5)
    assert pose.people[0].extra["person_id"] == [-1]


def test_bare_dict_list_and_json_string_agree():
    frame = _sample(SAMPLES[0])
    results = [load_pose_keypoint(frame), load_pose_keypoint([frame]), load_pose_keypoint(json.dumps(frame)),
               load_pose_keypoint(json.dumps([frame]))]
    for poses in results:
        assert len(poses) == 1
        np.testing.assert_array_equal(poses[0].people[0].body, results[0][0].people[0].body)
    assert load_pose_keypoint([]) == []
    assert len(load_pose_keypoint([frame, _normalize(frame)])) == 2


def test_dump_always_returns_a_list_and_writer_shapes(tmp_path: Path):
    pose = Pose([Person.from_xy([(10.0 + i, 20.0 + i) for i in range(NUM_JOINTS)])], 100, 200)
    assert isinstance(dump_pose_keypoint(pose), list) and len(dump_pose_keypoint([pose, pose])) == 2
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    write_openpose_json(one, [pose])
    write_openpose_json(many, [pose, pose])
    assert isinstance(json.loads(one.read_text()), dict)
    assert isinstance(json.loads(many.read_text()), list)
    assert len(read_openpose_json(many)) == 2


def test_missing_canvas_needs_default_size():
    frame = {"version": 1.3, "people": [{"pose_keypoints_2d": [5.0, 6.0, 1.0] * 18}]}
    with pytest.raises(ValueError, match=r"pose_keypoint: .*default_size"):
        load_pose_keypoint(frame)
    (pose,) = load_pose_keypoint(frame, default_size=(480, 640))
    assert (pose.height, pose.width) == (480, 640)
    (pose,) = load_pose_keypoint({"people": [{"pose_keypoints_2d": [0.5, 0.25, 1.0] * 18}]},
                                 default_size=(480, 640))
    np.testing.assert_allclose(pose.people[0].body[0], [320.0, 120.0, 1.0])


def _body(n: int = 54) -> list[float]:
    return [1.0] * n


@pytest.mark.parametrize("data, fragment", [
    ([{"people": [{"pose_keypoints_2d": _body()}, {"pose_keypoints_2d": _body(51)}],
       "canvas_width": 10, "canvas_height": 10}], "pose_keypoint[0].people[1].pose_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": [float("nan"), 1.0, 1.0] + _body(51)}],
      "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0].pose_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": [float("inf"), 1.0, 1.0] + _body(51)}],
      "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0].pose_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": _body(), "face_keypoints_2d": _body(10)}],
      "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0].face_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": _body(), "hand_left_keypoints_2d": _body(60)}],
      "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0].hand_left_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": ["1"] * 54}], "canvas_width": 10, "canvas_height": 10},
     "pose_keypoint.people[0].pose_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": 3}], "canvas_width": 10, "canvas_height": 10},
     "pose_keypoint.people[0].pose_keypoints_2d"),
    ({"people": [{}], "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0]"),
    ({"people": {"pose_keypoints_2d": _body()}, "canvas_width": 10, "canvas_height": 10},
     "pose_keypoint.people"),
    ({"people": [5], "canvas_width": 10, "canvas_height": 10}, "pose_keypoint.people[0]"),
    ({"canvas_width": 10, "canvas_height": 10}, "pose_keypoint"),
    ({"people": [], "canvas_width": 0, "canvas_height": 10}, "pose_keypoint"),
    ({"people": [], "canvas_width": 10, "canvas_height": -4}, "pose_keypoint"),
    ({"people": [], "canvas_width": "ten", "canvas_height": 10}, "pose_keypoint"),
    ({"people": [], "canvas_width": 10}, "pose_keypoint"),
    ([{"people": [], "canvas_width": 10, "canvas_height": 10}, 7], "pose_keypoint[1]"),
    ([{"people": []}], "pose_keypoint[0]"),
    (42, "pose_keypoint"),
    ("{not json", "pose_keypoint"),
])
def test_bad_pose_keypoint_raises_with_name(data, fragment):
    with pytest.raises(ValueError) as info:
        load_pose_keypoint(data)
    message = str(info.value)
    assert message.startswith(fragment), message
    assert "expected" in message


def test_bad_arguments_are_named(tmp_path: Path):
    frame = {"people": [], "canvas_width": 10, "canvas_height": 10}
    with pytest.raises(ValueError, match="coords"):
        load_pose_keypoint(frame, coords="pixels")
    with pytest.raises(ValueError, match="my_node_input"):
        load_pose_keypoint(5, what="my_node_input")
    with pytest.raises(ValueError, match="default_size"):
        load_pose_keypoint({"people": []}, default_size=(0, 10))
    with pytest.raises(ValueError, match="poses"):
        dump_pose_keypoint([frame])
    bad = tmp_path / "bad.json"
    bad.write_text('{"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 5, "canvas_height": 5}')
    with pytest.raises(ValueError, match=r"bad\.json\.people\[0\]\.pose_keypoints_2d"):
        read_openpose_json(bad)
    bad.write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json: .*JSON"):
        read_openpose_json(bad)


# ---- GFLA / PIDM CSVs ------------------------------------------------------------------------------------

# y first! joint 0 (nose) at x=88, y=21; joint 2 missing; joint 17 at x=99, y=22.
GFLA_YS = "[21, 44, -1, 79, 116, 45, 85, 118, 118, 182, 238, 118, 179, 237, 18, 18, 21, 22]"
GFLA_XS = "[88, 84, -1, 54, 53, 108, 113, 116, 71, 69, 68, 100, 98, 97, 79, 90, 71, 99]"


def test_parse_gfla_row_known_answer():
    pose = parse_gfla_keypoints(GFLA_YS, GFLA_XS)
    assert (pose.width, pose.height) == (176, 256)
    person = pose.people[0]
    np.testing.assert_array_equal(person.body[0], [88, 21, 1])
    np.testing.assert_array_equal(person.body[17], [99, 22, 1])
    np.testing.assert_array_equal(person.body[2], [0, 0, 0])
    assert person.present.sum() == 17
    from_lists = parse_gfla_keypoints(json.loads(GFLA_YS), json.loads(GFLA_XS), width=64, height=128)
    assert (from_lists.width, from_lists.height) == (64, 128)
    np.testing.assert_array_equal(from_lists.people[0].body, person.body)
    assert format_gfla_keypoints(pose) == (GFLA_YS, GFLA_XS)


def test_format_gfla_rounds_and_marks_missing():
    pose = Pose([Person.from_xy([(10.5, 3.49)] + [None] * 16 + [(0.2, 175.7)])], 176, 256)
    ys, xs = format_gfla_keypoints(pose)
    assert json.loads(ys) == [3] + [-1] * 16 + [176]
    assert json.loads(xs) == [11] + [-1] * 16 + [0]


def test_gfla_annotation_file_round_trip(tmp_path: Path):
    path = tmp_path / "fasion-annotation-test.csv"
    path.write_text("name:keypoints_y:keypoints_x\n"
                    f"fashionWOMENDressesid0000262902_1front.jpg:{GFLA_YS}:{GFLA_XS}\n"
                    f"b.jpg: {GFLA_XS}: {GFLA_YS}\n\n")
    poses = read_gfla_annotations(path)
    assert list(poses) == ["fashionWOMENDressesid0000262902_1front.jpg", "b.jpg"]
    np.testing.assert_array_equal(poses["b.jpg"].people[0].body[0], [21, 88, 1])
    out = tmp_path / "out.csv"
    write_gfla_annotations(out, poses)
    lines = out.read_text().splitlines()
    assert lines[0] == "name:keypoints_y:keypoints_x"
    assert lines[1] == f"fashionWOMENDressesid0000262902_1front.jpg:{GFLA_YS}:{GFLA_XS}"
    again = read_gfla_annotations(out)
    for name in poses:
        np.testing.assert_array_equal(again[name].people[0].body, poses[name].people[0].body)


def test_pairs_csv_round_trip(tmp_path: Path):
    pairs = [("a.jpg", "b.jpg"), ("c d.jpg", "e,f.jpg")]
    path = tmp_path / "fasion-pairs-test.csv"
    write_pairs_csv(path, pairs)
    assert path.read_text().splitlines()[:2] == ["from,to", "a.jpg,b.jpg"]
    assert read_pairs_csv(path) == pairs
    indexed = tmp_path / "indexed.csv"
    indexed.write_text(",from,to\r\n0,x.jpg,y.jpg\r\n")
    assert read_pairs_csv(indexed) == [("x.jpg", "y.jpg")]


@pytest.mark.parametrize("content, fragment", [
    ("name,keypoints_y,keypoints_x\n", "line 1"),
    ("", "line 1"),
    (f"name:keypoints_y:keypoints_x\na.jpg:{GFLA_YS}\n", "line 2"),
    (f"name:keypoints_y:keypoints_x\na.jpg:{GFLA_YS}:{GFLA_XS}\nb.jpg:[1, 2]:{GFLA_XS}\n", "line 3"),
    (f"name:keypoints_y:keypoints_x\na.jpg:{GFLA_YS}:[1, 2, oops]\n", "line 2"),
    (f"name:keypoints_y:keypoints_x\na.jpg:{GFLA_YS}:{GFLA_XS}\na.jpg:{GFLA_YS}:{GFLA_XS}\n", "line 3"),
    (f"name:keypoints_y:keypoints_x\na.jpg:{GFLA_YS}:" + str([1.0] * 17 + [float('nan')]) + "\n", "line 2"),
])
def test_bad_gfla_annotations_name_file_and_line(tmp_path: Path, content: str, fragment: str):
    path = tmp_path / "ann.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        read_gfla_annotations(path)
    assert str(info.value).startswith(f"{path}, {fragment}"), str(info.value)


def test_bad_gfla_inputs_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="row 7: keypoints_x"):
        parse_gfla_keypoints(GFLA_YS, 5, what="row 7")
    with pytest.raises(ValueError, match="gfla keypoints"):
        parse_gfla_keypoints(GFLA_YS, GFLA_XS, width=0)
    with pytest.raises(ValueError, match="empty pose"):
        format_gfla_keypoints(Pose([], 176, 256), what="empty pose")
    with pytest.raises(ValueError, match=r"poses\['a:b'\]"):
        write_gfla_annotations(tmp_path / "x.csv", {"a:b": parse_gfla_keypoints(GFLA_YS, GFLA_XS)})
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        write_pairs_csv(tmp_path / "p.csv", [("a", "b"), ("c",)])
    bad = tmp_path / "pairs.csv"
    bad.write_text("source,target\na,b\n")
    with pytest.raises(ValueError, match=r"pairs\.csv, line 1"):
        read_pairs_csv(bad)
    bad.write_text("from,to\na,b\nc\n")
    with pytest.raises(ValueError, match=r"pairs\.csv, line 3"):
        read_pairs_csv(bad)


# ---- PCDMs text files ------------------------------------------------------------------------------------

def test_pcdms_vector_known_answer():
    xy = [None] * NUM_JOINTS
    xy[0] = (100.0, 50.0)
    xy[17] = (0.0, 200.0)
    pose = Pose([Person.from_xy(xy, confidence=0.7)], width=400, height=200)
    vec = pcdms_pose_vector(pose)
    assert vec.shape == (36,) and vec.dtype == np.float32
    want = np.full(36, -1.0, dtype=np.float32)
    want[0:2] = (0.25, 0.25)
    want[34:36] = (0.0, 1.0)
    np.testing.assert_array_equal(vec, want)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_pcdms_txt_round_trip(path: Path, tmp_path: Path):
    (pose,) = read_openpose_json(path)
    txt = tmp_path / "pose.txt"
    write_pcdms_pose_txt(txt, pose)
    lines = txt.read_text().splitlines()
    assert len(lines) == 18
    person = pose.people[0]
    for line, ok in zip(lines, person.present):
        assert (line == "-1 -1") == (not ok)
    back = read_pcdms_pose_txt(txt, width=pose.width, height=pose.height)
    np.testing.assert_array_equal(back.people[0].present, person.present)
    np.testing.assert_allclose(back.people[0].xy[person.present], person.xy[person.present], rtol=0, atol=1e-9)
    assert (back.people[0].body[person.present, 2] == 1.0).all()
    squashed = read_pcdms_pose_txt(txt)  # PCDMs' 512x512
    assert (squashed.width, squashed.height) == (512, 512)
    np.testing.assert_allclose(pcdms_pose_vector(squashed), pcdms_pose_vector(pose), rtol=0, atol=1e-6)


@pytest.mark.parametrize("content, fragment", [
    ("0.5 0.5\n" * 17, "expected 18 lines"),
    ("0.5 0.5\n" * 17 + "0.5\n", "line 18"),
    ("0.5 0.5\n" * 17 + "0.5 x\n", "line 18"),
    ("nan 0.5\n" + "0.5 0.5\n" * 17, "line 1"),
])
def test_bad_pcdms_txt_names_file(tmp_path: Path, content: str, fragment: str):
    path = tmp_path / "pose.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        read_pcdms_pose_txt(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value), str(info.value)


def test_pcdms_missing_and_empty_pose(tmp_path: Path):
    path = tmp_path / "pose.txt"
    path.write_text("-1 -1\n" * 17 + "0.5 0.25\n\n")
    pose = read_pcdms_pose_txt(path, width=200, height=400)
    assert pose.people[0].present.tolist() == [False] * 17 + [True]
    np.testing.assert_array_equal(pose.people[0].body[17], [100.0, 100.0, 1.0])
    with pytest.raises(ValueError, match="pose"):
        pcdms_pose_vector(Pose([], 10, 10))
    assert math.isclose(float(pcdms_pose_vector(pose)[35]), 0.25)


def test_bbox_area_and_largest_person_known_answers():
    def person(points):
        body = np.zeros((NUM_JOINTS, 3), np.float32)
        for j, (x, y) in enumerate(points):
            body[j] = (x, y, 1.0)
        return Person(body)

    small = person([(0, 0), (2, 3)])        # 2 x 3 = 6
    big = person([(10, 10), (14, 12)])      # 4 x 2 = 8
    empty = person([])
    assert small.bbox_area() == 6.0 and big.bbox_area() == 8.0 and empty.bbox_area() == 0.0
    pose = Pose([small, empty, big], 64, 64)
    assert pose.largest_person() is big
    assert Pose([empty, small], 64, 64).largest_person() is small
    with pytest.raises(ValueError, match="frame 3: expected at least one person"):
        Pose([], 64, 64).largest_person("frame 3")
