"""Known-answer tests of the person mask and part labels FlowWarp's training-free method moves
(core.body.segmentation): backdrop is never the person, loose clothes move with the part they hang from."""

import cv2
import numpy as np
import torch

from posetransfer.core.body import segmentation as seg
from posetransfer.core.body.parts import PART_BY_NAME
from posetransfer.core.pose.keypoints import JOINT_INDEX
from posetransfer.core.pose.render import render_part_labels
from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp, prepare_source
from test_flowwarp import _rotate_joint, _striped_figure, hwc

PINK = np.array([0.85, 0.55, 0.6], np.float32)


def _red_backdrop_figure(size=256):
    """The striped figure in thin black boots on a saturated red backdrop, whose floor (from y = 200) is
    darker and holds the person's shadow, darker still, between and behind the boots: the backdrop shows
    between the legs, within the shins' nominal regions (the boots are thinner than them). Returns the image,
    the pose and the backdrop pixels (floor and shadow included)."""
    image, pose, _ = _striped_figure(size)
    labels = render_part_labels(pose)
    backdrop = (labels == 0) | np.isin(labels, [PART_BY_NAME[n].label for n in ("right_shin", "left_shin")])
    image[backdrop] = (0.62, 0.03, 0.09)
    image[backdrop & (np.arange(size)[:, None] >= 200)] = (0.5, 0.02, 0.07)
    shadow = np.zeros((size, size), np.uint8)
    cv2.ellipse(shadow, (128, 236), (40, 16), 0, 0, 360, 1, -1)
    image[backdrop & (shadow > 0)] = (0.24, 0.0, 0.02)  # as dark as the boots to GrabCut's colour model
    boots = np.zeros((size, size), np.uint8)
    body = pose.people[0].body
    for knee, ankle in (("right_knee", "right_ankle"), ("left_knee", "left_ankle")):
        k, a = body[JOINT_INDEX[knee], :2], body[JOINT_INDEX[ankle], :2]
        # Wide enough to hold the sure seeds (SURE radii around the bone), which are person whatever the colours.
        cv2.line(boots, tuple(int(v) for v in k - (0, 6)), tuple(int(v) for v in a + (0, 18)), 1, 15)
    image[boots > 0] = (0.06, 0.06, 0.07)
    return image, pose, backdrop & (boots == 0)


def test_backdrop_between_the_legs_and_the_shadow_are_never_the_person():
    """No backdrop pixel (a pixel's edge aside) is labelled person, and none of the floor between and behind
    the boots is moved as real person content when a leg is raised. Before the fix 1058 backdrop pixels were
    labelled (the shadow, the backdrop beside the boots), and 867 output pixels were the floor, marked real
    (723 of them at the old feet)."""
    image, pose, backdrop = _red_backdrop_figure()
    clear = cv2.erode(backdrop.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    prepared = prepare_source(image, pose, FlowWarpOptions(retarget=False))
    assert (prepared.labels.numpy() > 0)[clear].sum() == 0
    hip, knee, ankle = (JOINT_INDEX[n] for n in ("left_hip", "left_knee", "left_ankle"))
    target = _rotate_joint(_rotate_joint(pose, knee, hip, -60), ankle, hip, -60)
    r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False))[0]
    xy = np.stack(np.meshgrid(np.arange(256), np.arange(256)), 0)
    src = np.clip(np.round(r.flow.numpy() + xy).astype(int), 0, 255)
    real_person = (r.person.numpy() > 0.99) & (r.visibility.numpy() > 0.5)  # not its soft edge
    assert real_person.sum() > 10000
    floor = clear & (np.arange(256)[:, None] >= 200)
    from_floor = real_person & floor[src[1], src[0]]
    assert from_floor.sum() == 0
    assert not from_floor[190:].any()  # nothing of the floor is left standing at the old feet


def _coat_figure(size=256):
    """The striped figure in a wide pink coat below the hips, on grey: its tails reach far from every bone."""
    image, pose, _ = _striped_figure(size)
    image = np.where((image == 1.0).all(-1, keepdims=True), np.float32(0.85), image)
    coat = np.zeros((size, size), np.uint8)
    cv2.fillPoly(coat, [np.array([[108, 120], [148, 120], [190, 250], [66, 250]], np.int32)], 1)
    image[coat > 0] = PINK
    return image, pose, coat > 0


def test_coat_tails_follow_raised_legs():
    """Legs raised to the sides (a split at hip height): no coat is left standing at the old feet (coat rows
    from y = 200), whichever segmentation. Before the fix the tails were the torso's and stayed there (17 % of
    that place pink with the skeleton mask)."""
    image, pose, coat = _coat_figure()
    target = pose
    for side, angle in (("right", 90), ("left", -90)):
        hip, knee, ankle = (JOINT_INDEX[f"{side}_{n}"] for n in ("hip", "knee", "ankle"))
        target = _rotate_joint(_rotate_joint(target, knee, hip, angle), ankle, hip, angle)
    old_feet = coat & (np.arange(256)[:, None] >= 200)
    for segmentation in ("skeleton", "grabcut"):
        r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation=segmentation))[0]
        pinkish = np.linalg.norm(hwc(r.image) - PINK, axis=-1) < 0.12
        assert (pinkish & old_feet).sum() < 0.01 * old_feet.sum(), segmentation
        assert (r.person.numpy()[old_feet] > 0.5).mean() < 0.01


def test_far_person_pixels_take_the_nearest_labelled_pixels_part():
    """Loose pixels go to the torso or the nearer leg part; beyond every field (FAR) to the nearest labelled
    person pixel's part; background (mask <= 0.5) gets no label."""
    far = seg.FAR
    torso = torch.tensor([[0.5, 2.5, 3.0, far, far, far, far, 2.5]])
    shin = torch.tensor([[3.0, 3.0, 2.6, 2.9, far, far, far, far]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    labels = seg.part_label_map({"torso": torso, "right_shin": shin}, mask).tolist()[0]
    t, s = PART_BY_NAME["torso"].label, PART_BY_NAME["right_shin"].label
    assert labels == [t, t, s, s, s, s, 0, t]


def test_dark_hair_beside_black_photo_margins_is_the_person():
    """samples/model_red_background: short black hair on a dark red backdrop, in a photo with black pillar-box
    margins. GrabCut's backdrop model now learns from the backdrop around the person only; before, the black
    margins made black read as backdrop and none of the hair was the person (it stayed behind as background
    when the head moved). The red backdrop around the head stays background."""
    from pathlib import Path

    from posetransfer.core.images import load_image
    from posetransfer.core.pose.formats import read_openpose_json

    samples = Path(__file__).resolve().parents[1] / "samples"
    image = load_image(str(samples / "model_red_background.png"))
    person = read_openpose_json(str(samples / "model_red_background.pose.json"))[0].person(0)
    mask = seg.person_mask(image, person)
    head = np.zeros(image.shape[:2], bool)
    head[5:45, 170:235] = True  # above the eyes (y 45) and around the head
    hair = head & (image.max(-1) < 0.12)
    red = head & (image[..., 0] > 0.25) & (image[..., 1] < 0.05)
    assert hair.sum() > 300 and red.sum() > 1000
    assert (mask[hair] > 0.5).mean() > 0.85  # 0.0 before
    assert (mask[red] > 0.5).mean() < 0.01


def test_sharply_bent_knees_and_elbows_never_show_the_backdrop_as_the_person():
    """A knee and an elbow bent hard (the striped figure on a red backdrop): no output pixel counted as real
    person content (alpha > 0.99, visible) is the source's backdrop. The thigh's and shin's maps are blended
    near the knee (core.warp.part_warp); where the blend fell beside the source limb, the backdrop was drawn
    as the knee: 1187 such pixels before the fix with (-90, 0), 221 with (0, 90)."""
    image, pose, _ = _striped_figure()
    labels = render_part_labels(pose)
    image[labels == 0] = (0.62, 0.03, 0.09)
    backdrop = cv2.erode((labels == 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    hip, knee, ankle, elbow, wrist = (JOINT_INDEX[n] for n in ("left_hip", "left_knee", "left_ankle",
                                                               "right_elbow", "right_wrist"))
    xy = np.stack(np.meshgrid(np.arange(256), np.arange(256)), 0)
    for thigh, bend in ((-90, 0), (0, 90), (-60, -60)):
        target = _rotate_joint(_rotate_joint(pose, knee, hip, thigh), ankle, knee, bend)
        target = _rotate_joint(target, wrist, elbow, bend)
        r = flow_warp([image], [pose], [target], FlowWarpOptions(retarget=False, segmentation="skeleton"))[0]
        src = np.clip(np.round(r.flow.numpy() + xy).astype(int), 0, 255)
        real_person = (r.person.numpy() > 0.99) & (r.visibility.numpy() > 0.5)
        assert real_person.sum() > 12000
        assert (real_person & backdrop[src[1], src[0]]).sum() == 0, (thigh, bend)


def test_the_callers_meanwhile_work_runs_once_while_grabcut_runs_and_changes_no_mask(monkeypatch):
    """person_mask's ``meanwhile`` (prepare_source's mask-free work) runs exactly once, while GrabCut runs in
    its thread for "grabcut" (the cut waits here until it has started: they overlap on a second core), also
    for "skeleton" (no GrabCut), and the mask is the one made without it."""
    import threading

    image, pose, _ = _striped_figure()
    person = pose.person(0)
    grabcut, started, overlapped = cv2.grabCut, threading.Event(), []

    def waiting_grabcut(*args):
        overlapped.append(started.wait(10))  # False (after 10 s) when meanwhile runs only after the cut
        return grabcut(*args)

    for method in ("grabcut", "skeleton"):
        calls = []

        def meanwhile():
            calls.append(method)
            started.set()

        plain = seg.person_mask(image, person, method)
        started.clear()
        overlapped.clear()
        monkeypatch.setattr(cv2, "grabCut", waiting_grabcut)
        mask = seg.person_mask(image, person, method, meanwhile=meanwhile)
        monkeypatch.setattr(cv2, "grabCut", grabcut)
        assert calls == [method]
        assert overlapped == ([True] if method == "grabcut" else [])
        assert np.array_equal(mask, plain), method


def _night_figure(size=256):
    """The striped figure's pose, dressed all in near-black, on a dark night backdrop with faint noise."""
    image, pose, _ = _striped_figure(size)
    labels = render_part_labels(pose)
    rng = np.random.RandomState(1)
    night = np.float32([0.06, 0.06, 0.1]) + rng.uniform(-0.02, 0.02, (size, size, 3)).astype(np.float32)
    dark = np.where(((np.arange(size) // 4) % 2 == 0)[:, None, None], 0.1, 0.14).astype(np.float32)
    return np.where((labels > 0)[..., None], dark, night), pose, labels


def test_lit_signs_touching_a_dark_person_are_not_the_person():
    """A person in black on a night street with neon signs: one sign stands right against the arm and the
    torso, the same neon shows elsewhere in the street. The neon stands out from the dark backdrop (the
    colour growth took such signs) and GrabCut's person model learns it from the ring around the bones
    (samples/video/street_f11: signs beside her became 'person' and were moved with her). The person never
    wears it at the bones: it is backdrop. The person herself stays whole."""
    image, pose, labels = _night_figure()
    neon = np.zeros(labels.shape, bool)
    neon[50:200, 70:84] = True  # against the right arm, from the shoulder down
    neon[50:200, 178:192] = True  # against the left arm
    neon[30:230, 8:20] = True  # the same neon farther along the street
    neon &= labels == 0
    image[neon] = (1.0, 0.35, 0.75)
    mask = seg.person_mask(image, pose.people[0])
    beside = neon.copy()
    beside[:, :40] = False
    assert beside.sum() > 2500
    assert (mask[beside] > 0.5).mean() < 0.05
    assert (mask[labels > 0] > 0.5).mean() > 0.97


def test_hair_of_a_colour_the_backdrop_shows_only_elsewhere_stays_the_person():
    """Brown hair around the head, beyond the head's nominal region, and a brown object across the photo
    (samples/astronaut: her hair and the shuttle's tank). Only the backdrop right around a pixel says
    whether its colour is the backdrop's: the hair stays the person."""
    image, pose, labels = _night_figure()
    image[labels == 0] = (0.75, 0.75, 0.78)  # a light grey wall
    yy, xx = np.mgrid[:256, :256]
    hair = ((xx - 128) ** 2 / 30.0 ** 2 + (yy - 30) ** 2 / 26.0 ** 2 < 1) & (labels == 0)
    image[hair] = (0.45, 0.3, 0.15)
    tank = (xx >= 220) & (yy >= 150) & (labels == 0)
    image[tank] = (0.45, 0.3, 0.15)
    mask = seg.person_mask(image, pose.people[0])
    assert hair.sum() > 800
    assert (mask[hair] > 0.5).mean() > 0.85
    assert (mask[tank] > 0.5).mean() < 0.01


def test_a_close_up_portrait_is_cut_out_by_colour_not_by_the_skeleton():
    """A head-and-shoulders portrait filling the frame: no pixel lies 3 part radii from every part, so
    GrabCut had no sure background and the skeleton's blobs were the mask (samples/grace_hopper: sky beside
    the head, flag below the shoulder, the cap's crown missing). Its zone now shrinks until some sure
    background is left, and the colours decide: the hair and the jacket are the person, the sky is not."""
    from posetransfer.core.pose.keypoints import Person, Pose

    h, w = 170, 130
    xy = {"nose": (65, 62), "neck": (65, 112), "right_shoulder": (27, 122), "left_shoulder": (103, 122),
          "right_hip": (43, 236), "left_hip": (87, 236), "right_eye": (57, 54), "left_eye": (73, 54),
          "right_ear": (48, 60), "left_ear": (82, 60)}
    person = Person.from_xy([xy.get(n) for n in (
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
        "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
        "right_eye", "left_eye", "right_ear", "left_ear")])
    rng = np.random.RandomState(2)
    image = np.float32([0.25, 0.45, 0.85]) + rng.uniform(-0.03, 0.03, (h, w, 3)).astype(np.float32)  # sky
    yy, xx = np.mgrid[:h, :w]
    jacket = (yy > 112) & (np.abs(xx - 65) < 30 + (yy - 112) * 0.9)
    hair = ((xx - 65) ** 2 / 34.0 ** 2 + (yy - 50) ** 2 / 40.0 ** 2 < 1)
    face = ((xx - 65) ** 2 / 19.0 ** 2 + (yy - 66) ** 2 / 26.0 ** 2 < 1)
    neck = (np.abs(xx - 65) < 10) & (yy > 80) & (yy <= 118)
    image[hair] = (0.75, 0.72, 0.68)  # grey hair
    image[jacket] = (0.08, 0.08, 0.16)
    image[face | neck] = (0.85, 0.65, 0.55)
    sky = ~(hair | jacket | face | neck)
    near = torch.stack(list(seg.part_distance_fields(person, (h, w)).values())).amin(0)
    assert float(near.max()) < 3  # a close-up: no pixel lies 3 part radii from every part
    mask = seg.person_mask(image, Pose([person], w, h).person(0)) > 0.5
    assert sky.sum() > 5000
    assert mask[hair & ~face].mean() > 0.9
    assert mask[jacket].mean() > 0.95
    assert mask[sky].mean() < 0.05
