"""Pictures of poses: ControlNet skeletons, GFLA heatmaps, PIDM pose maps, body-part masks and labels.

All functions take a pixel-coordinate :class:`~.keypoints.Pose` and draw on its ``height`` x ``width``
canvas; missing joints (confidence <= 0) and the limbs that need them are skipped. Geometry follows the
pixel-centre convention of :mod:`.keypoints`: pixel ``(i, j)`` sits at ``x = j, y = i``.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..flow import base_coords
from .keypoints import COLORS, LIMBS, NUM_JOINTS, Person, Pose, check_joints
from ..body.part_fields import normalised_distance, part_geometry
from ..body.parts import BODY_PARTS, DEFAULT_DEPTH_ORDER, PART_BY_NAME

__all__ = [
    "stick_scale", "render_skeleton", "render_skeleton_batch", "render_heatmaps",
    "render_pidm_pose_map", "render_part_masks", "render_part_labels",
]

STICKWIDTH = 4      # half-width of a limb ellipse at scale 1 (OpenPose / controlnet_aux / PIDM)
JOINT_RADIUS = 4

# --------------------------------------------------------------------------------------------- skeleton

def stick_scale(width: int, height: int) -> int:
    """controlnet_aux's ``xinsr_stick_scaling`` factor: 1 below 500 px, else ``min(2 + side // 1000, 7)``."""
    side = max(width, height)
    return 1 if side < 500 else min(2 + side // 1000, 7)


def _limb_polygon(body: np.ndarray, a: int, b: int, stickwidth: int) -> np.ndarray | None:
    """OpenPose's ellipse polygon for the bone ``a``-``b``, or None when a joint is missing.

    The angle is measured from ``b`` to ``a`` and truncated by ``int`` exactly as controlnet_aux and PIDM do
    (the direction matters by up to 1 degree after truncation)."""
    if body[a, 2] <= 0 or body[b, 2] <= 0:
        return None
    (xa, ya), (xb, yb) = body[a, :2], body[b, :2]
    length = math.hypot(xa - xb, ya - yb)
    angle = math.degrees(math.atan2(ya - yb, xa - xb))
    return cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stickwidth),
                            int(angle), 0, 360, 1)


def _draw_body(img: np.ndarray, body: np.ndarray, stickwidth: int) -> None:
    """One person in place: limbs (colour x 0.6), then joints (full colour), as controlnet_aux."""
    for i, (a, b) in enumerate(LIMBS):
        polygon = _limb_polygon(body, a, b, stickwidth)
        if polygon is not None:
            cv2.fillConvexPoly(img, polygon, [int(c * 0.6) for c in COLORS[i]])
    for j in range(NUM_JOINTS):
        if body[j, 2] > 0:
            cv2.circle(img, (int(body[j, 0]), int(body[j, 1])), JOINT_RADIUS, COLORS[j], thickness=-1)


def _check_pose(pose: Pose) -> None:
    """A Pose (its canvas within the size limit, :class:`Pose`'s own check) whose joints lie near its canvas:
    far-off values (1e12) would overflow OpenCV's int drawing coordinates."""
    if not isinstance(pose, Pose):
        raise ValueError(f"pose: expected a Pose, got {type(pose).__name__}")
    check_joints(pose, "pose")


def render_skeleton(pose: Pose, canvas: np.ndarray | None = None, stick_scaling: bool = True) -> np.ndarray:
    """The ControlNet/controlnet_aux OpenPose picture of every person: uint8 RGB ``(H, W, 3)``.

    People are drawn one after another (each one's limbs, then its joints), as controlnet_aux's
    ``draw_poses`` does, so a later person covers an earlier one. A frame with no people gives a black image.
    ``canvas`` (uint8 ``(H, W, 3)``) is drawn on a copy instead of black. ``stick_scaling`` widens limbs on
    canvases of 500 px and more (:func:`stick_scale`, controlnet_aux's ``xinsr_stick_scaling``); turn it off
    for controlnet_aux's default picture.
    """
    _check_pose(pose)
    shape = (pose.height, pose.width, 3)
    if canvas is None:
        img = np.zeros(shape, np.uint8)
    else:
        if not isinstance(canvas, np.ndarray) or canvas.shape != shape or canvas.dtype != np.uint8:
            got = f"{canvas.dtype} {canvas.shape}" if isinstance(canvas, np.ndarray) else type(canvas).__name__
            raise ValueError(f"canvas: expected a uint8 array of shape {shape} (the pose's canvas), got {got}")
        img = canvas.copy()
    stickwidth = STICKWIDTH * (stick_scale(pose.width, pose.height) if stick_scaling else 1)
    for person in pose.people:
        _draw_body(img, person.body, stickwidth)
    return img


def render_skeleton_batch(poses: Sequence[Pose], stick_scaling: bool = True) -> np.ndarray:
    """:func:`render_skeleton` of each frame, stacked: uint8 ``(B, H, W, 3)``; all canvases must agree."""
    if len(poses) == 0:
        raise ValueError("poses: expected at least one frame, got an empty batch")
    for i, p in enumerate(poses):
        _check_pose(p)
        if p.size != poses[0].size:
            raise ValueError(f"poses: frame {i} has a {p.width}x{p.height} canvas but frame 0 has "
                             f"{poses[0].width}x{poses[0].height}; resize the poses to one canvas first")
    return np.stack([render_skeleton(p, stick_scaling=stick_scaling) for p in poses])


# ----------------------------------------------------------------------------------- network pose inputs

def _person(pose: Pose, person: int) -> Person:
    _check_pose(pose)
    return pose.person(person, "pose")


def render_heatmaps(pose: Pose, sigma: float = 6.0, person: int = 0) -> np.ndarray:
    """GFLA-style Gaussian heatmaps, float32 ``(18, H, W)``, peak 1 at each joint, zeros for missing joints.

    Channel j is ``exp(-((x - xj)^2 + (y - yj)^2) / (2 sigma^2))`` at pixel ``(i, j) = (y, x)``. Joint
    coordinates are used as floats (GFLA's own loader truncates them to integers first).
    """
    body = _person(pose, person).body
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a positive number of pixels, got {sigma!r}")
    out = np.zeros((NUM_JOINTS, pose.height, pose.width), np.float32)
    xs, ys = np.arange(pose.width), np.arange(pose.height)
    for j in np.flatnonzero(body[:, 2] > 0):
        gx = np.exp(-((xs - body[j, 0]) ** 2) / (2 * sigma ** 2))
        gy = np.exp(-((ys - body[j, 1]) ** 2) / (2 * sigma ** 2))
        out[j] = np.outer(gy, gx)  # the 2-D Gaussian is separable
    return out


def render_pidm_pose_map(pose: Pose, person: int = 0) -> np.ndarray:
    """PIDM's 20-channel pose input, float32 ``(20, H, W)`` in 0..1, as PIDM's ``get_label_tensor`` makes it.

    Channels 0-2: PIDM's own skeleton picture, which is NOT the ControlNet one: joints first (radius 4), then
    each limb (half-width 4, no stick scaling) blended over it at 0.6 opacity, drawn with the colour table
    read as BGR, so red and blue are swapped (limb 0 is blue). Channels 3-19: for each of the first 17
    limbs, the L1 distance (``cv2.DIST_L1``, mask 3) to the limb's ellipse, divided by 3, clipped to 0..255,
    truncated to uint8, over 255. A missing limb has no pixel at distance 0, so its channel is all 1
    (OpenCV's distance is then FLT_MAX), as in PIDM.
    """
    body = _person(pose, person).body
    h, w = pose.height, pose.width
    canvas = np.zeros((h, w, 3), np.uint8)
    for j in range(NUM_JOINTS):
        if body[j, 2] > 0:
            cv2.circle(canvas, (int(body[j, 0]), int(body[j, 1])), JOINT_RADIUS, COLORS[j], thickness=-1)
    out = np.empty((20, h, w), np.float32)
    for i, (a, b) in enumerate(LIMBS):
        limb = np.zeros((h, w), np.uint8)
        polygon = _limb_polygon(body, a, b, STICKWIDTH)
        if polygon is not None:
            cur = canvas.copy()
            cv2.fillConvexPoly(cur, polygon, COLORS[i])
            canvas = cv2.addWeighted(canvas, 0.4, cur, 0.6, 0)
            cv2.fillConvexPoly(limb, polygon, 255)
        dist = cv2.distanceTransform(255 - limb, cv2.DIST_L1, 3)
        out[3 + i] = np.clip(dist / 3, 0, 255).astype(np.uint8) / np.float32(255)
    out[:3] = canvas[..., ::-1].transpose(2, 0, 1) / np.float32(255)  # PIDM's cvtColor(BGR2RGB)
    return out


# -------------------------------------------------------------------------------------------- part masks

def render_part_masks(pose: Pose, person: int = 0, radius_scale: float = 1.0) -> np.ndarray:
    """Region of each of ``BODY_PARTS`` (in that order), float32 ``(len(BODY_PARTS), H, W)`` in {0, 1}.

    The regions of :mod:`..body.part_fields`: limbs are capsules of radius ``part_radius`` around their bone, the
    torso the hull of neck, shoulders and hips (hips inferred when missing) dilated by the torso radius,
    the head a capsule from part-way up the neck to the face joints' centre. ``radius_scale`` multiplies
    every radius.
    Parts whose joints are missing stay empty.
    """
    body = _person(pose, person)
    if not (isinstance(radius_scale, (int, float)) and math.isfinite(radius_scale) and radius_scale > 0):
        raise ValueError(f"radius_scale: expected a positive number, got {radius_scale!r}")
    out = np.zeros((len(BODY_PARTS), pose.height, pose.width), np.float32)
    xy = base_coords(pose.height, pose.width)[0]
    for k, part in enumerate(BODY_PARTS):
        geom = part_geometry(body).get(part.name)
        if geom is not None:
            out[k] = (normalised_distance(geom, xy) <= radius_scale).numpy()
    return out


def render_part_labels(pose: Pose, person: int = 0,
                       depth_order: Sequence[str] = DEFAULT_DEPTH_ORDER) -> np.ndarray:
    """uint8 ``(H, W)`` label map: 0 background, else ``BodyPart.label`` of the front-most part.

    ``depth_order`` lists part names back to front (a later part wins where parts overlap); parts left out
    of it are not drawn.
    """
    if isinstance(depth_order, str) or any(n not in PART_BY_NAME for n in depth_order):
        raise ValueError(f"depth_order: expected a sequence of part names from {list(PART_BY_NAME)}, "
                         f"got {depth_order!r}")
    masks = render_part_masks(pose, person)
    labels = np.zeros(pose.size, np.uint8)
    index = {p.name: k for k, p in enumerate(BODY_PARTS)}
    for name in depth_order:
        labels[masks[index[name]] > 0] = PART_BY_NAME[name].label
    return labels
