"""Where each body part lies on a pixel grid: normalised distance fields from keypoints.

For a part with region half-width ``r`` the field is ``distance(pixel, part skeleton) / r``: below 1 inside
the part's nominal region, 0 on its bone. Limbs use their bone segment (forearms and shins lengthened past
the wrist and ankle for the hand and foot, ``PART_EXTENSION``), the torso its shoulder/hip polygon
(0 inside), the head a capsule from part-way up the neck (``HEAD_START``) to the centre of the face
joints. Radii come from :data:`~.parts.PART_RADIUS` and :func:`~.parts.body_scale`. These regions are the
project's one definition of where a part is: the part masks and labels of :mod:`..pose.render`, the segmentation
seeds and FlowWarp all use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..pose.keypoints import Person
from .part_transforms import HEAD_JOINTS, LHIP, LSH, NECK, RHIP, RSH, torso_points
from .parts import BODY_PARTS, PART_EXTENSION, PART_RADIUS, body_scale

_FACE = tuple(j for j in HEAD_JOINTS if j != NECK)
HEAD_SPREAD = 1.6  # head radius >= this x the largest distance of a face joint from the face centre
HEAD_START = 0.4  # the head region starts this far from the neck joint towards the face centre


@dataclass
class PartGeometry:
    """A part's skeleton in one frame: ``points`` is the segment (2 points) or polygon; ``radius`` in px."""

    name: str
    kind: str  # "segment" | "polygon"
    points: np.ndarray
    radius: float


def part_geometry(person: Person) -> dict[str, PartGeometry]:
    """Skeletons of the parts this person's joints determine (parts with missing joints are left out)."""
    scale = body_scale(person)
    if scale <= 0:
        return {}
    out: dict[str, PartGeometry] = {}
    for part in BODY_PARTS:
        r = PART_RADIUS[part.name] * scale
        if part.segment is not None:
            a, b = part.segment
            if person.present[a] and person.present[b]:
                pts = person.body[[a, b], :2].copy()
                bone = pts[1] - pts[0]
                length = float(np.linalg.norm(bone))
                if part.name in PART_EXTENSION and length > 1e-6:
                    pts[1] += bone / length * PART_EXTENSION[part.name] * scale
                out[part.name] = PartGeometry(part.name, "segment", pts, r)
        elif part.name == "torso":
            pts = torso_points(person, scale)
            order = [j for j in (RSH, LSH, LHIP, RHIP, NECK) if j in pts]
            if len(order) >= 2:
                out["torso"] = PartGeometry("torso", "polygon", np.array([pts[j] for j in order]), r)
        elif part.name == "head":
            face = [j for j in _FACE if person.present[j]]
            if face:
                centre = person.body[face, :2].mean(0)
                spread = max(float(np.linalg.norm(person.body[face, :2] - centre, axis=1).max()), 0.0)
                r = max(r, HEAD_SPREAD * spread)
                # From part-way up the neck: below that the neck and collar move with the torso.
                start = person.body[NECK, :2] + HEAD_START * (centre - person.body[NECK, :2]) \
                    if person.present[NECK] else centre
                out["head"] = PartGeometry("head", "segment", np.stack([start, centre]), r)
    return out


def segment_distance(xy: torch.Tensor, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of grid points ``xy`` ``(2, H, W)`` to segment ``a-b``, and their signed position along it
    in pixels from ``a`` (unclamped)."""
    sq, along = _segment_sq(xy[0], xy[1], a, b)
    return sq.sqrt_(), along


def _segment_sq(x: torch.Tensor, y: torch.Tensor, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to segment ``a-b`` and position along it (:func:`segment_distance` before the square
    root) of the points ``(x, y)``: ``(H, W)`` each, or a grid's ``(1, W)`` columns and ``(H, 1)`` rows, which
    broadcast to the same values with the per-column and per-row terms computed once. The operations of the
    plain expressions, in place on fresh tensors (fewer copies, the same values)."""
    a = torch.as_tensor(np.asarray(a, np.float32))
    d = torch.as_tensor(np.asarray(b, np.float32)) - a
    length = float(torch.linalg.norm(d))
    px, py = x - a[0], y - a[1]
    if length < 1e-6:
        sq = px * px + py * py
        return sq, torch.zeros_like(sq)
    u = d / length
    along = px * u[0] + py * u[1]
    t = along.clamp(0, length)
    tmp = t * u[0]
    ex = torch.sub(px, tmp, out=tmp)  # the offset from the nearest point of the segment
    ey = torch.sub(py, t.mul_(u[1]), out=t)
    return ex.mul_(ex).add_(ey.mul_(ey)), along


def polygon_distance(xy: torch.Tensor, poly: np.ndarray) -> torch.Tensor:
    """Distance of grid points to a polygon's area (0 inside), polygon = convex hull of ``poly``."""
    return _polygon_distance(xy[0], xy[1], poly)


def _polygon_distance(x: torch.Tensor, y: torch.Tensor, poly: np.ndarray) -> torch.Tensor:
    h, w = y.shape[0], x.shape[1]
    hull = cv2.convexHull(poly.astype(np.float32)).reshape(-1, 2)
    if len(hull) < 3:
        return _segment_sq(x, y, hull[0], hull[-1])[0].sqrt_()
    inside = np.zeros((h, w), np.uint8)
    # ``xy`` may be a window of the canvas: rasterise the polygon in the window's own pixels.
    origin = np.array([float(x[0, 0]), float(y[0, 0])], np.float32)
    cv2.fillConvexPoly(inside, np.round((hull - origin) * 16).astype(np.int32), 1, shift=4)
    # The nearest edge by squared distance, one square root at the end: the square root is monotonic and
    # correctly rounded, so this is exactly the minimum of the edges' distances.
    dist = None
    for i in range(len(hull)):
        sq = _segment_sq(x, y, hull[i], hull[(i + 1) % len(hull)])[0]
        dist = sq if dist is None else torch.minimum(dist, sq, out=dist)
    return dist.sqrt_().masked_fill_(torch.from_numpy(inside).bool(), 0)


def normalised_distance(geom: PartGeometry, xy: torch.Tensor) -> torch.Tensor:
    """``distance / radius`` field of one part on the grid ``xy`` ``(2, H, W)``."""
    return _normalised(geom, xy[0], xy[1])


def grid_normalised_distance(geom: PartGeometry, rows: slice, cols: slice) -> torch.Tensor:
    """:func:`normalised_distance` on the pixel grid's window ``rows, cols`` (pixel ``(i, j)`` at ``x = j,
    y = i``, as :func:`..flow.base_coords`): the same values, with the per-row and per-column terms computed
    once instead of per pixel."""
    x = torch.arange(cols.start, cols.stop, dtype=torch.float32)[None, :]
    y = torch.arange(rows.start, rows.stop, dtype=torch.float32)[:, None]
    return _normalised(geom, x, y)


def _normalised(geom: PartGeometry, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if geom.kind == "segment":
        d = _segment_sq(x, y, geom.points[0], geom.points[1])[0].sqrt_()
    else:
        d = _polygon_distance(x, y, geom.points)
    return d.div_(max(geom.radius, 1e-6))  # d is a fresh tensor
