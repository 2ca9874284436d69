"""Known-answer tests for core.pose.geometry (pixel-centre convention: x -> (x + 0.5) * s - 0.5)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from posetransfer.core.pose.geometry import crop, fit_pose, from_normalized, hflip, pad, resize, to_normalized
from posetransfer.core.pose.keypoints import FACE_FLIP_PERMUTATION, Person, Pose

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def one_joint_pose(joint: int, x: float, y: float, w: int, h: int) -> Pose:
    xy = [None] * 18
    xy[joint] = (x, y)
    return Pose([Person.from_xy(xy)], w, h)


def dot_image(w: int, h: int, x: int, y: int, channels: int = 3, radius: int = 0) -> np.ndarray:
    img = np.zeros((h, w, channels), np.uint8)
    img[y - radius:y + radius + 1, x - radius:x + radius + 1] = 255
    return img


def rich_pose(w: int = 100, h: int = 80) -> Pose:
    rng = np.random.default_rng(0)
    body = np.column_stack([rng.uniform(0, w, 18), rng.uniform(0, h, 18), rng.uniform(0.3, 1, 18)])
    body[[6, 9]] = 0  # left elbow and right knee missing
    face = np.column_stack([rng.uniform(0, w, 70), rng.uniform(0, h, 70), np.ones(70)])
    lh = np.column_stack([rng.uniform(0, w, 21), rng.uniform(0, h, 21), np.ones(21)])
    rh = np.column_stack([rng.uniform(0, w, 21), rng.uniform(0, h, 21), np.full(21, 0.5)])
    return Pose([Person(body, face, lh, rh, {"person_id": 3})], w, h, {"version": 1.3})


# --- hflip -------------------------------------------------------------------------------------------------

def test_hflip_swaps_left_and_right():
    _, out = hflip(None, one_joint_pose(4, 10, 20, 100, 50))  # right wrist at x = 10
    person = out.people[0]
    assert person.present.tolist() == [j == 7 for j in range(18)]
    assert person.joint("left_wrist").tolist() == [89, 20]


def test_hflip_hands_face_and_image():
    pose = rich_pose()
    img = np.arange(80 * 100 * 2).reshape(80, 100, 2)
    fimg, fpose = hflip(img, pose)
    assert fimg[5, 0, 1] == img[5, 99, 1]
    src, dst = pose.people[0], fpose.people[0]
    np.testing.assert_allclose(dst.left_hand[:, 0], 99 - src.right_hand[:, 0])
    np.testing.assert_array_equal(dst.left_hand[:, 2], src.right_hand[:, 2])
    # face point 36 (right eye corner) becomes point 45, mirrored
    assert FACE_FLIP_PERMUTATION[36] == 45
    np.testing.assert_allclose(dst.face[45], [99 - src.face[36, 0], src.face[36, 1], 1])
    # the missing left elbow (6) moves to the right elbow slot (3), stored values unchanged
    assert not dst.present[3] and dst.body[3].tolist() == [0, 0, 0]


def test_hflip_twice_is_identity():
    pose = rich_pose()
    img = np.random.default_rng(1).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    img2, pose2 = hflip(*hflip(img, pose))
    np.testing.assert_array_equal(img2, img)
    a, b = pose.people[0], pose2.people[0]
    for name in ("body", "face", "left_hand", "right_hand"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-12)
    assert b.extra == a.extra and pose2.extra == pose.extra


def test_hflip_short_face_is_only_mirrored():
    person = Person(np.zeros((18, 3)), face=np.array([[10.0, 5, 1], [20, 5, 1]]))
    _, out = hflip(None, Pose([person], 50, 50))
    np.testing.assert_allclose(out.people[0].face[:, 0], [39, 29])


# --- resize / crop / pad ----------------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "area", "nearest"])
def test_resize_upscale_dot_follows_joint(interpolation):
    img, pose = dot_image(20, 10, 7, 4), one_joint_pose(4, 7, 4, 20, 10)
    out_img, out_pose = resize(img, pose, 60, 30, interpolation)
    x, y = out_pose.people[0].joint(4)
    assert (x, y) == (22.0, 13.0)  # (7 + 0.5) * 3 - 0.5, (4 + 0.5) * 3 - 0.5
    assert out_img.shape == (30, 60, 3) and out_img.dtype == np.uint8
    assert out_img[13, 22].tolist() == [255, 255, 255]
    weights = out_img[..., 0].astype(float)  # the dot's centre of mass is the joint
    ys, xs = np.mgrid[:30, :60]
    np.testing.assert_allclose([(weights * ys).sum() / weights.sum(), (weights * xs).sum() / weights.sum()], [13, 22])


def test_resize_area_downscale_and_squash():
    # a 3x3 block centred on (x=13, y=7) averages to one pixel at ((13 + 0.5) / 3 - 0.5, ...) = (4, 2)
    img, pose = dot_image(30, 15, 13, 7, radius=1), one_joint_pose(0, 13, 7, 30, 15)
    out_img, out_pose = resize(img, pose, 10, 5, "area")
    assert out_pose.people[0].joint(0).tolist() == [4, 2]
    assert out_img[2, 4].tolist() == [255] * 3 and out_img.sum() == 255 * 3
    # non-uniform: x halves, y doubles
    _, sq = resize(None, pose, 15, 30)
    assert sq.people[0].joint(0).tolist() == [6.25, 14.5] and (sq.width, sq.height) == (15, 30)


def test_resize_nearest_matches_cv2_exact_and_any_dtype():
    img = np.random.default_rng(2).integers(0, 255, (13, 17), dtype=np.uint8)
    np.testing.assert_array_equal(resize(img, None, 29, 7, "nearest")[0],
                                  cv2.resize(img, (29, 7), interpolation=cv2.INTER_NEAREST_EXACT))
    for dtype in (np.bool_, np.int32, np.int8, np.float16, np.uint8):
        arr = (np.random.default_rng(3).random((8, 6, 7)) * 100).astype(dtype)
        for interpolation in ("bilinear", "area", "nearest"):
            out, _ = resize(arr, None, 3, 4, interpolation)
            assert out.shape == (4, 3, 7) and out.dtype == arr.dtype
    flat = np.full((8, 6), 1000, np.int32)
    assert (resize(flat, None, 3, 4, "bicubic")[0] == 1000).all()


def test_crop_moves_joint_and_keeps_pixel():
    img, pose = dot_image(40, 30, 25, 12), one_joint_pose(4, 25, 12, 40, 30)
    pose.people[0].body[0] = (2, 3, 1.0)  # will leave the crop: stays present, outside the canvas
    out_img, out_pose = crop(img, pose, 10, 5, 35, 20)
    person = out_pose.people[0]
    assert (out_pose.width, out_pose.height) == (25, 15) and out_img.shape == (15, 25, 3)
    assert person.joint(4).tolist() == [15, 7] and out_img[7, 15].tolist() == [255] * 3
    assert person.joint(0).tolist() == [-8, -2]


@pytest.mark.parametrize("box", [(5, 5, 5, 10), (10, 5, 4, 10), (-1, 0, 10, 10), (0, 0, 41, 10), (0, 0, 10, 31),
                                 (0.5, 0, 10, 10)])
def test_crop_rejects_bad_boxes(box):
    with pytest.raises(ValueError):
        crop(np.zeros((30, 40)), None, *box)


def test_pad_moves_joint_and_fills():
    img, pose = dot_image(20, 10, 3, 4), one_joint_pose(9, 3, 4, 20, 10)
    out_img, out_pose = pad(img, pose, 5, 2, 1, 7, value=(10, 20, 30))
    assert out_img.shape == (19, 26, 3) and (out_pose.width, out_pose.height) == (26, 19)
    assert out_pose.people[0].joint(9).tolist() == [8, 6] and out_img[6, 8].tolist() == [255] * 3
    assert out_img[0, 0].tolist() == [10, 20, 30] and out_img[18, 25].tolist() == [10, 20, 30]


def test_image_and_pose_sizes_must_match():
    with pytest.raises(ValueError, match="canvas"):
        pad(np.zeros((10, 20)), one_joint_pose(0, 1, 1, 10, 20), 1, 1, 1, 1)
    with pytest.raises(ValueError):
        hflip(None, None)


# --- fit_pose / normalisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [
    ("stretch", [20.5, 81.5]),    # sx = 2, sy = 4
    ("contain", [20.5, 90.5]),    # s = 2, content 200x100 centred: oy = 50
    ("cover", [-58.5, 81.5]),     # s = 4, content 400x200 centred: ox = -100
])
def test_fit_pose_modes(mode, expected):
    out = fit_pose(one_joint_pose(1, 10, 20, 100, 50), 200, 200, mode)
    assert out.people[0].joint(1).tolist() == expected and (out.width, out.height) == (200, 200)


def test_fit_pose_contain_centres_the_canvas():
    # the canvas centre ((W - 1) / 2, (H - 1) / 2) maps to the new canvas centre in every mode
    for mode in ("stretch", "contain", "cover"):
        out = fit_pose(one_joint_pose(1, 49.5, 24.5, 100, 50), 60, 90, mode)
        np.testing.assert_allclose(out.people[0].joint(1), [29.5, 44.5])


def test_normalized_round_trip():
    d = json.loads((SAMPLES / "astronaut.pose.json").read_text())
    pose = Pose([Person(d["people"][0]["pose_keypoints_2d"])], d["canvas_width"], d["canvas_height"])
    arr = to_normalized(pose)
    assert arr.shape == (1, 18, 3)
    person = pose.people[0]
    np.testing.assert_allclose(arr[0, 0], [person.body[0, 0] / 512, person.body[0, 1] / 512, person.body[0, 2]])
    assert (arr[0, ~person.present] == 0).all() and (~person.present).any()
    back = from_normalized(arr, 512, 512)
    np.testing.assert_allclose(back.people[0].body, person.body, atol=1e-12)
    with pytest.raises(ValueError):
        from_normalized(np.zeros((1, 17, 3)), 10, 10)
