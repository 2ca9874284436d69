"""The training-free part-based backward flow: every body part moves by its own affine map.

This is the structure-aware paper's decomposition (parts move nearly rigidly, each with its own flow)
combined with the single-transformation paper's idea that a part's motion is well described by an affine
map, fitted here directly to the part's joints instead of learned (:mod:`.part_transforms`).

For every target pixel:

1. Each part the target pose determines claims a generous region around its bone (``REGION`` radii:
   clothes stick out of the nominal limb width) and proposes a source position through its affine map.
   Near the joint it shares with its parent part, a child's map is blended into the parent's over one limb
   radius (angle and stretch blended separately), so elbows, knees, shoulders and hips bend without tearing.
2. Parts are tried front to back (``depth_order``, reversed). A part keeps the pixel when its proposed
   source position lies on the SAME part of the source person (or on the neighbouring part, close to the
   joint they share), judged on the source's part-label map with the part's own (unblended) map, so the
   blend at a joint never drags a neighbour's pixels along. So the silhouette follows the real body and
   clothes, and an arm drawn over the torso in the target takes arm texture, not torso texture.
3. A pixel no part keeps becomes background, except where a part's core region (within one radius of its
   bone) proposes a position on ANOTHER part of the source (that content is hidden in the source) or
   outside the source image, or the part cannot be moved at all because the source lacks its joints: such
   pixels are *holes*, person pixels whose content must be generated.

Missing joints: a limb segment missing a joint in either pose is dropped (a target limb whose source is
unknown becomes a hole; a source limb the target lacks simply disappears); missing hips are inferred for the
torso; the head needs one face joint or the neck in both poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .flow import base_coords, coords_to_grid
from .keypoints import Person
from .part_fields import normalised_distance, part_geometry
from .part_transforms import fit_part_transforms
from .parts import DEFAULT_DEPTH_ORDER, PART_BY_NAME, PART_PARENT

REGION = 6.0  # a part claims pixels this many nominal radii from its bone at most (its label map does the rest)
JOINT_REACH = 1.5  # a neighbour's label is accepted this many radii around the shared joint
_PARENTS_FIRST = ("torso", "head", "right_upper_arm", "left_upper_arm", "right_thigh", "left_thigh",
                  "right_forearm", "left_forearm", "right_shin", "left_shin")


@dataclass
class PartFlow:
    """Result on the target grid: ``coords`` ``(2, H, W)`` source positions in pixels (valid where
    ``person`` > 0 or ``hole``), ``person`` ``(H, W)`` soft person alpha, ``hole`` ``(H, W)`` bool,
    ``owner`` ``(H, W)`` the label of the part that kept each pixel (0 = none)."""

    coords: torch.Tensor
    person: torch.Tensor
    hole: torch.Tensor
    owner: torch.Tensor


def _sample(map_: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample a source map ``(H, W)`` at ``coords`` ``(2, h, w)``; zeros outside."""
    grid = coords_to_grid(coords[None], tuple(map_.shape))
    return F.grid_sample(map_[None, None].float(), grid, mode=mode, padding_mode="zeros",
                         align_corners=False)[0, 0]


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def part_flow(source: Person, source_labels: torch.Tensor, source_mask: torch.Tensor, target: Person,
              size: tuple[int, int], depth_order: tuple[str, ...] = DEFAULT_DEPTH_ORDER) -> PartFlow:
    """Part-based backward flow from ``source`` (with its label map and soft person mask on the source
    grid, see :mod:`.segmentation`) to ``target`` on a target grid of ``size`` ``(H, W)``."""
    h, w = size
    xy = base_coords(h, w)[0]
    transforms = fit_part_transforms(source, target)
    t_geom = part_geometry(target)
    s_geom = part_geometry(source)
    hs, ws = source_labels.shape

    rigid: dict[str, torch.Tensor] = {}  # where each part's own map sends every pixel: decides membership
    coords: dict[str, torch.Tensor] = {}  # the same, blended into the parent's map at joints: gives colour
    for name in _PARENTS_FIRST:
        if name not in transforms:
            continue
        mt = torch.as_tensor(transforms[name], dtype=torch.float32)
        rigid[name] = torch.einsum("ij,jhw->ihw", mt[:, :2], xy) + mt[:, 2, None, None]
        parent = PART_PARENT.get(name)
        if parent is not None and parent[0] in transforms and name in t_geom:
            coords[name] = _blend_at_joint(transforms[parent[0]], transforms[name], t_geom[name], xy)
        else:
            coords[name] = rigid[name]

    flow_coords = torch.zeros(2, h, w)
    person = torch.zeros(h, w)
    owner = torch.zeros(h, w, dtype=torch.long)
    taken = torch.zeros(h, w, dtype=torch.bool)
    hole = torch.zeros(h, w, dtype=torch.bool)
    for name in reversed(depth_order):
        if name not in t_geom:
            continue
        field = normalised_distance(t_geom[name], xy)
        core = field < 1.0
        if name not in coords:  # the target shows this part, the source cannot supply it
            hole |= core & ~taken
            continue
        c, r = coords[name], rigid[name]
        label = _sample(source_labels, r, "nearest").round().long()
        inside = (r[0] >= -0.5) & (r[0] <= ws - 0.5) & (r[1] >= -0.5) & (r[1] <= hs - 0.5)
        ok = label == PART_BY_NAME[name].label
        for other, joint in _neighbours(name):
            if other in s_geom:
                jx, jy = source.body[joint, :2]
                near = torch.hypot(r[0] - float(jx), r[1] - float(jy)) < JOINT_REACH * s_geom[other].radius
                ok |= (label == PART_BY_NAME[other].label) & near
        keep = (field < REGION) & ok & inside & ~taken
        flow_coords = torch.where(keep, c, flow_coords)
        person = torch.where(keep, _sample(source_mask, r, "bilinear"), person)
        owner = torch.where(keep, torch.tensor(PART_BY_NAME[name].label), owner)
        hole |= core & ~ok & ((label > 0) | ~inside) & ~taken
        # Holes keep the front-most proposal as their flow (the picture of the flow stays continuous).
        flow_coords = torch.where(core & ~taken & ~keep & (owner == 0) & (flow_coords.abs().sum(0) == 0), c,
                                  flow_coords)
        taken |= keep
    hole &= ~taken
    person = torch.where(hole, torch.ones_like(person), person)
    return PartFlow(flow_coords, person, hole, owner)


def _polar(lin: np.ndarray) -> tuple[float, np.ndarray]:
    """``lin = R(angle) @ S`` with S symmetric positive (2-D polar decomposition)."""
    angle = float(np.arctan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))
    c, s = np.cos(angle), np.sin(angle)
    return angle, np.array([[c, s], [-s, c]]) @ lin


def _blend_at_joint(parent: np.ndarray, child: np.ndarray, geom, xy: torch.Tensor) -> torch.Tensor:
    """Source positions of a child part whose map fades into its parent's near their shared joint.

    Along the child's bone, from the joint (its first point) over one part radius, the weight goes 0 -> 1
    (smoothstep). The maps are blended about the joint as rotation angle and stretch separately (2-D polar
    decomposition), not as raw coordinates: a linear blend of two rotations folds a bent elbow or knee
    into thin stretched streaks, an angle blend does not.
    """
    a, b = geom.points
    u = (b - a) / max(np.linalg.norm(b - a), 1e-6)
    dx, dy = xy[0] - float(a[0]), xy[1] - float(a[1])
    wgt = _smoothstep((dx * float(u[0]) + dy * float(u[1])) / max(geom.radius, 1e-6))
    ang_p, s_p = _polar(parent[:, :2])
    ang_c, s_c = _polar(child[:, :2])
    dang = (ang_c - ang_p + np.pi) % (2 * np.pi) - np.pi
    q_p, q_c = parent[:, :2] @ a + parent[:, 2], child[:, :2] @ a + child[:, 2]  # where each sends the joint
    ang = ang_p + wgt * dang
    cos, sin = torch.cos(ang), torch.sin(ang)
    s = [[(1 - wgt) * float(s_p[i, j]) + wgt * float(s_c[i, j]) for j in range(2)] for i in range(2)]
    sx = s[0][0] * dx + s[0][1] * dy  # stretch, then rotate
    sy = s[1][0] * dx + s[1][1] * dy
    qx = (1 - wgt) * float(q_p[0]) + wgt * float(q_c[0])
    qy = (1 - wgt) * float(q_p[1]) + wgt * float(q_c[1])
    return torch.stack((qx + cos * sx - sin * sy, qy + sin * sx + cos * sy))


def _neighbours(name: str) -> list[tuple[str, int]]:
    """Parts sharing a joint with ``name``: its parent and its children, with the shared joint."""
    out = []
    if name in PART_PARENT:
        out.append(PART_PARENT[name])
    out += [(child, joint) for child, (parent, joint) in PART_PARENT.items() if parent == name]
    return out
