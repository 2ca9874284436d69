"""Dataset tools: GFLA/PIDM files built from photos with OpenPose JSON, and round trips between the GFLA/PIDM
and PCDMs layouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from posetransfer.core.evaluation.datasets import (add_dataset_arguments, annotations_to_pcdms, build_dataset,
                                                   dataset_main, from_pcdms, make_pairs, pairs_csv_to_json,
                                                   pairs_json_to_csv, pcdms_to_annotations, read_pairs_json,
                                                   to_pcdms)
from posetransfer.core.pose.keypoints import Person, Pose
from posetransfer.core.pose.formats import read_gfla_annotations, read_pairs_csv

ANNOTATION = """name:keypoints_y:keypoints_x
a.jpg:[10, 30, 30, 60, -1, 31, 62, 90, 110, 160, 210, 111, 161, 212, 8, 8, 9, 9]:[88, 88, 70, 66, -1, 106, 110, 112, 78, 76, 75, 98, 100, 101, 84, 92, 80, 96]
sub/b.jpg:[12, 33, -1, -1, -1, 33, 60, 88, 115, 165, 220, 114, 163, 221, 10, 10, -1, 11]:[60, 61, -1, -1, -1, 80, 83, 86, 52, 50, 49, 70, 72, 73, 57, 64, -1, 69]
"""


def _frame(points: list[tuple[float, float, float]], w: int, h: int, normalized=False) -> dict:
    flat = []
    for x, y, c in points:
        flat += [x / w, y / h, c] if normalized and c > 0 else [x, y, c]
    return {"version": 1.3, "people": [{"pose_keypoints_2d": flat}], "canvas_width": w, "canvas_height": h}


def _body(offset: float) -> list[tuple[float, float, float]]:
    pts = [(10.0 + offset + i, 5.0 + 3 * i, 0.9) for i in range(18)]
    pts[4] = (0.0, 0.0, 0.0)                                           # a missing joint
    return pts


def test_build_from_folder_with_openpose_json(tmp_path):
    photos = tmp_path / "photos"
    for person in ("alice", "bob"):
        (photos / person).mkdir(parents=True)
    img = np.full((64, 32, 3), 200, np.uint8)                         # 64 high, 32 wide
    for rel in ("alice/1.jpg", "alice/2.png", "bob/1.jpg", "bob/2.jpg", "bob/3.jpg"):
        cv2.imwrite(str(photos / rel), img)
    body = _body(0)
    body[17] = (40.0, 10.0, 0.9)                                        # off the photo: off the frame too
    (photos / "alice" / "1_keypoints.json").write_text(json.dumps(_frame(body, 32, 64)))
    (photos / "alice" / "2.json").write_text(json.dumps(_frame(_body(1), 32, 64, normalized=True)))
    two = _frame(_body(2), 32, 64)                                      # two people: the larger one is kept
    small = [(1.0, 1.0, 0.9), (2.0, 2.0, 0.9)] + [(0.0, 0.0, 0.0)] * 16
    two["people"].insert(0, {"pose_keypoints_2d": [v for p in small for v in p]})
    (photos / "bob" / "1_keypoints.json").write_text(json.dumps(two))
    (photos / "bob" / "2_keypoints.json").write_text(json.dumps(_frame(_body(3), 32, 64)))
    # bob/3.jpg has no JSON -> skipped

    rep = build_dataset(str(photos), str(tmp_path / "out"), split="test", frame=(128, 64))
    assert (rep.images, rep.annotated, rep.pairs) == (5, 4, 4)
    assert rep.skipped == [("bob/3.jpg", "no OpenPose JSON (and no detector)")]
    poses = read_gfla_annotations(rep.annotation_file, width=64, height=128)
    assert sorted(poses) == ["alice/1.jpg", "alice/2.png", "bob/1.jpg", "bob/2.jpg"]
    # frame 128x64 is twice the photo size: coordinates doubled and rounded; joints off the frame -> missing
    a1 = poses["alice/1.jpg"].people[0]
    assert a1.joint(0).tolist() == [20.0, 10.0]
    assert a1.joint(3).tolist() == [2 * (10 + 3), 2 * (5 + 9)]
    assert a1.joint(4) is None
    assert a1.joint(17) is None                                         # x = 80 > 63: written as missing
    assert a1.joint(16).tolist() == [2 * 26, 2 * 53]
    assert poses["alice/2.png"].people[0].joint(0).tolist() == [22.0, 10.0]   # normalised JSON read back to pixels
    assert poses["bob/1.jpg"].people[0].joint(1).tolist() == [2 * 13, 2 * 8]  # the larger person, not (1, 1)
    text = Path(rep.annotation_file).read_text().splitlines()
    assert text[0] == "name:keypoints_y:keypoints_x"
    assert text[1].startswith("alice/1.jpg:[10, 16, 22, 28, -1, ")
    assert read_pairs_csv(rep.pairs_file) == [("alice/1.jpg", "alice/2.png"), ("alice/2.png", "alice/1.jpg"),
                                               ("bob/1.jpg", "bob/2.jpg"), ("bob/2.jpg", "bob/1.jpg")]
    assert Path(rep.pairs_file).name == "fasion-pairs-test.csv"


def test_build_keeps_photo_pixels_and_uses_a_detector(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    for name in ("id1_front.png", "id1_back.png", "id2_side.png"):
        cv2.imwrite(str(photos / name), np.zeros((40, 30, 3), np.uint8))

    class FakeDetector:
        def detect(self, image):
            assert image.shape == (40, 30, 3) and image.dtype == np.float32
            return Pose([Person.from_xy([(5.4, 7.5)] * 18)], 30, 40)

    rep = build_dataset(str(photos), str(tmp_path / "o"), detector=FakeDetector(), group_by="prefix", split="train")
    poses = read_gfla_annotations(rep.annotation_file, width=30, height=40)
    assert poses["id1_front.png"].people[0].joint(0).tolist() == [5.0, 8.0]  # rounded half up, not rescaled
    assert read_pairs_csv(rep.pairs_file) == [("id1_back.png", "id1_front.png"), ("id1_front.png", "id1_back.png")]
    assert Path(rep.annotation_file).name == "fasion-annotation-train.csv"


def test_make_pairs_and_bad_inputs(tmp_path):
    assert make_pairs(["a/1.jpg", "a/2.jpg", "b/1.jpg"]) == [("a/1.jpg", "a/2.jpg"), ("a/2.jpg", "a/1.jpg")]
    assert len(make_pairs(["1.jpg", "2.jpg", "3.jpg"], "none")) == 6
    with pytest.raises(ValueError, match="group_by"):
        make_pairs(["1.jpg"], "identity")
    with pytest.raises(FileNotFoundError, match="--photos"):
        build_dataset(str(tmp_path / "missing"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="frame"):
        build_dataset(str(tmp_path), str(tmp_path / "o"), frame=(0, 10))
    (tmp_path / "nojson").mkdir()
    cv2.imwrite(str(tmp_path / "nojson" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no photo .* got a pose .*x.png: no OpenPose JSON"):
        build_dataset(str(tmp_path / "nojson"), str(tmp_path / "o"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"source_image": "a.jpg", "target_image": "b.jpg"}, {"source_image": "a.jpg"}]))
    with pytest.raises(ValueError, match="bad.json: item 1"):
        read_pairs_json(str(bad))


def test_pairs_round_trip_csv_json(tmp_path):
    csv_path = tmp_path / "fasion-pairs-test.csv"
    csv_path.write_text("from,to\na.jpg,b.jpg\nsub/b.jpg,a.jpg\n")
    assert pairs_csv_to_json(str(csv_path), str(tmp_path / "pairs.json")) == 2
    assert json.loads((tmp_path / "pairs.json").read_text()) == [
        {"source_image": "a.jpg", "target_image": "b.jpg"}, {"source_image": "sub/b.jpg", "target_image": "a.jpg"}]
    assert pairs_json_to_csv(str(tmp_path / "pairs.json"), str(tmp_path / "back.csv")) == 2
    assert (tmp_path / "back.csv").read_text() == csv_path.read_text()


def test_annotations_round_trip_through_pcdms_txt(tmp_path):
    ann = tmp_path / "fasion-annotation-test.csv"
    ann.write_text(ANNOTATION)
    assert annotations_to_pcdms(str(ann), str(tmp_path / "poses")) == 2
    lines = (tmp_path / "poses" / "a.txt").read_text().splitlines()
    assert len(lines) == 18
    assert [float(v) for v in lines[0].split()] == pytest.approx([88 / 176, 10 / 256])   # x / width, y / height
    assert lines[4] == "-1 -1"
    assert (tmp_path / "poses" / "sub" / "b.txt").is_file()
    assert pcdms_to_annotations(str(tmp_path / "poses"), str(tmp_path / "back.csv")) == 2
    assert (tmp_path / "back.csv").read_text() == ANNOTATION                            # byte-identical


def test_layout_conversion_both_ways_and_cli(tmp_path, capsys):
    (tmp_path / "fasion-annotation-test.csv").write_text(ANNOTATION)
    (tmp_path / "fasion-pairs-test.csv").write_text("from,to\na.jpg,sub/b.jpg\n")
    out = to_pcdms(str(tmp_path / "fasion-annotation-test.csv"), str(tmp_path / "fasion-pairs-test.csv"),
                   str(tmp_path / "pcdms"))
    assert (out["pairs"], out["poses"]) == (1, 2)
    back = from_pcdms(out["poses_dir"], out["pairs_json"], str(tmp_path / "gfla"), split="test")
    assert Path(back["annotation_csv"]).read_text() == ANNOTATION
    assert Path(back["pairs_csv"]).read_text() == "from,to\na.jpg,sub/b.jpg\n"

    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    args = parser.parse_args(["to-pcdms", "--annotations", str(tmp_path / "fasion-annotation-test.csv"),
                              "--out", str(tmp_path / "cli"), "--frame", "256x176"])
    assert dataset_main(args) == 0
    assert (tmp_path / "cli" / "poses" / "a.txt").is_file()
    args = parser.parse_args(["from-pcdms", "--poses", str(tmp_path / "cli" / "poses"), "--out",
                              str(tmp_path / "cli2"), "--split", "train"])
    assert dataset_main(args) == 0
    assert (tmp_path / "cli2" / "fasion-annotation-train.csv").read_text() == ANNOTATION
    args = parser.parse_args(["to-pcdms", "--annotations", "x.csv", "--out", str(tmp_path / "c3"), "--frame", "abc"])
    with pytest.raises(ValueError, match="--frame"):
        dataset_main(args)
