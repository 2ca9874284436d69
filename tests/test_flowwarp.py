"""Known-answer tests of the training-free FlowWarp (core.warp.part_warp, core.warp.flowwarp)."""

import itertools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp, prepare_source, warp_prepared
from posetransfer.core.images import load_image
from posetransfer.core.pose.keypoints import JOINT_INDEX, Person, Pose
from posetransfer.core.body.parts import PART_BY_NAME, PART_NAMES
from posetransfer.core.pose.formats import read_openpose_json
from posetransfer.core.pose.render import render_part_labels, render_part_masks

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
    from posetransfer.core.body.parts import body_scale
    from posetransfer.core.body.parts import part_radius
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
    # A knee only the target lacks (its hip and ankle are there) is guessed where the source's leg puts it,
    # here the source's own knee (same hip and ankle): the leg is drawn, a hole to generate (but next to the
    # hip, which the torso's map reaches), showing the source's leg. (Before, it was not drawn at all: the
    # backdrop showed where the leg is.)
    colours = _striped_figure()[2]
    hip = target.people[0].body[JOINT_INDEX["left_hip"], :2]
    for name in ("left_thigh", "left_shin"):
        only = render_part_masks(pose)[PART_NAMES.index(name)] > 0
        only &= render_part_labels(pose) == PART_BY_NAME[name].label
        assert (r.person.numpy()[only] >= 1).mean() > 0.9, name
        away = only & (np.hypot(xx - hip[0], yy - hip[1]) > 30)
        assert (r.visibility.numpy()[away] == 0).mean() > 0.8, name
        col = colours[PART_BY_NAME[name].label]
        out = hwc(r.image)[only]
        t = np.clip(out @ col / (col @ col), 0.5, 1.0)  # the part's colour or its darker stripe shade
        assert (np.abs(out - t[:, None] * col).max(-1) < 0.1).mean() > 0.8, name


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


# View changes (front <-> back, side views, swapped leg labels): see core/body/views.py.

def _part_flow_of(image, source_pose, target_pose):
    from posetransfer.core.warp.part_warp import part_flow
    from posetransfer.core.body.segmentation import part_distance_fields, part_label_map, person_mask
    from posetransfer.core.body.views import uncross_legs
    s, t = uncross_legs(source_pose.people[0]), uncross_legs(target_pose.people[0])
    fields = part_distance_fields(s, image.shape[:2])
    mask = torch.from_numpy(person_mask(image, s, "skeleton", fields))
    return part_flow(s, part_label_map(fields, mask), mask, t, (target_pose.height, target_pose.width))


def _regions(pose, radius_scale):
    return render_part_masks(pose, radius_scale=radius_scale) > 0


def test_turned_around_figure_keeps_every_part_within_its_target_region():
    from posetransfer.core.body.views import mirrored, view_flips
    image, pose, _ = _striped_figure()
    # Turned around: same joint positions, left and right labels swapped (the back view's labels).
    back = Pose([mirrored(pose.people[0])], 256, 256)
    assert view_flips(pose.people[0], back.people[0])
    pf = _part_flow_of(image, pose, back)
    regions = _regions(back, 1.3)  # a part's region with a margin (a part takes pixels next to its joints)
    for i, name in enumerate(PART_NAMES):
        own = pf.owner.numpy() == PART_BY_NAME[name].label
        assert own.sum() <= regions[i].sum(), name
        assert (own & ~regions.any(0)).sum() <= 0.01 * regions[i].sum(), name


def test_mirrored_torso_points_never_give_a_mirrored_map():
    from posetransfer.core.body.part_transforms import torso_transform
    src = np.array([[0, 0], [-20, 2], [20, 2], [-12, 60], [12, 60]], float)
    dst = src * [-1, 1] + [5, 3]  # a reflection, which no turn of a real body is
    m, kind = torso_transform(dst, src, 1.0)
    assert kind in ("similarity", "translation") and np.linalg.det(m[:, :2]) > 0
    axis = (dst[0], dst[3:].mean(0), src[0], src[3:].mean(0))  # with the body axis: it maps onto itself
    m, kind = torso_transform(dst, src, 1.0, axis)
    assert kind == "axis" and np.allclose(m[:, :2], np.eye(2)) and np.allclose(m[:, 2], [-5, -3])
    # Degenerate (all points on a line): never a smear, the scale stays within the clamp.
    line = np.array([[0, 0], [0, 1], [0, 2], [0, 60], [0, 61]], float)
    m, _ = torso_transform(line, src, 1.0)
    s = np.linalg.svd(m[:, :2], compute_uv=False)
    assert np.all(np.isfinite(m)) and s.max() <= 2 * np.sqrt(2) + 1e-9 and s.min() > 0
    # A well-conditioned rotation + scale is kept exactly.
    a = np.radians(20)
    rot = 1.3 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m, kind = torso_transform(src, src @ rot.T + [7, -4], 1.3)
    assert kind == "affine" and np.allclose(m[:, :2], rot, atol=1e-6) and np.allclose(m[:, 2], [7, -4], atol=1e-6)


def test_torso_whose_sides_swap_through_a_side_view_keeps_its_size():
    """A front source and a target turned past a side view: its shoulders and hips lie on the other image
    sides, narrower, and view_flips does not mirror it (a side view). Every fit over those points mirrors; the
    least-squares similarity of mirrored points shrinks (the torso came out 1.7x too large on the turnaround
    samples). The torso follows its neck-to-hips axis instead, the same length in both poses: scale 1."""
    from posetransfer.core.body.part_transforms import fit_part_transforms
    from posetransfer.core.body.views import view_flips
    image, pose, _ = _striped_figure()
    turned = pose.copy()
    b = turned.people[0].body
    for r, l in (("right_shoulder", "left_shoulder"), ("right_hip", "left_hip")):
        i, j = JOINT_INDEX[r], JOINT_INDEX[l]
        mid = (b[i, 0] + b[j, 0]) / 2
        b[i, 0], b[j, 0] = mid + 0.4 * (mid - b[i, 0]), mid + 0.4 * (mid - b[j, 0])  # swapped, 40 % as wide
    assert not view_flips(pose.people[0], turned.people[0])
    m = fit_part_transforms(pose.people[0], turned.people[0])["torso"]
    along = np.linalg.norm(m[:, :2] @ [0, 1.0])  # the body axis is vertical in both poses
    assert abs(along - 1) < 0.05, along
    assert np.linalg.det(m[:, :2]) > 0
    neck = turned.people[0].body[JOINT_INDEX["neck"], :2]
    assert np.allclose(m[:, :2] @ neck + m[:, 2], pose.people[0].body[JOINT_INDEX["neck"], :2], atol=0.5)
    # End to end: the torso drawn is no larger than the target's torso region (with a margin).
    pf = _part_flow_of(image, pose, turned)
    torso = pf.owner.numpy() == PART_BY_NAME["torso"].label
    assert 0 < torso.sum() <= _regions(turned, 1.3)[PART_NAMES.index("torso")].sum()


def test_head_of_a_side_view_keeps_its_size():
    """In a side view the eyes and ears nearly coincide: a similarity fitted to the face joints alone scales
    the head by their spread (side source -> front target: 0.72x here, 0.53x on the turnaround samples), not
    by its size. The head map keeps the body-scale ratio within HEAD_SCALE_CLAMP, about the face's centre."""
    from posetransfer.core.body.part_transforms import HEAD_SCALE_CLAMP, fit_part_transforms
    image, pose, _ = _striped_figure()
    side = pose.copy()
    b = side.people[0].body
    nose = b[JOINT_INDEX["nose"], :2].copy()
    for n in ("right_eye", "left_eye", "right_ear", "left_ear"):
        j = JOINT_INDEX[n]
        b[j, 0] = nose[0] + 0.3 * (b[j, 0] - nose[0]) + (6 if "ear" in n else 0)  # seen from the side
    m = fit_part_transforms(side.people[0], pose.people[0])["head"]  # the side view is the source
    scale = np.sqrt(np.linalg.det(m[:, :2]))  # the body-scale ratio is 1
    assert 1 / HEAD_SCALE_CLAMP - 1e-9 <= scale <= HEAD_SCALE_CLAMP + 1e-9, scale
    face = [JOINT_INDEX[n] for n in ("nose", "right_eye", "left_eye", "right_ear", "left_ear", "neck")]
    centre, source_centre = pose.people[0].body[face, :2].mean(0), b[face, :2].mean(0)
    assert np.allclose(m[:, :2] @ centre + m[:, 2], source_centre, atol=1e-6)  # the face's centre maps onto its own


def test_side_view_target_keeps_the_torso_within_its_hull():
    from posetransfer.core.body.part_fields import normalised_distance, part_geometry
    from posetransfer.core.flow import base_coords
    image, pose, _ = _striped_figure()
    side = pose.copy()
    b = side.people[0].body
    for r, l in (("right_shoulder", "left_shoulder"), ("right_hip", "left_hip")):
        mid = (b[JOINT_INDEX[r], 0] + b[JOINT_INDEX[l], 0]) / 2
        b[JOINT_INDEX[r], 0], b[JOINT_INDEX[l], 0] = mid - 0.5, mid + 0.5  # shoulder width ~ 0
    pf = _part_flow_of(image, pose, side)
    torso = pf.owner.numpy() == PART_BY_NAME["torso"].label
    assert torso.sum() > 500
    g = part_geometry(side.people[0])["torso"]
    hull = normalised_distance(g, base_coords(256, 256)[0]).numpy() < 1.5
    assert (torso & ~hull).sum() <= 0.02 * torso.sum()
    # Nothing is smeared sideways: every person pixel lies within the target's part regions.
    person = pf.person.numpy() > 0.5
    assert (person & ~_regions(side, 1.3).any(0)).sum() <= 0.01 * person.sum()


def test_crossed_thigh_labels_give_uncrossed_legs():
    image, pose, _ = _striped_figure()
    crossed = pose.copy()
    b = crossed.people[0].body
    for r, l in (("right_knee", "left_knee"), ("right_ankle", "left_ankle")):
        b[[JOINT_INDEX[r], JOINT_INDEX[l]]] = b[[JOINT_INDEX[l], JOINT_INDEX[r]]]  # thighs now cross in 2-D
    r = flow_warp([image], [pose], [crossed], FlowWarpOptions(segmentation="skeleton", background="white",
                                                               retarget=False))[0]
    legs = _regions(pose, 1.0)[[PART_NAMES.index(n) for n in ("right_thigh", "right_shin", "left_thigh", "left_shin")]]
    legs = cv2.erode(legs.any(0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    # The legs stay where they are (the source's own legs): the same picture, not an X.
    assert np.abs(hwc(r.image) - image)[legs].mean() < 0.01


class _ShiftEstimator:
    """A flow model whose answer is known: every pixel moves ``dx`` to the right, all of it visible."""

    def __init__(self, dx):
        self.dx = dx

    def estimate(self, source, source_pose, target_pose):
        h, w = target_pose.height, target_pose.width
        flow = torch.zeros(1, 2, h, w)
        flow[:, 0] = -self.dx
        return flow, torch.ones(1, 1, h, w)


def test_model_method_is_composited_like_the_parts_method():
    image, pose = sample("fashion_standing")
    shifted = moved(pose[0], lambda xy: xy + [20, 0])
    opts = FlowWarpOptions(method="single", segmentation="skeleton", background="white", retarget=False)
    r = flow_warp([image], pose, [shifted], opts, estimator=_ShiftEstimator(20))[0]
    parts = flow_warp([image], pose, [shifted], FlowWarpOptions(segmentation="skeleton", background="white",
                                                                 retarget=False))[0]
    # The person mask is the moved source person, not the visibility map (which is all ones here).
    assert r.person.min() == 0 and (r.person.numpy() >= 1).sum() > 1000
    iou = ((r.person > 0.5) & (parts.person > 0.5)).sum() / ((r.person > 0.5) | (parts.person > 0.5)).sum()
    assert iou > 0.9
    # Away from the person the background option applies (white), where the flow alone would copy the photo.
    away = (r.person.numpy() == 0) & (parts.person.numpy() == 0)
    assert np.abs(hwc(r.image)[away] - 1).max() < 1e-5
    on = r.person.numpy() >= 1
    expect = np.roll(image, 20, axis=1)
    assert np.abs(hwc(r.image) - expect)[on].max() < 1e-3


def test_side_view_source_leaves_the_hidden_far_arm_to_generate():
    from posetransfer.core.warp.part_warp import hidden_parts
    from posetransfer.core.body.segmentation import part_distance_fields, part_label_map, person_mask
    from posetransfer.core.body.views import side_view_depth_order
    _, front, _ = _striped_figure()
    side = front.copy()
    b = side.people[0].body
    xy = {"right_shoulder": (127.5, 64), "left_shoulder": (128.5, 64), "right_hip": (127.5, 140),
          "left_hip": (128.5, 140), "right_elbow": (118, 102), "right_wrist": (110, 136),  # near arm, in front
          "left_elbow": (131, 102), "left_wrist": (133, 136), "nose": (140, 40)}  # far arm, behind the chest
    for name, p in xy.items():
        b[JOINT_INDEX[name], :2] = p
    b[JOINT_INDEX["left_ear"], 2] = 0  # only the right ear shows: the right side faces the camera
    side_image = np.ones((256, 256, 3), np.float32)
    side_image[render_part_labels(side) > 0] = 0.5
    person = side.people[0]
    fields = part_distance_fields(person, (256, 256))
    labels = part_label_map(fields, torch.from_numpy(person_mask(side_image, person, "skeleton", fields)),
                            side_view_depth_order(person, FlowWarpOptions().depth_order))
    assert {"left_upper_arm", "left_forearm"} <= hidden_parts(person, labels)
    assert not hidden_parts(person, labels) & {"right_upper_arm", "right_forearm"}
    r = flow_warp([side_image], [side], [front], FlowWarpOptions(segmentation="skeleton", background="white",
                                                                 retarget=False))[0]
    e = front.people[0].body[JOINT_INDEX["left_elbow"], :2]
    yy, xx = np.mgrid[:256, :256]
    far_forearm = (render_part_masks(front)[PART_NAMES.index("left_forearm")] > 0) & (np.hypot(xx - e[0], yy - e[1]) > 15)
    # A hole to generate, not a copy of the chest or the near arm; the rest is the chest, which the front
    # view shows wider than the side view did (the far arm's source pixels are chest: it lies behind it).
    assert (r.visibility.numpy()[far_forearm] == 0).mean() > 0.5


def test_grabcut_is_repeatable_and_leaves_the_global_opencv_rng_alone():
    from posetransfer.core.body.segmentation import person_mask
    image, poses = sample("fashion_standing")
    person = poses[0].person(0)
    cv2.setRNGSeed(1234)
    expected = np.zeros(8, np.float32)
    cv2.randu(expected, 0, 1)  # what the caller's RNG draws after seeding, with nothing in between
    cv2.setRNGSeed(1234)
    a = person_mask(image, person, "grabcut")
    drawn = np.zeros(8, np.float32)
    cv2.randu(drawn, 0, 1)
    assert np.array_equal(drawn, expected)  # the caller's RNG state is as it was before the call
    cv2.setRNGSeed(99)  # another caller state: the same mask
    assert np.array_equal(person_mask(image, person, "grabcut"), a)


def test_coat_the_mask_misses_does_not_stay_at_the_old_place():
    """A figure with a wide coat below the hips, far from every bone: the skeleton mask misses most of it.
    Moved 70 px to the right, no coat-coloured pixel stays at the old coat place outside the moved person (before
    the fix: 18.5 % of it), and that place is marked to generate, not real (a few pixels of the soft edge aside)."""
    size = 256
    image, pose, _ = _striped_figure(size)
    image = np.where((image == 1.0).all(-1, keepdims=True), np.float32(0.85), image)  # grey backdrop
    coat = np.zeros((size, size), np.uint8)
    cv2.fillPoly(coat, [np.array([[108, 120], [148, 120], [190, 250], [66, 250]], np.int32)], 1)
    pink = np.array([0.85, 0.55, 0.6], np.float32)
    image[coat > 0] = pink
    target = moved(pose, lambda xy: xy + np.array([70.0, 0.0]), size, size)
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton"))[0]
    out = hwc(r.image)
    pinkish = np.linalg.norm(out - pink, axis=-1) < 0.12
    old_place = (coat > 0) & (r.person.numpy() < 0.5)
    assert old_place.sum() > 3000
    assert (pinkish & old_place).sum() < 0.01 * old_place.sum()
    was_coat = (np.linalg.norm(image - pink, axis=-1) < 0.05) & old_place
    assert r.visibility.numpy()[was_coat].mean() < 0.01


def test_the_area_the_person_leaves_continues_a_striped_backdrop_by_default():
    """background='inpaint' with the default fill ('mirror'): the person moves 60 px right; where she stood,
    vertical stripes of the backdrop continue through the area (their contrast, the stripes' own values),
    where fill='pyramid' leaves a flat patch. That area is made up: generate mask 1 there."""
    image, pose, _ = _striped_figure()
    labels = render_part_labels(pose)
    stripes = np.where(((np.arange(256) // 3) % 2 == 0)[None, :, None], 0.15, 0.75).astype(np.float32)
    image = np.where((labels > 0)[..., None], image, np.broadcast_to(stripes, image.shape)).astype(np.float32)
    target = pose.copy()
    target.people[0].body[:, 0] += np.where(target.people[0].body[:, 2] > 0, 60, 0)
    options = FlowWarpOptions(retarget=False)
    assert options.fill == "mirror"
    result = flow_warp([image], [pose], [target], options)[0]
    smooth = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, fill="pyramid"))[0]
    left = np.zeros(labels.shape, bool)
    left[70:200, 110:140] = True  # the source torso's place, left of the moved person
    left &= result.person.numpy() < 0.01
    assert left.sum() > 1500
    out, flat = hwc(result.image)[left].mean(-1), hwc(smooth.image)[left].mean(-1)
    assert out.std() > 0.2 and flat.std() < 0.1
    assert (np.isclose(out, 0.15, atol=0.01) | np.isclose(out, 0.75, atol=0.01)).mean() > 0.75  # (seam: blends)
    assert (result.generate_mask.numpy()[left] > 0.5).all()


def _reference_feather(alpha: np.ndarray) -> np.ndarray:
    """The edge feather written plainly: the 3x3 binomial filter (1 2 1 / 2 4 2 / 1 2 1, over 16) with the
    image's edge repeated, at least the pixel's own alpha where it is 1, clamped to 0..1."""
    h, w = alpha.shape
    k = np.array([1, 2, 1]) / 4
    out = np.zeros_like(alpha)
    for y in range(h):
        for x in range(w):
            v = sum(k[i] * k[j] * alpha[min(max(y + i - 1, 0), h - 1), min(max(x + j - 1, 0), w - 1)]
                    for i in range(3) for j in range(3))
            out[y, x] = min(max(v, alpha[y, x] if alpha[y, x] >= 1 else 0.0), 1.0)
    return out


def test_edge_feather_is_the_binomial_filter_on_its_window_and_at_the_image_edges():
    from posetransfer.core.warp import flowwarp
    rng = np.random.default_rng(0)
    for case in range(40):
        h, w = rng.integers(2, 24, 2)
        alpha = np.zeros((h, w), np.float32)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)  # often on the image's edge
        patch = rng.random((y1 - y0, x1 - x0)).astype(np.float32)
        alpha[y0:y1, x0:x1] = np.round(patch) if case % 2 else patch
        if not alpha.any():
            continue
        want = _reference_feather(alpha)
        a = torch.from_numpy(alpha)
        box = flowwarp._support_box(a, torch.zeros(a.shape, dtype=torch.bool))
        for b in (box, (slice(None), slice(None)), None):
            got = flowwarp._feather(a, b).numpy()
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"case {case}, box {b}")
    # A known answer: a lone full pixel spreads its filter around itself and stays 1.
    alpha = torch.zeros(5, 5)
    alpha[2, 2] = 1
    got = flowwarp._feather(alpha)
    assert got[2, 2] == 1 and got[1, 2] == pytest.approx(0.125) and got[1, 1] == pytest.approx(0.0625)
    assert got[0].abs().sum() == 0


def test_missing_limbs_are_guessed_from_the_source_pose():
    """Known answers of part_transforms.missing_limb_transforms on the striped figure (its source pose)."""
    from posetransfer.core.body.part_transforms import GUESSED_CONFIDENCE, missing_limb_transforms
    _, pose, _ = _striped_figure()
    source = pose.people[0]
    s = source.body[:, :2]
    # 1. A missing wrist: the forearm keeps its angle to the upper arm. The target's upper arm is the source's
    #    turned 30 degrees about the shoulder (same lengths): the wrist is the source's turned the same way.
    target = _rotate_joint(_rotate_joint(pose, J_["right_wrist"], J_["right_shoulder"], 30),
                           J_["right_elbow"], J_["right_shoulder"], 30).people[0]
    want = target.body[J_["right_wrist"], :2].copy()
    target.body[J_["right_wrist"], 2] = 0
    completed, maps = missing_limb_transforms(source, target)
    np.testing.assert_allclose(completed.body[J_["right_wrist"], :2], want, atol=1e-6)
    assert completed.body[J_["right_wrist"], 2] == GUESSED_CONFIDENCE and set(maps) == {"right_forearm"}
    # The map sends the guessed forearm onto the source's: its two joints land on the source's joints.
    m = maps["right_forearm"]
    for j in ("right_elbow", "right_wrist"):
        np.testing.assert_allclose(m[:, :2] @ completed.body[J_[j], :2] + m[:, 2], s[J_[j]], atol=1e-6)
    assert target.body[J_["right_wrist"], 2] == 0  # the caller's pose is left as it was
    # 2. A missing knee between a hip and an ankle the target has: where the two bones meet (law of cosines),
    #    bent the way the source's knee bends. Source: the left knee bent 8 px out, to (152, 190). Target:
    #    the left ankle straight below the hip, 96 px down; the bones are as long as the target's right leg
    #    (50.04 and 48.04 px), or, without it, as the source's left leg (the body scale is the same).
    bent = pose.copy()
    bent.people[0].body[J_["left_knee"], 0] += 8
    target = pose.copy()
    target.people[0].body[J_["left_ankle"], :2] = (142, 236)
    target.people[0].body[J_["left_knee"], 2] = 0

    def knee_at(l1, l2, d=96.0):
        along = (d * d + l1 * l1 - l2 * l2) / (2 * d)
        return np.array([142 + math.sqrt(l1 * l1 - along * along), 140 + along])  # outwards: +x

    completed, maps = missing_limb_transforms(bent.people[0], target.people[0])
    np.testing.assert_allclose(completed.body[J_["left_knee"], :2], knee_at(math.hypot(2, 50), math.hypot(2, 48)),
                               atol=1e-6)
    assert set(maps) == {"left_thigh", "left_shin"}
    target.people[0].body[J_["right_knee"], 2] = 0  # no whole right leg to take the lengths from
    completed, maps = missing_limb_transforms(bent.people[0], target.people[0])
    np.testing.assert_allclose(completed.body[J_["left_knee"], :2], knee_at(math.hypot(10, 50), math.hypot(6, 48)),
                               atol=1e-6)
    # 3. Whole missing arm (elbow and wrist): the upper arm at the source's angle to the torso's axis; the
    #    target is the source turned 90 degrees about the neck, so the arm is the source's turned too.
    neck = s[J_["neck"]]
    turned = pose.map_points(lambda xy: neck + (xy - neck) @ np.array([[0.0, 1.0], [-1.0, 0.0]]))
    target = turned.people[0]
    want = target.body[[J_["left_elbow"], J_["left_wrist"]], :2].copy()
    target.body[[J_["left_elbow"], J_["left_wrist"]], 2] = 0
    completed, maps = missing_limb_transforms(source, target)
    np.testing.assert_allclose(completed.body[[J_["left_elbow"], J_["left_wrist"]], :2], want, atol=1e-6)
    assert set(maps) == {"left_upper_arm", "left_forearm"}
    # 4. Nothing to guess from: the source lacks the limb too, or the target lacks its shoulder.
    source2 = pose.copy().people[0]
    source2.body[J_["left_wrist"], 2] = 0
    target = pose.copy().people[0]
    target.body[J_["left_wrist"], 2] = 0
    assert missing_limb_transforms(source2, target) == (target, {})
    target.body[[J_["left_shoulder"], J_["left_elbow"]], 2] = 0
    assert missing_limb_transforms(source, target) == (target, {})


J_ = JOINT_INDEX


def _small_sample(height=128):
    """fashion_standing reduced to a pedestrian-crop size (below SUPERSAMPLE_BELOW: worked on at 2x)."""
    from posetransfer.core.pose.geometry import resize
    image, pose = sample("fashion_standing")
    return resize(image, pose[0], height, height, interpolation="area")


@pytest.mark.parametrize("segmentation", ["grabcut", "skeleton"])
def test_small_photo_same_pose_gives_back_the_photo_exactly(segmentation):
    from posetransfer.core.warp.flowwarp import SUPERSAMPLE_BELOW
    image, pose = _small_sample()
    assert max(image.shape[:2]) < SUPERSAMPLE_BELOW
    r = flow_warp([image], [pose], [pose], FlowWarpOptions(retarget=False, segmentation=segmentation))[0]
    assert r.image.shape == (3, 128, 128) and r.person.shape == r.visibility.shape == (128, 128)
    assert r.visibility.min() == 1 and torch.allclose(r.flow, torch.zeros_like(r.flow), atol=1e-4)
    on_person = r.person >= 1
    assert on_person.sum() > 2000
    # Exactly the photo on the person (not a blurred copy), as at full size to 1e-3.
    assert torch.equal(r.image[:, on_person], torch.from_numpy(image).permute(2, 0, 1)[:, on_person])
    assert r.target_pose.width == 128 and np.allclose(r.target_pose.people[0].xy, pose.people[0].xy)


def test_small_photo_keeps_a_plain_backdrop_plain():
    """The pixels that stay put are given back as the photo's only where the output shows the photo: a black
    backdrop stays black (it did not, in the first version of the working scale)."""
    image, pose = _small_sample()
    for target in (pose, moved(pose, lambda xy: xy + (9, 0))):
        r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                                  background="black"))[0]
        off = r.person.numpy() == 0
        assert off.sum() > 5000 and hwc(r.image)[off].max() == 0


def test_small_photo_translated_pose_translates_the_person_in_photo_pixels():
    """At 2x the person moves 2 * 7 working pixels; brought back: 7 px in the photo's pixels, the flow -7."""
    image, pose = _small_sample()
    m = np.array([[1.0, 0, 7], [0, 1, -4]])
    target = moved(pose, lambda xy: xy @ m[:, :2].T + m[:, 2])
    opts = FlowWarpOptions(retarget=False, segmentation="skeleton", background="keep")
    r = flow_warp([image], [pose], [target], opts)[0]
    # What the 2x work gives: the photo enlarged (bilinear), moved by 14 working px, each 2x2 block averaged.
    big = cv2.resize(image, (256, 256), interpolation=cv2.INTER_LINEAR)
    m2 = np.hstack([m[:, :2], 2 * m[:, 2:]])
    moved_big = cv2.warpAffine(big, m2, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expect = hwc(F_avg(torch.from_numpy(moved_big).permute(2, 0, 1)))
    inner = cv2.erode((r.person.numpy() >= 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert inner.sum() > 800
    assert np.abs(hwc(r.image) - expect)[inner].max() < 2e-3
    np.testing.assert_allclose(r.flow[0].numpy()[inner], -7, atol=1e-3)
    np.testing.assert_allclose(r.flow[1].numpy()[inner], 4, atol=1e-3)


def test_downsampled_result_averages_blocks_and_keeps_only_whole_real_blocks():
    from posetransfer.core.warp.flowwarp import FlowWarpResult, _downsampled
    from posetransfer.core.flow import base_coords
    h, w = 4, 6  # the working canvas, 2x a 2x3 photo
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    coords = base_coords(h, w)[0] + torch.tensor([4.0, -2.0])[:, None, None]  # 4 and -2 working px
    visibility = torch.ones(h, w)
    visibility[0, 0] = 0  # one made-up pixel in the top-left block
    r = FlowWarpResult(image, coords - base_coords(h, w)[0], visibility, torch.ones(h, w), None)
    photo = torch.zeros(3, 2, 3)
    out = _downsampled(r, 2, Pose([], 3, 2), photo, image)
    assert torch.equal(out.image, F_avg(image))
    np.testing.assert_allclose(out.flow[0].numpy(), 2.0, atol=1e-6)  # photo pixels
    np.testing.assert_allclose(out.flow[1].numpy(), -1.0, atol=1e-6)
    assert out.visibility.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out.target_pose.width == 3
    # A block that stayed put and is real is the photo's own pixel.
    r = FlowWarpResult(image, torch.zeros(2, h, w), visibility, torch.ones(h, w), None)
    out = _downsampled(r, 2, Pose([], 3, 2), photo, image)
    assert torch.equal(out.image[:, 1], photo[:, 1]) and torch.equal(out.image[:, 0, 0], F_avg(image)[:, 0, 0])
    # ... only where it shows the enlarged photo unchanged (not a black backdrop, not a fill).
    shown = image.clone()
    shown[:, 2:, 4:] = 0
    r = FlowWarpResult(shown, torch.zeros(2, h, w), torch.ones(h, w), torch.ones(h, w), None)
    out = _downsampled(r, 2, Pose([], 3, 2), photo, image)
    assert torch.equal(out.image[:, 1, 2], torch.zeros(3)) and torch.equal(out.image[:, 1, :2], photo[:, 1, :2])


def F_avg(x):
    return torch.nn.functional.avg_pool2d(x[None], 2)[0]


def test_small_photo_errors_name_the_canvas_the_caller_gave():
    """Worked on at 2x, a small photo's errors still name its own canvas (128x128, not 256x256)."""
    image, pose = _small_sample()
    away = moved(pose, lambda xy: xy + (300, 0))  # beyond the edge, within the range the checks accept
    with pytest.raises(ValueError, match="placed on the 128x128 canvas"):
        flow_warp([image], [pose], [away], FlowWarpOptions(retarget=False, segmentation="skeleton"))


def test_small_photo_onto_a_canvas_too_large_to_double_is_a_clear_error():
    image, pose = _small_sample()
    wide = moved(pose, lambda xy: xy, 9000, 128)  # accepted as it is, 18000 px wide once doubled
    with pytest.raises(ValueError, match=r"worked on at 2x.*canvas 18000x256 is larger than"):
        flow_warp([image], [pose], [wide], FlowWarpOptions(retarget=False, segmentation="skeleton"))
