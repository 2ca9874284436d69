"""The training-free part-based backward flow: every body part moves by its own affine map.

This is the structure-aware paper's decomposition (parts move nearly rigidly, each with its own flow)
combined with the single-transformation paper's idea that a part's motion is well described by an affine
map, fitted here directly to the part's joints instead of learned (:mod:`.part_transforms`).

For every target pixel:

1. Each part the target pose determines claims a generous region around its bone (``REGION`` radii:
   clothes stick out of the nominal limb width) and proposes a source position through its affine map.
   Near the joint it shares with its parent part, a child's map is blended linearly into the parent's over
   one limb radius (linear blend skinning), so elbows, knees, shoulders and hips bend without tearing.
2. Parts are tried front to back (``depth_order``, reversed). A part keeps the pixel when its proposed
   source position lies on the SAME part of the source person (or on the neighbouring part, close to the
   joint they share), judged on the source's part-label map. So the silhouette follows the real body and
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

REGION = 2.5  # region radius, in units of the part's nominal radius
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

    coords: dict[str, torch.Tensor] = {}
    for name in _PARENTS_FIRST:
        if name not in transforms:
            continue
        m = torch.as_tensor(transforms[name], dtype=torch.float32)
        c = torch.einsum("ij,jhw->ihw", m[:, :2], xy) + m[:, 2, None, None]
        parent = PART_PARENT.get(name)
        if parent is not None and parent[0] in coords and name in t_geom:
            a, b = t_geom[name].points
            u = (b - a) / max(np.linalg.norm(b - a), 1e-6)
            along = (xy[0] - float(a[0])) * float(u[0]) + (xy[1] - float(a[1])) * float(u[1])
            wgt = _smoothstep(along / max(t_geom[name].radius, 1e-6))
            c = wgt * c + (1 - wgt) * coords[parent[0]]
        coords[name] = c

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
        c = coords[name]
        label = _sample(source_labels, c, "nearest").round().long()
        inside = (c[0] >= -0.5) & (c[0] <= ws - 0.5) & (c[1] >= -0.5) & (c[1] <= hs - 0.5)
        ok = label == PART_BY_NAME[name].label
        for other, joint in _neighbours(name):
            if other in s_geom:
                jx, jy = source.body[joint, :2]
                near = torch.hypot(c[0] - float(jx), c[1] - float(jy)) < JOINT_REACH * s_geom[other].radius
                ok |= (label == PART_BY_NAME[other].label) & near
        keep = (field < REGION) & ok & inside & ~taken
        flow_coords = torch.where(keep, c, flow_coords)
        person = torch.where(keep, _sample(source_mask, c, "bilinear"), person)
        owner = torch.where(keep, torch.tensor(PART_BY_NAME[name].label), owner)
        hole |= core & ~ok & ((label > 0) | ~inside) & ~taken
        # Holes keep the front-most proposal as their flow (the picture of the flow stays continuous).
        flow_coords = torch.where(core & ~taken & ~keep & (owner == 0) & (flow_coords.abs().sum(0) == 0), c,
                                  flow_coords)
        taken |= keep
    hole &= ~taken
    person = torch.where(hole, torch.ones_like(person), person)
    return PartFlow(flow_coords, person, hole, owner)


def _neighbours(name: str) -> list[tuple[str, int]]:
    """Parts sharing a joint with ``name``: its parent and its children, with the shared joint."""
    out = []
    if name in PART_PARENT:
        out.append(PART_PARENT[name])
    out += [(child, joint) for child, (parent, joint) in PART_PARENT.items() if parent == name]
    return out
