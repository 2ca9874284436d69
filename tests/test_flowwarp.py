"""Known-answer tests of the training-free FlowWarp (core.part_flow, core.flowwarp)."""

import itertools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posetransfer.core.flowwarp import FlowWarpOptions, flow_warp, prepare_source, warp_prepared
from posetransfer.core.images import load_image
from posetransfer.core.keypoints import JOINT_INDEX, Person, Pose
from posetransfer.core.parts import PART_BY_NAME, PART_NAMES
from posetransfer.core.pose_io import read_openpose_json
from posetransfer.core.render import render_part_labels, render_part_masks

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NAMES = ["fashion_standing", "model_red_background", "jumper", "astronaut", "grace_hopper"]


def sample(name):
    return load_image(SAMPLES / f"{name}.png"), read_openpose_json(SAMPLES / f"{name}.pose.json")


def moved(pose: Pose, fn, width=None, height=None) -> Pose:
    return pose.map_points(fn, width, height)


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("segmentation", ["grabcut", "skeleton"])
def test_same_pose_gives_back_the_source(name, segmentation):
    image, pose = sample(name)
    r = flow_warp([image], pose, pose, FlowWarpOptions(retarget=False, segmentation=segmentation))[0]
    on_person = r.person.numpy() >= 1
    assert on_person.sum() > 1000
    assert np.abs(hwc(r.image) - image)[on_person].max() < 1e-3
    assert r.visibility.min() == 1  # nothing to generate
    assert torch.allclose(r.flow, torch.zeros_like(r.flow), atol=1e-3)


def _affine_check(image, pose, matrix, size):
    """Warp with every keypoint moved by ``matrix`` (source -> target); compare with cv2.warpAffine."""
    m = np.asarray(matrix, float)
    target = moved(pose[0], lambda xy: xy @ m[:, :2].T + m[:, 2], size[1], size[0])
    opts = FlowWarpOptions(retarget=False, segmentation="skeleton", background="keep")
    r = flow_warp([image], pose, [target], opts)[0]
    expect = cv2.warpAffine(image, m, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    on_person = r.person.numpy() >= 1
    # Keep away from the silhouette's edge, where a pixel mixes person and background either way.
    on_person = cv2.erode(on_person.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert on_person.sum() > 2000
    err = np.abs(hwc(r.image) - expect)[on_person]
    return err, r


def test_translated_pose_translates_the_person():
    image, pose = sample("fashion_standing")
    err, r = _affine_check(image, pose, [[1, 0, 23], [0, 1, -11]], (350, 350))
    assert err.max() < 2e-3
    assert r.visibility[r.person >= 1].min() == 1


def test_scaled_pose_scales_the_person():
    image, pose = sample("fashion_standing")
    s = 1.25  # about the image centre, onto a bigger canvas
    err, _ = _affine_check(image, pose, [[s, 0, 30], [0, s, 10]], (460, 460))
    assert np.percentile(err, 99) < 0.02 and err.mean() < 5e-3


def _striped_figure(size=256):
    """A synthetic person: each part a distinct colour with stripes across it, on white."""
    xy = {"neck": (128, 60), "nose": (128, 38), "right_eye": (122, 33), "left_eye": (134, 33),
          "right_ear": (116, 36), "left_ear": (140, 36),
          "right_shoulder": (104, 64), "right_elbow": (96, 104), "right_wrist": (92, 142),
          "left_shoulder": (152, 64), "left_elbow": (160, 104), "left_wrist": (164, 142),
          "right_hip": (114, 140), "right_knee": (112, 190), "right_ankle": (110, 238),
          "left_hip": (142, 140), "left_knee": (144, 190), "left_ankle": (146, 238)}
    person = Person.from_xy([xy.get(n) for n in (
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
        "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
        "right_eye", "left_eye", "right_ear", "left_ear")])
    pose = Pose([person], size, size)
    labels = render_part_labels(pose)
    rng = np.random.RandomState(0)
    colours = rng.uniform(0.1, 0.9, (len(PART_NAMES) + 1, 3)).astype(np.float32)
    colours[0] = 1.0
    image = colours[labels]
    stripes = ((np.arange(size) // 4) % 2 == 0)[:, None] & (labels > 0)
    image[stripes] *= 0.8
    return image, pose, colours


def test_rotated_forearm_lands_where_expected():
    image, pose, colours = _striped_figure()
    elbow, wrist = JOINT_INDEX["right_elbow"], JOINT_INDEX["right_wrist"]
    target = _rotate_joint(pose, wrist, elbow, 70)  # swing the forearm outwards
    e = target.people[0].body[elbow, :2]
    v = target.people[0].body[wrist, :2] - e
    options = FlowWarpOptions(retarget=False, segmentation="skeleton", background="white")
    r = flow_warp([image], [pose], [target], options)[0]
    out = hwc(r.image)
    label = PART_BY_NAME["right_forearm"].label
    col = colours[label]
    # Stripes are col and 0.8 col; sampling between them mixes the two: accept the segment between.
    t = np.clip((out @ col) / (col @ col), 0.8, 1.0)
    got = np.abs(out - t[..., None] * col).max(-1) < 0.03
    # Known answer: the source's forearm pixels rotated by the same angle about the elbow. Within one
    # forearm radius of the elbow the upper arm and forearm maps blend by design: left out of the score.
    src_forearm = (render_part_labels(pose) == label).astype(np.float32)
    rot = cv2.getRotationMatrix2D((float(e[0]), float(e[1])), -70, 1.0)
    want = cv2.warpAffine(src_forearm, rot, (256, 256), flags=cv2.INTER_NEAREST) > 0.5
    from posetransfer.core.parts import body_scale
    from posetransfer.core.parts import part_radius
    yy, xx = np.mgrid[:256, :256]
    outside_joint = np.hypot(xx - e[0], yy - e[1]) > part_radius("right_forearm", body_scale(pose.people[0]))
    # Nor is the one-pixel band along the mask's edge (anti-aliasing and rasterisation differ there).
    k = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(want.astype(np.uint8), k).astype(bool) & ~cv2.erode(want.astype(np.uint8), k).astype(bool)
    scored = outside_joint & ~edge
    got, want = got & scored, want & scored
    iou = (got & want).sum() / (got | want).sum()
    assert iou > 0.9, iou
    # The forearm left its old place: the source forearm's far half is background (white) now.
    old = render_part_masks(pose)[PART_NAMES.index("right_forearm")] > 0
    far = old & ~render_part_masks(target, radius_scale=1.2).any(0) & (np.hypot(xx - e[0], yy - e[1]) > 0.5 * np.hypot(*v))
    assert np.abs(out[far] - 1).max() < 0.05


@pytest.mark.parametrize("src,tgt", list(itertools.permutations(NAMES, 2)))
def test_every_sample_pair_runs(src, tgt):
    image, spose = sample(src)
    _, tpose = sample(tgt)
    for retarget in (False, True):
        r = flow_warp([image], spose, tpose, FlowWarpOptions(retarget=retarget, segmentation="skeleton"))[0]
        canvas = spose[0] if retarget else tpose[0]
        assert r.image.shape == (3, canvas.height, canvas.width)
        assert torch.isfinite(r.image).all() and torch.isfinite(r.flow).all()
        assert r.image.min() >= 0 and r.image.max() <= 1
        assert set(torch.unique(r.visibility).tolist()) <= {0.0, 1.0}


def _rotate_joint(pose, joint, about, degrees):
    out = pose.copy()
    body = out.people[0].body
    c, v = body[about, :2], body[joint, :2] - body[about, :2]
    a = math.radians(degrees)
    body[joint, :2] = c + [v[0] * math.cos(a) - v[1] * math.sin(a), v[0] * math.sin(a) + v[1] * math.cos(a)]
    return out


def test_missing_joints_never_crash_and_mark_what_cannot_be_sourced():
    image, pose, _ = _striped_figure()
    elbow, wrist, knee = (JOINT_INDEX[n] for n in ("right_elbow", "right_wrist", "left_knee"))
    source = pose.copy()
    source.people[0].body[wrist, 2] = 0  # the source lacks its right forearm
    target = _rotate_joint(pose, wrist, elbow, 70)
    target.people[0].body[knee, 2] = 0  # the target lacks its left thigh and shin
    options = FlowWarpOptions(retarget=False, segmentation="skeleton", background="white")
    r = flow_warp([image], [source], [target], options)[0]
    assert torch.isfinite(r.image).all()
    # The target's right forearm cannot come from the source: content to generate (away from the elbow).
    forearm = render_part_masks(target)[PART_NAMES.index("right_forearm")] > 0
    e = target.people[0].body[elbow, :2]
    yy, xx = np.mgrid[:256, :256]
    far = forearm & (np.hypot(xx - e[0], yy - e[1]) > 20)
    assert (r.visibility.numpy()[far] == 0).mean() > 0.9
    # A part only the target lacks is simply not drawn: no hole where the left shin was.
    shin = render_part_masks(pose)[PART_NAMES.index("left_shin")] > 0
    assert r.visibility.numpy()[shin].mean() > 0.9


def test_source_without_usable_joints_is_a_clear_error():
    image, pose = sample("fashion_standing")
    empty = pose[0].copy()
    empty.people[0].body[:, 2] = 0
    with pytest.raises(ValueError, match="source"):
        flow_warp([image], [empty], pose)


def test_batch_rules():
    image, pose = sample("fashion_standing")
    _, jump = sample("jumper")
    small = cv2.resize(image, (88, 88), interpolation=cv2.INTER_AREA)
    sp = moved(pose[0], lambda xy: (xy + 0.5) * 88 / 350 - 0.5, 88, 88)
    tp = moved(jump[0], lambda xy: (xy + 0.5) * 88 / 400 - 0.5, 88, 88)
    opts = FlowWarpOptions(retarget=False, segmentation="skeleton")
    assert len(flow_warp([small], [sp], [tp, sp, tp], opts)) == 3  # 1 image, N target poses
    assert len(flow_warp([small, small], [sp, sp], [tp, sp], opts)) == 2  # N with N
    with pytest.raises(ValueError, match="batch mismatch"):
        flow_warp([small, small], [sp, sp], [tp, sp, tp], opts)
    with pytest.raises(ValueError, match="source_pose"):
        flow_warp([small, small], [sp], [tp, sp], opts)
    with pytest.raises(ValueError, match=r"source_pose\[0\]: canvas 88x100 is not the frame of its image 350x350"):
        flow_warp([image], [moved(sp, lambda xy: xy, 88, 100)], [tp], opts)  # pose not on this image


def test_prepared_source_is_reused_and_deterministic():
    image, pose = sample("model_red_background")
    _, jump = sample("jumper")
    opts = FlowWarpOptions(retarget=True)
    prepared = prepare_source(image, pose[0], opts)
    a = warp_prepared(prepared, jump[0], opts)
    b = flow_warp([image], pose, jump, opts)[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.visibility, b.visibility)


def test_options_are_validated():
    with pytest.raises(ValueError, match="background"):
        FlowWarpOptions(background="blur")
    with pytest.raises(ValueError, match="segmentation"):
        FlowWarpOptions(segmentation="sam")
