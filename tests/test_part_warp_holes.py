"""Known-answer tests of FlowWarp's holes and edges (core.warp.part_warp): which pixels become holes, what a
hole shows, and how straight a moved part's edge stays. Each failed on the code before the change it tests
(ec6877b)."""

import math

import cv2
import numpy as np
import pytest
import torch

from posetransfer.core.body.part_fields import normalised_distance, part_geometry
from posetransfer.core.body.parts import PART_BY_NAME, PART_NAMES
from posetransfer.core.flow import base_coords
from posetransfer.core.pose.keypoints import JOINT_INDEX
from posetransfer.core.pose.render import render_part_labels, render_part_masks
from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp

from test_flowwarp import _part_flow_of, _rotate_joint, _striped_figure, hwc, moved

J = JOINT_INDEX
LEGS = ("right_thigh", "right_shin", "left_thigh", "left_shin")


def _only(pose, name):
    """Pixels of part ``name``'s region that no other part's region covers."""
    reg = render_part_masks(pose) > 0
    i = PART_NAMES.index(name)
    return reg[i] & ~np.delete(reg, i, axis=0).any(0)


def test_foot_of_a_foreshortened_shin_keeps_its_size_and_is_real():
    """A shin seen end-on in the target (a third of its length): the foot past the ankle moves with the body
    scale, not with the bone's 3x compression, so it lands on the source's foot. Before: 64 % of it were holes
    (the foot mapped 3x too far, off the source's foot and out of the image)."""
    image, pose, colours = _striped_figure()
    target = pose.copy()
    b = target.people[0].body
    b[J["right_ankle"], :2] = b[J["right_knee"], :2] + (b[J["right_ankle"], :2] - b[J["right_knee"], :2]) / 3
    pf = _part_flow_of(image, pose, target)
    ankle = b[J["right_ankle"], :2]
    u = (ankle - b[J["right_knee"], :2]) / np.linalg.norm(ankle - b[J["right_knee"], :2])
    yy, xx = np.mgrid[:256, :256]
    foot = ((xx - ankle[0]) * u[0] + (yy - ankle[1]) * u[1] > 2) & (np.hypot(xx - ankle[0], yy - ankle[1]) < 16)
    assert foot.sum() > 250
    assert pf.hole.numpy()[foot].mean() < 0.02
    assert (pf.owner.numpy()[foot] == PART_BY_NAME["right_shin"].label).mean() > 0.9
    # ... and it shows the source's foot: the shin's colour (or its stripe shade), not the floor.
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                              background="white"))[0]
    col = colours[PART_BY_NAME["right_shin"].label]
    out = hwc(r.image)[foot & (r.person.numpy() >= 1)]
    t = np.clip(out @ col / (col @ col), 0.8, 1.0)
    assert (np.abs(out - t[:, None] * col).max(-1) < 0.05).mean() > 0.9


def _legs_side_by_side():
    """The striped figure with its legs close together (their regions overlap by about half), each leg pixel
    coloured by the nearer bone, as a photo of two legs side by side shows them."""
    image, pose, colours = _striped_figure()
    b = pose.people[0].body
    for name, x in (("right_hip", 120), ("right_knee", 121), ("right_ankle", 121), ("left_hip", 136),
                    ("left_knee", 135), ("left_ankle", 135)):
        b[J[name], 0] = x
    geom = part_geometry(pose.people[0])
    d = np.stack([normalised_distance(geom[n], base_coords(256, 256)[0]).numpy() for n in LEGS])
    on_leg = np.isin(render_part_labels(pose), [PART_BY_NAME[n].label for n in LEGS]) & (d.min(0) < 1)
    image = image.copy()
    for i, name in enumerate(LEGS):
        image[on_leg & (d.argmin(0) == i)] = colours[PART_BY_NAME[name].label]
    return image, pose, colours


def test_legs_side_by_side_spread_apart_leave_no_holes():
    """Legs side by side in the source, spread 25 degrees apart in the target. Where the two thighs' regions
    overlap, the label map gives the pixels to the front-most (left) leg; the right thigh's proposals there
    made holes (44 % of the right thigh before). Now the nearer bone decides: no holes, and the right thigh
    shows its own colour."""
    image, pose, colours = _legs_side_by_side()
    target = pose.copy()
    for hip, deg in (("right_hip", 25), ("left_hip", -25)):
        side = hip.split("_")[0]
        for j in (f"{side}_knee", f"{side}_ankle"):
            target = _rotate_joint(target, J[j], J[hip], deg)
    pf = _part_flow_of(image, pose, target)
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                              background="white"))[0]
    out = hwc(r.image)
    yy, xx = np.mgrid[:256, :256]
    for name in ("right_thigh", "left_thigh"):
        assert pf.hole.numpy()[_only(target, name)].mean() < 0.02, name
    for name in ("right_thigh",):  # the back leg, which lost the overlap before
        region = _only(target, name)
        hip, knee = (target.people[0].body[J[name.replace("thigh", j)], :2] for j in ("hip", "knee"))
        # Mid-thigh: at the hip and knee the maps blend and neighbours' labels are taken by design, and the
        # narrow gap between the thighs at the crotch is closed with their mean displacement.
        mid = (np.hypot(xx - hip[0], yy - hip[1]) > 25) & (np.hypot(xx - knee[0], yy - knee[1]) > 15)
        kept = region & mid & (r.person.numpy() >= 1)  # (near the knee the shin's map may keep it)
        assert kept.sum() > 100, name
        col = colours[PART_BY_NAME[name].label]
        t = np.clip(out[kept] @ col / (col @ col), 0.8, 1.0)
        assert (np.abs(out[kept] - t[:, None] * col).max(-1) < 0.05).mean() > 0.85, name


def test_torso_hidden_by_an_arm_is_a_hole_filled_with_the_torsos_texture():
    """The right arm hangs over the chest in the source and is raised sideways in the target: the chest behind
    it is hidden in the source, a hole to generate (still), but filled with the chest's own texture (its
    stripes continued from beside the arm), not a flat average colour. Before: the fill was flat (stripe
    correlation about 0)."""
    image, pose, colours = _striped_figure()
    b = pose.people[0].body
    b[J["right_elbow"], :2] = (114, 98)  # the forearm hangs straight down over the chest
    b[J["right_wrist"], :2] = (114, 134)
    labels = render_part_labels(pose)
    base, _, _ = _striped_figure()
    image = base.copy()
    image[:] = colours[labels]
    stripe = ((np.arange(256) // 4) % 2 == 0)[:, None] & (labels > 0)
    image[stripe] *= 0.8
    target = pose.copy()
    t = target.people[0].body
    t[J["right_elbow"], :2] = (72, 84)
    t[J["right_wrist"], :2] = (40, 100)
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                              background="white"))[0]
    torso = _only(target, "torso")
    yy, xx = np.mgrid[:256, :256]
    shoulder = b[J["right_shoulder"], :2]
    hidden = torso & np.isin(labels, [PART_BY_NAME[n].label for n in ("right_upper_arm", "right_forearm")]) & (
        np.hypot(xx - shoulder[0], yy - shoulder[1]) > 20)  # the shoulder itself moves with the arm, seen
    # The stripes are rows: continued from beside the (vertical) forearm they keep their phase exactly.
    behind_forearm = hidden & (labels == PART_BY_NAME["right_forearm"].label) & (yy > 104)
    gen = r.generate_mask.numpy() > 0.5
    assert hidden.sum() > 300
    assert gen[hidden].mean() > 0.95  # content to generate
    col = colours[PART_BY_NAME["torso"].label]
    want = np.where(((np.arange(256) // 4) % 2 == 0)[:, None], 0.8, 1.0) * np.ones((1, 256))
    got = hwc(r.image) @ col / (col @ col)  # the fill's shade of the torso colour
    sel = hidden & gen
    corr = np.corrcoef(got[behind_forearm & gen], want[behind_forearm & gen])[0, 1]
    assert corr > 0.6, corr
    # Its colour is the torso's (the arm's colour is not copied back onto the chest).
    assert np.abs(hwc(r.image)[sel].mean(0) - 0.9 * col).max() < 0.06


def test_hole_texture_points_at_the_parts_own_pixels():
    """hole_texture on a hand-made label map: a proposal left of a part's region is mirrored into it (at most
    MIRROR_DEPTH radii deep), one far outside the image takes the nearest own pixel; both are marked."""
    from posetransfer.core.warp.part_warp import hole_texture, label_boxes
    labels = torch.zeros(40, 60, dtype=torch.long)
    labels[5:35, 20:50] = 2
    coords = torch.zeros(2, 1, 3)
    coords[:, 0, 0] = torch.tensor([15.0, 10.0])   # 5 px left of the region's edge (x = 20 after erosion: 22)
    coords[:, 0, 1] = torch.tensor([-50.0, 20.0])  # far outside the image, left
    coords[:, 0, 2] = torch.tensor([30.0, 20.0])   # no hole here (owner 0): untouched
    owner = torch.tensor([[2, 2, 0]])
    textured = hole_texture(coords, owner, labels, label_boxes(labels), {2: 100.0})
    assert textured.tolist() == [[True, True, False]]
    # The region's inside (eroded by 2 px, away from its edge) starts at x = 22: 15 -> 22 + 7 = 29.
    assert coords[:, 0, 0].tolist() == pytest.approx([29.0, 10.0])
    assert coords[:, 0, 1].tolist() == pytest.approx([22.0 + 22.0, 20.0])  # clipped to x = 0, then mirrored
    assert coords[:, 0, 2].tolist() == [30.0, 20.0]
    coords[:, 0, 0] = torch.tensor([15.0, 10.0])
    hole_texture(coords, owner, labels, label_boxes(labels), {2: 3.0})  # mirrored at most 3 px deep
    assert coords[:, 0, 0].tolist() == pytest.approx([25.0, 10.0])


def _edge_offsets(alpha, p0, p1, normal, count=80, half=5.0):
    """Where ``alpha`` crosses 0.5 going along ``normal`` (outwards), in px from the line ``p0``-``p1``, at
    ``count`` points along its middle 70 % (NaN where it does not cross within ``half`` px)."""
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    s = np.linspace(-half, half, 401)
    out = []
    for t in np.linspace(0.15, 0.85, count) * np.linalg.norm(p1 - p0):
        pts = (p0 + d * t)[None] + s[:, None] * normal[None]
        v = cv2.remap(alpha.astype(np.float32), pts[None, :, 0].astype(np.float32), pts[None, :, 1].astype(np.float32),
                      cv2.INTER_LINEAR)[0]
        i = np.nonzero((v[:-1] >= 0.5) & (v[1:] < 0.5))[0]
        out.append(s[i[-1]] if len(i) else np.nan)
    return np.array(out)


@pytest.mark.parametrize("scale,degrees", [(1.6, 20), (1.6, 37)])
def test_a_magnified_rotated_straight_edge_stays_straight(scale, degrees):
    """The whole figure scaled 1.6x and rotated (every part map the same similarity): the right thigh's outer
    edge, a straight line in the source, must stay a straight line where the person alpha crosses 0.5. The
    nearest-label keep test cut the mask's soft edge off at 0.5, so the source's pixel grid showed as
    stair-steps (rms 0.28-0.29 px off the best line, up to 1 px, before; about 0.06 now) and the edge sat a
    third of a pixel inside where it belongs."""
    from posetransfer.core.body.parts import body_scale, part_radius
    image, pose, _ = _striped_figure()
    person = pose.people[0]
    a = math.radians(degrees)
    m = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    size = int(256 * scale)

    def f(xy):
        return (xy - 128.0) @ m.T + 128.0 * scale

    target = moved(pose, f, size, size)
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                              background="black"))[0]
    hip, knee = person.body[J["right_hip"], :2], person.body[J["right_knee"], :2]
    u = (knee - hip) / np.linalg.norm(knee - hip)
    n = np.array([u[1], -u[0]]) * (-1 if u[1] > 0 else 1)  # outwards: towards the image's left
    rad = part_radius("right_thigh", body_scale(person))
    off = _edge_offsets(r.person.numpy(), f((hip + n * rad)[None])[0], f((knee + n * rad)[None])[0], m @ n / scale)
    ok = np.isfinite(off)
    assert ok.sum() > 35  # (the hand hanging beside the thigh hides part of that edge)
    x, off = np.arange(len(off))[ok], off[ok]
    resid = off - np.polyval(np.polyfit(x, off, 1), x)
    assert resid.std() < 0.12 and np.abs(resid).max() < 0.6, (resid.std(), np.abs(resid).max())
    assert abs(off.mean()) < 0.15  # and it lies where the scaled edge is


def test_limb_the_source_lacks_takes_its_placeholder_from_the_mirror_limb():
    """The source pose lacks the right knee (a detector miss), so the source cannot supply the right thigh
    or shin: in the target they are holes to generate (still), but their placeholder is the left leg's
    texture (its colour and stripes), as trousers or sleeves are on both sides, not a smooth fill of the
    colours around them. Before (4f024cc): a smooth fill, none of it within reach of the left leg's colour
    (on real video: a light grey leg beside the dark trousers)."""
    image, pose, colours = _striped_figure()
    source = pose.copy()
    source.people[0].body[J["right_knee"]] = 0
    target = pose  # the right leg swung out, off the source's legs (else the left leg's map shows it)
    for j in ("right_knee", "right_ankle"):
        target = _rotate_joint(target, J[j], J["right_hip"], 35)
    r = flow_warp([image], [source], [target], FlowWarpOptions(retarget=False, segmentation="skeleton",
                                                                background="white"))[0]
    yy = np.mgrid[:256, :256][0]
    leg = (_only(target, "right_thigh") | _only(target, "right_shin")) & (yy > 170)  # clear of the hip
    gen = r.generate_mask.numpy() > 0.5
    assert leg.sum() > 500
    assert gen[leg].mean() > 0.85  # content to generate, whatever the placeholder (the rest: the hip's blend)
    out = hwc(r.image)[leg & gen]
    near = np.zeros(len(out), dtype=bool)
    for name in ("left_thigh", "left_shin"):
        c = colours[PART_BY_NAME[name].label]
        t = np.clip(out @ c / (c @ c), 0.8, 1.0)
        near |= np.abs(out - t[:, None] * c).max(-1) < 0.05
    assert near.mean() > 0.8, near.mean()


def test_a_limb_bone_without_texture_of_its_own_takes_the_other_bones():
    """An upper arm whose label covers little of its region in the source (here: its pixels taken by the
    torso, as in a side view) has no texture worth continuing. Its holes take their placeholder from the
    forearm of the same arm (the same sleeve), not a smooth fill: before, none of them was textured."""
    from posetransfer.core.warp.part_warp import part_flow
    from posetransfer.core.body.segmentation import part_distance_fields, part_label_map, person_mask
    image, pose, colours = _striped_figure()
    person = pose.people[0]
    fields = part_distance_fields(person, image.shape[:2])
    mask = torch.from_numpy(person_mask(image, person, "skeleton", fields))
    labels = part_label_map(fields, mask)
    upper, fore = PART_BY_NAME["right_upper_arm"].label, PART_BY_NAME["right_forearm"].label
    labels[labels == upper] = PART_BY_NAME["torso"].label
    target = _rotate_joint(_rotate_joint(pose, J["right_wrist"], J["right_shoulder"], 40),
                           J["right_elbow"], J["right_shoulder"], 40)  # the arm swung out, off the torso
    pf = part_flow(person, labels, mask, target.people[0], (256, 256))
    holes = pf.hole & (pf.hole_owner == upper)
    assert holes.sum() > 100
    assert pf.textured[holes].float().mean() > 0.8
    # ... pointing at the forearm's pixels in the source.
    xy = pf.coords[:, holes].round().long()
    assert (labels[xy[1].clamp(0, 255), xy[0].clamp(0, 255)] == fore).float().mean() > 0.8
