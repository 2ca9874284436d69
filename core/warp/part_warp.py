"""The training-free part-based backward flow: every body part moves by its own affine map.

This is the structure-aware paper's decomposition (parts move nearly rigidly, each with its own flow)
combined with the single-transformation paper's idea that a part's motion is well described by an affine
map, fitted here directly to the part's joints instead of learned (:mod:`..body.part_transforms`).

For every target pixel:

1. Each part the target pose determines proposes a source position for every pixel through its affine
   map.
   Near the joint it shares with its parent part, a child's map is blended into the parent's over one limb
   radius (angle and stretch blended separately), so elbows, knees, shoulders and hips bend without tearing;
   where the blend falls off the source person and the part's own map does not (beside a sharply bent knee),
   the own map is used, so the backdrop is never drawn as the limb.
2. Parts are tried front to back (``depth_order``, reversed). A part keeps the pixel when its proposed
   source position lies on the SAME part of the source person (or on the neighbouring part, close to the
   joint they share), judged on the source's part-label map with the part's own (unblended) map, so the
   blend at a joint never drags a neighbour's pixels along. So the silhouette follows the real body and
   clothes, and an arm drawn over the torso in the target takes arm texture, not torso texture.
   Where the regions of a left and a right limb of the same kind (both legs, both arms) overlap in the
   source, the nearer bone decides the label, not the depth order (legs side by side: neither hides the
   other). The hand or foot past a limb's end joint moves along the bone by the body-scale ratio, not by the
   bone's own stretch (a foreshortened shin keeps a foot of its size). Within 2 px of its kept pixels a
   part also keeps, with its soft alpha, the soft edge of the source's person mask (:func:`_add_soft_edge`), where
   no part keeps the pixel: edges stay smooth when magnified.
3. A pixel no part keeps becomes background, except where a part's core region (within one radius of its
   bone) proposes a position on ANOTHER part of the source (that content is hidden in the source; not the
   opposite leg itself, see above) or outside the source image, or the part cannot be moved at all because
   the source lacks its joints: such pixels are *holes*, person pixels whose content must be generated. A
   hole shows its own part's texture (:func:`hole_texture`) where its part proposed a source position
   (also limbs the source shows too short, through a body-proportion map,
   :func:`~..body.part_transforms.foreshortened_limb_transforms`), a smooth fill elsewhere. A limb the
   source lacks (a joint not detected) shows the texture of its mirror limb, where the source has that one
   (chosen: trousers and sleeves are alike on both sides as a rule; on real video frames this beat the
   smooth fill, 0.015 SSIM on the turns, while a character with different armour on each side lost 0.003).

View changes (:mod:`..body.views`): when source and target face opposite ways (front <-> back), each target part
is fed by the source part on the same image side (the source's labels are mirrored first), so no part map
is a reflection; the torso map itself is bounded and falls back to a similarity or a translation
(:func:`~..body.part_transforms.torso_transform`). In a side-view target the far side's limbs are drawn behind
the torso; in a side-view source the far side's limbs that the body hides (``hidden``, see
:func:`hidden_parts`) count as missing, so the target shows holes to generate there, not stretched copies
of the near side.

Missing joints: a target limb whose source is unknown becomes a hole; a limb the target pose lacks but the
source shows is guessed from the source's pose and drawn as a hole with its own texture
(:func:`..body.part_transforms.missing_limb_transforms`); missing hips are inferred for the torso; the head
needs one face joint or the neck in both poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..flow import base_coords, coords_to_grid
from ..pose.keypoints import Person
from ..body.part_fields import grid_normalised_distance, part_geometry
from ..body.part_transforms import fit_part_transforms, foreshortened_limb_transforms, missing_limb_transforms
from ..body.parts import (DEFAULT_DEPTH_ORDER, NUM_PART_LABELS, PART_BY_NAME, PART_EXTENSION, PART_PARENT,
                          PART_RADIUS, body_scale)
from ..body.views import MIRROR_PART, is_side_view, mirrored, near_side, side_view_depth_order, view_flips

HIDDEN_VISIBLE = 0.35  # a far-side limb of a side view showing less of its region than this is hidden
GAP = 5  # gaps narrower than about this many pixels between kept pixels are closed (_close_gaps)
JOINT_REACH = 1.5  # a neighbour's label is accepted this many radii around the shared joint
TEXTURE_REACH = 2.0  # ... from a proposal at most this many part radii from its part's pixels (hole_texture)
MIRROR_DEPTH = 0.5  # a hole's texture is mirrored from at most this many part radii inside the part (hole_texture)
BLEND = 0.5  # a child part fades in from its parent over this many of its radii past their joint


@dataclass
class PartFlow:
    """Result on the target grid: ``coords`` ``(2, H, W)`` source positions in pixels (valid where
    ``person`` > 0 or ``textured``), ``person`` ``(H, W)`` soft person alpha, ``hole`` ``(H, W)`` bool,
    ``owner`` ``(H, W)`` the label of the part that kept each pixel (0 = none), ``textured`` ``(H, W)`` the
    holes whose ``coords`` point at source texture of their own part to fill them with (:func:`hole_texture`;
    still content to generate), ``hole_owner`` the label of the part each hole belongs to (0 = none)."""

    coords: torch.Tensor
    person: torch.Tensor
    hole: torch.Tensor
    owner: torch.Tensor
    textured: torch.Tensor | None = None
    hole_owner: torch.Tensor | None = None


def _sample(map_: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample a source map ``(H, W)`` at ``coords`` ``(2, h, w)``; zeros outside."""
    grid = coords_to_grid(coords[None], tuple(map_.shape))
    return F.grid_sample(map_[None, None].float(), grid, mode=mode, padding_mode="zeros",
                         align_corners=False)[0, 0]


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def label_boxes(labels: torch.Tensor) -> dict[int, tuple[float, float, float, float]]:
    """Pixel bounding box ``(x0, y0, x1, y1)`` of every part label present in a label map."""
    lab = labels.numpy()
    out = {}
    for value in range(1, NUM_PART_LABELS):
        m = lab == value
        rows = np.flatnonzero(m.any(1))
        if len(rows):
            cols = np.flatnonzero(m.any(0))
            out[value] = (float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1]))
    return out


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """The (2, 3) inverse of an affine (2, 3)."""
    return np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]


def _preimage_box(matrix: np.ndarray, box, inv: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Bounding box of the target pixels an affine (target -> source) sends into a source ``box``; ``inv``:
    its :func:`_inverse`, when known."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], float)
    inv = _inverse(matrix) if inv is None else inv
    pts = corners @ inv[:, :2].T + inv[:, 2]
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def _window(boxes, h: int, w: int, margin: int = 2) -> tuple[slice, slice] | None:
    """Union of boxes, grown by ``margin`` and clipped to the canvas, as (rows, cols) slices."""
    boxes = [b for b in boxes if b is not None and np.all(np.isfinite(b))]
    if not boxes:
        return None
    b = np.array(boxes)
    x0 = max(int(np.floor(b[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(b[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(b[:, 2].max())) + margin + 1, w)
    y1 = min(int(np.ceil(b[:, 3].max())) + margin + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def hidden_parts(person: Person, labels: torch.Tensor) -> frozenset[str]:
    """Far-side limbs of a side view that the body hides: their label covers less than ``HIDDEN_VISIBLE``
    of their nominal region (capsule area), so the source cannot supply them (see module docstring)."""
    if not is_side_view(person):
        return frozenset()
    near = near_side(person)
    if near is None:
        return frozenset()
    far = "left_" if near == "right" else "right_"
    counts = torch.bincount(labels.flatten(), minlength=NUM_PART_LABELS).tolist()
    scale = body_scale(person)
    out = set()
    for name, g in part_geometry(person).items():
        if name.startswith(far) and g.kind == "segment":
            r = PART_RADIUS[name] * scale
            area = np.pi * r * r + 2 * r * float(np.linalg.norm(g.points[1] - g.points[0]))
            if counts[PART_BY_NAME[name].label] < HIDDEN_VISIBLE * area:
                out.add(name)
    return frozenset(out)


def part_flow(source: Person, source_labels: torch.Tensor, source_mask: torch.Tensor, target: Person,
              size: tuple[int, int], depth_order: tuple[str, ...] = DEFAULT_DEPTH_ORDER,
              boxes: dict[int, tuple[float, float, float, float]] | None = None,
              hidden: frozenset[str] = frozenset(), cache: dict | None = None) -> PartFlow:
    """Part-based backward flow from ``source`` (with its label map and soft person mask on the source
    grid, see :mod:`..body.segmentation`) to ``target`` on a target grid of ``size`` ``(H, W)``.

    Each part is evaluated only inside the window where it can matter (the target pixels its map sends
    onto its own or its neighbours' source labels, and its core region), so the cost grows with the
    person's area, not the canvas's times the number of parts. ``boxes`` are the source's
    :func:`label_boxes`, computed here when not given (pass them when warping one source many times).
    ``hidden``: source parts that must not be used (:func:`hidden_parts`). ``cache``: a dict kept with the
    source (``PreparedSource.cache``) where what depends only on the source is kept between targets (the
    label map with left/right overlaps split, region flags, the distance transforms of :func:`hole_texture`).
    """
    h, w = size
    cache = {} if cache is None else cache
    xy = base_coords(h, w)[0]
    boxes = label_boxes(source_labels) if boxes is None else boxes
    mirrored_source = view_flips(source, target)
    if mirrored_source:  # feed each target part from the source part on its image side
        source = mirrored(source)
        lut = torch.arange(NUM_PART_LABELS)
        for name, other in MIRROR_PART.items():
            lut[PART_BY_NAME[name].label] = PART_BY_NAME[other].label
        source_labels = lut[source_labels]
        boxes = {int(lut[k]): v for k, v in boxes.items()}
        hidden = frozenset(MIRROR_PART[n] for n in hidden)
    depth_order = side_view_depth_order(target, depth_order)
    fitted = fit_part_transforms(source, target)
    transforms = {k: v for k, v in fitted.items() if k not in hidden}
    # Parts the source cannot supply but whose texture can still be told (a hidden far-side limb, a limb the
    # source shows too short): maps used only to fill their holes (hole_texture), never as real content.
    foreshortened = foreshortened_limb_transforms(source, target)
    guesses = {**{k: v for k, v in fitted.items() if k in hidden}, **foreshortened}
    guess_label = {k: PART_BY_NAME[k].label for k in guesses}
    # A limb the source lacks (a joint not detected) has no map of its own and would get a smooth fill (a
    # light grey leg beside dark trousers on real video). Its placeholder is taken from its mirror limb
    # where the source shows that one (the same trousers or sleeve, as a rule): still a hole to generate.
    # (Hidden far-side limbs keep their own map, their guess above; their texture, see hole_texture below.)
    lacking = [k for k, m in MIRROR_PART.items() if k not in fitted and k not in guesses and m in transforms]
    if lacking:  # (the usual pose has every limb: no second fit)
        mirror_fit = fit_part_transforms(mirrored(source), target)
        for k in lacking:
            if k in mirror_fit:
                guesses[k] = mirror_fit[k]
                guess_label[k] = PART_BY_NAME[MIRROR_PART[k]].label
    # Limbs the target pose lacks (an undetected elbow, wrist, knee or ankle): placed as the source's pose
    # suggests, holes to generate with their own texture (without them the backdrop shows in their place).
    completed, missing = missing_limb_transforms(source, target)
    for k, g in missing.items():
        guesses[k] = g
        guess_label[k] = PART_BY_NAME[k].label
    t_geom = part_geometry(completed)
    s_geom = part_geometry(source)
    hs, ws = source_labels.shape
    key = ("mirrored" if mirrored_source else "plain",)
    if key + ("codes",) not in cache:
        limb_fields = cache.pop(key + ("limb_fields",), None)  # (prepare_cache's)
        if limb_fields is None:
            limb_fields = _limb_fields(s_geom, source_labels.shape)
        split = _split_opposite_overlaps(source_labels, s_geom, limb_fields)
        cache[key + ("labels",)] = split
        cache[key + ("codes",)] = _region_codes(split, limb_fields)
    source_labels = cache[key + ("labels",)]
    codes = cache[key + ("codes",)]
    t_scale = body_scale(target)
    ratio = body_scale(source) / t_scale if t_scale > 0 else 1.0

    flow_coords = torch.zeros(2, h, w)
    person = torch.zeros(h, w)
    owner = torch.zeros(h, w, dtype=torch.long)
    taken = torch.zeros(h, w, dtype=torch.bool)
    hole = torch.zeros(h, w, dtype=torch.bool)
    hole_owner = torch.zeros(h, w, dtype=torch.long)  # a hole's flow: the front-most part's proposal
    for name in reversed(depth_order):
        if name not in t_geom:
            continue
        geom = t_geom[name]
        label_k = PART_BY_NAME[name].label
        core_box = (*(geom.points.min(0) - geom.radius), *(geom.points.max(0) + geom.radius))
        m = transforms.get(name)
        win_boxes = [core_box]
        if m is not None:
            src_boxes = [boxes.get(label_k)]
            for other, joint in _neighbours(name):
                if other in s_geom:
                    reach = JOINT_REACH * s_geom[other].radius
                    jx, jy = source.body[joint, :2]
                    src_boxes.append((jx - reach, jy - reach, jx + reach, jy + reach))
            inv = _inverse(m)  # once for all the part's boxes
            win_boxes += [_preimage_box(m, b, inv) for b in src_boxes if b is not None]
        win = _window(win_boxes, h, w)
        if win is None:
            continue
        rows, cols = win
        pxy = xy[:, rows, cols]
        core = _core(geom, core_box, rows, cols)
        free = ~taken[rows, cols]
        if m is None:  # the target shows this part, the source cannot supply it
            new_hole = core & free
            g = guesses.get(name)
            if g is not None:
                propose = new_hole & (hole_owner[rows, cols] == 0)
                r = _end_at_body_scale(g, _affine(g, pxy), name, completed, pxy, ratio)
                flow_coords[:, rows, cols] = torch.where(propose, r, flow_coords[:, rows, cols])
                hole_owner[rows, cols].masked_fill_(propose, guess_label[name])
            hole[rows, cols] |= new_hole
            continue
        r0 = _affine(m, pxy)
        r = _end_at_body_scale(m, r0, name, target, pxy, ratio)
        code = _sample(codes, r, "nearest").round().long()
        label = code & _LABEL_BITS
        inside = (r[0] >= -0.5) & (r[0] <= ws - 0.5) & (r[1] >= -0.5) & (r[1] <= hs - 0.5)
        ok = label == label_k
        for other, joint in _neighbours(name):
            if other in s_geom:
                jx, jy = source.body[joint, :2]
                near = torch.hypot(r[0] - float(jx), r[1] - float(jy)) < JOINT_REACH * s_geom[other].radius
                ok |= (label == PART_BY_NAME[other].label) & near
        theirs = _on_opposite_limb(name, label, code)
        keep = ok & inside & free
        parent = PART_PARENT.get(name)
        alpha = _sample(source_mask, r, "bilinear")
        if parent is not None and parent[0] in transforms:
            c = _blend_at_joint(transforms[parent[0]], m, geom, pxy)
            if r is not r0:  # the same hand / foot correction as the own map
                c = c + (r - r0)
            # Where the blend leaves the source person (the backdrop beside a bent knee or elbow) while the
            # own map is on it, the own map's position is shown: else the backdrop would be drawn as the
            # person, and counted as real person content.
            off = keep & (_sample(source_mask, c, "bilinear") < 0.5) & (alpha >= 0.5)
            c = torch.where(off, r, c)
        else:
            c = r
        fc = flow_coords[:, rows, cols]
        new_hole = core & ~ok & ~theirs & ((label > 0) | ~inside) & free
        propose = new_hole & (hole_owner[rows, cols] == 0)
        flow_coords[:, rows, cols] = torch.where(keep | propose, c, fc)
        hole_owner[rows, cols].masked_fill_(propose, label_k)
        person[rows, cols] = torch.where(keep, alpha, person[rows, cols])
        owner[rows, cols].masked_fill_(keep, label_k)
        hole[rows, cols] |= new_hole
        taken[rows, cols] |= keep
    hole &= ~taken
    if bool(taken.numpy().any()):  # (numpy's any() on a bool tensor's memory: torch's is many times slower)
        _close_gaps(flow_coords, person, owner, taken, hole, source_labels, source_mask)
        _add_soft_edge(flow_coords, person, owner, taken, hole, transforms, t_geom, target, ratio, codes,
                       source_mask)
    if bool(hole.numpy().any()):
        hole &= _not_speck(hole, taken)
    hole_owner.masked_fill_(~hole, 0)
    depth = {PART_BY_NAME[n].label: MIRROR_DEPTH * g.radius for n, g in s_geom.items()}
    # A limb whose label covers little of its nominal region (a wrist found at the shoulder) has no texture
    # worth continuing: a few edge pixels, often the backdrop's colour. Its holes take the smooth fill.
    if key + ("counts",) not in cache:
        cache[key + ("counts",)] = torch.bincount(source_labels.flatten(), minlength=NUM_PART_LABELS).tolist()
    counts = cache[key + ("counts",)]
    for n, g in s_geom.items():
        if g.kind == "segment":
            area = np.pi * g.radius ** 2 + 2 * g.radius * float(np.linalg.norm(g.points[1] - g.points[0]))
            if counts[PART_BY_NAME[n].label] < HIDDEN_VISIBLE * area:
                depth.pop(PART_BY_NAME[n].label, None)
    # A limb left without texture (its label covers little of its region: an upper arm the torso hides in a
    # side view) takes its placeholder from the other bone of the same limb where that one has texture (the
    # same sleeve or trouser leg), rather than a smooth fill (a flat grey bar).
    swap = {k: other for upper, lower in _LIMB_PAIRS for k, other in ((upper, lower), (lower, upper))
            if k not in depth and other in depth}
    texture_owner = hole_owner
    if swap:
        lut = torch.arange(NUM_PART_LABELS)
        lut[list(swap)] = torch.tensor(list(swap.values()))
        texture_owner = lut[hole_owner]
    textured = hole_texture(flow_coords, texture_owner, source_labels, boxes, depth, cache, key)
    person = torch.where(hole, torch.ones_like(person), person)
    return PartFlow(flow_coords, person, hole, owner, textured, hole_owner)


_LIMB_PAIRS = tuple((PART_BY_NAME[f"{side}_{a}"].label, PART_BY_NAME[f"{side}_{b}"].label)
                    for side in ("right", "left") for a, b in (("upper_arm", "forearm"), ("thigh", "shin")))


# Left and right limbs of the same kind (both legs, both arms): where their regions overlap in the source the
# depth order's choice is arbitrary (legs side by side, neither hides the other), so the nearer bone decides.
_OPPOSITE = {}
for _side, _other in (("right_", "left_"), ("left_", "right_")):
    for _limbs in (("thigh", "shin"), ("upper_arm", "forearm")):
        for _a in _limbs:
            _OPPOSITE[_side + _a] = tuple(_other + _b for _b in _limbs)


def _limb_fields(s_geom, shape: tuple[int, int]) -> dict[str, tuple[int, int, torch.Tensor]]:
    """Normalised distance of every limb of :data:`_OPPOSITE` on its region's box of the source (``x0``,
    ``y0``, field): computed once for :func:`_split_opposite_overlaps` and :func:`_region_codes` (the overlap
    of two limbs' boxes lies inside both, and each pixel's value does not depend on the box)."""
    hs, ws = shape
    out = {}
    for name in _OPPOSITE:
        if name not in s_geom:
            continue
        g = s_geom[name]
        x0, y0 = max(int(np.floor(g.points[:, 0].min() - g.radius)), 0), max(int(np.floor(g.points[:, 1].min() - g.radius)), 0)
        x1 = min(int(np.ceil(g.points[:, 0].max() + g.radius)) + 1, ws)
        y1 = min(int(np.ceil(g.points[:, 1].max() + g.radius)) + 1, hs)
        if x0 >= x1 or y0 >= y1:
            continue
        out[name] = (x0, y0, grid_normalised_distance(g, slice(y0, y1), slice(x0, x1)))
    return out


def prepare_cache(source: Person, shape: tuple[int, int], cache: dict) -> None:
    """Put in ``cache`` (:func:`part_flow`'s, kept with the source) ahead of the first warp what needs neither
    a target nor the source's labels: the unmirrored source's :func:`_limb_fields` (prepare_source works
    them out while GrabCut runs)."""
    cache[("plain", "limb_fields")] = _limb_fields(part_geometry(source), shape)


def _field_on(fields, name: str, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    fx, fy, f = fields[name]
    return f[y0 - fy:y1 - fy, x0 - fx:x1 - fx]


def _split_opposite_overlaps(labels: torch.Tensor, s_geom, fields) -> torch.Tensor:
    """``labels`` with the pixels inside the regions of both a left and a right limb (:data:`_OPPOSITE`) given
    to the limb whose bone is nearer (in radii), instead of to the front-most in the depth order: for two legs
    side by side that choice is arbitrary, and it left the back leg with holes where its region overlaps the
    front one. Worked out only over each pair's overlapping region boxes; ``fields``: :func:`_limb_fields`."""
    out = None
    for a, others in _OPPOSITE.items():
        if a not in fields or not a.startswith("right_"):
            continue
        la = PART_BY_NAME[a].label
        for b in others:
            if b not in fields:
                continue
            lb = PART_BY_NAME[b].label
            (ax, ay, fa), (bx, by, fb) = fields[a], fields[b]
            x0, y0 = max(ax, bx), max(ay, by)  # the boxes' overlap (see _limb_fields)
            x1, y1 = min(ax + fa.shape[1], bx + fb.shape[1]), min(ay + fa.shape[0], by + fb.shape[0])
            if x0 >= x1 or y0 >= y1:
                continue
            sub = (out if out is not None else labels)[y0:y1, x0:x1]
            on = (sub == la) | (sub == lb)
            if not bool(on.numpy().any()):
                continue
            da, db = _field_on(fields, a, x0, y0, x1, y1), _field_on(fields, b, x0, y0, x1, y1)
            both = on & (da < 1) & (db < 1)
            if bool(both.numpy().any()):
                if out is None:
                    out = labels.clone()
                out[y0:y1, x0:x1] = torch.where(both, torch.where(da <= db, torch.tensor(la), torch.tensor(lb)), sub)
    return labels if out is None else out


_LABEL_BITS = 15  # region codes: the part label in the low 4 bits, then one flag per limb (_region_codes)
_LIMB_BIT = {name: 4 + i for i, name in enumerate(sorted(_OPPOSITE))}


def _region_codes(labels: torch.Tensor, fields) -> torch.Tensor:
    """Per source pixel, its label plus, in bit ``_LIMB_BIT[limb]``, whether it lies inside that limb's region
    (normalised distance < 1), for the pixels labelled as the opposite side's same limb: one nearest-sample
    of this map in :func:`part_flow` gives both the label and :func:`_on_opposite_limb`'s test. ``fields``:
    :func:`_limb_fields`."""
    codes = labels.clone()
    for name, bit in _LIMB_BIT.items():
        if name not in fields:
            continue
        x0, y0, f = fields[name]
        y1, x1 = y0 + f.shape[0], x0 + f.shape[1]
        sub = labels[y0:y1, x0:x1]
        on = torch.zeros(sub.shape, dtype=torch.bool)
        for o in _OPPOSITE[name]:
            on |= sub == PART_BY_NAME[o].label
        if not bool(on.numpy().any()):
            continue
        inside = on & (f < 1)
        codes[y0:y1, x0:x1] |= inside.long() << bit
    return codes.float()


def _on_opposite_limb(name: str, label: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Proposals inside the part's own source region that land on the opposite side's same limb (after
    :func:`_split_opposite_overlaps`, so nearer to that limb's bone): the other leg (arm) itself, not content
    of this one that it hides, so no hole (the part's nominal region is wider than the limb there).
    ``code``: the sampled :func:`_region_codes`."""
    if name not in _LIMB_BIT:
        return torch.zeros(label.shape, dtype=torch.bool)
    return ((code >> _LIMB_BIT[name]) & 1).bool()


def _end_at_body_scale(m: np.ndarray, r: torch.Tensor, name: str, target: Person, pxy: torch.Tensor,
                       ratio: float) -> torch.Tensor:
    """``r`` (the limb map ``m`` at ``pxy``) with the hand / foot past the end joint (``PART_EXTENSION``) moved
    along the bone by the body-scale ``ratio`` instead of the bone's own stretch: a foreshortened shin (a knee
    bent towards the camera) would otherwise stretch its foot by the same factor, off the source's foot, onto
    the floor or out of the image (a flat disc to fill). Continuous at the joint."""
    if name not in PART_EXTENSION:
        return r
    a, b = PART_BY_NAME[name].segment
    t_a, t_b = target.body[a, :2].astype(float), target.body[b, :2].astype(float)
    lt = float(np.linalg.norm(t_b - t_a))
    if lt < 1e-6:
        return r
    u = (t_b - t_a) / lt
    v = m[:, :2] @ u  # where the map sends the bone direction: along-bone stretch times the source direction
    along = float(np.linalg.norm(v))
    if along < 1e-6 or abs(ratio / along - 1) < 1e-6:
        return r
    past = ((pxy[0] - float(t_b[0])) * float(u[0]) + (pxy[1] - float(t_b[1])) * float(u[1])).clamp_min(0)
    k = ratio / along - 1
    return torch.stack((r[0] + k * float(v[0]) * past, r[1] + k * float(v[1]) * past))


def _nearest_own(lab: np.ndarray, k: int, cache: dict | None, key: tuple, box, reach: float):
    """For label ``k``: on a window of the source (the label's ``box`` grown by ``reach`` px, beyond which no
    proposal takes texture), per pixel the index (from 1) of the nearest pixel inside the label's region (its
    pixels at least 2 px from its edge, where the edge mixes in the backdrop's colour, when there are such),
    those pixels' x and y, and the window (r0, c0, r1, c1); None when the label has no pixel. Kept in
    ``cache`` (once per source). The window keeps the distance transform to the part's size: on the whole
    canvas one per label cost more than the rest of the warp's hole handling."""
    m = int(np.ceil(reach)) + 3
    hs, ws = lab.shape
    r0, r1 = max(int(np.floor(box[1])) - m, 0), min(int(np.ceil(box[3])) + m + 1, hs)
    c0, c1 = max(int(np.floor(box[0])) - m, 0), min(int(np.ceil(box[2])) + m + 1, ws)
    ck = key + ("nearest", k, r0, c0, r1, c1)
    if cache is not None and ck in cache:
        return cache[ck]
    own = lab[r0:r1, c0:c1] == k
    out = None
    if own.any():
        inner = cv2.erode(own.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if inner.any():
            own = inner
        _, index = cv2.distanceTransformWithLabels((~own).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
        oy, ox = np.nonzero(own)  # index i (from 1) is the i-th own pixel in row-major order
        out = (index, ox + c0, oy + r0, (r0, c0, r1, c1))
    if cache is not None:
        cache[ck] = out
    return out


def hole_texture(coords: torch.Tensor, hole_owner: torch.Tensor, labels: torch.Tensor,
                 boxes: dict[int, tuple[float, float, float, float]], depth: dict[int, float],
                 cache: dict | None = None, key: tuple = ()) -> torch.Tensor:
    """Point every hole (``hole_owner`` > 0, the label of the part the hole belongs to) whose proposal
    ``coords`` lands off its own part in the source at texture of that part, in place; returns the holes so
    pointed (bool ``(H, W)``).

    Chosen: the proposal mirrored (at most ``depth[label]`` px deep) about the nearest source pixel carrying
    the part's own label, at least 2 px inside its region (an exact distance transform with nearest-pixel
    indices on the source's label map, one per label, kept in ``cache`` under ``key`` so it is computed once
    per source), or that pixel itself where the mirror image falls off the part. Labels without a ``depth``,
    and proposals farther than ``TEXTURE_REACH`` part radii from their part's pixels, are left to the smooth
    fill. A torso seen behind an arm continues the torso's own
    cloth next to the arm, as a reflection (like symmetric padding), not as one flat colour (what a smooth
    fill of the surrounding colours gives: flat discs and bars) nor as streaks (what the nearest pixel alone
    gives, constant along each line to the boundary). The holes stay content to generate: this only makes
    the placeholder a plausible start for a later inpainting stage. A part with no labelled pixel at all is
    left to the smooth fill."""
    textured = torch.zeros(hole_owner.shape, dtype=torch.bool)
    if not bool((hole_owner > 0).numpy().any()):
        return textured
    lab = labels.numpy()
    hs, ws = lab.shape
    all_ys, all_xs = torch.nonzero(hole_owner, as_tuple=True)
    all_k = hole_owner[all_ys, all_xs]
    for k in np.unique(all_k.numpy()).tolist():
        if k not in boxes or k not in depth:  # (no depth: the caller found no texture worth continuing)
            continue
        sel = all_k == k
        ys, xs = all_ys[sel], all_xs[sel]
        p = coords[:, ys, xs].numpy().astype(np.float64)
        px, py = np.clip(p[0], 0, ws - 1), np.clip(p[1], 0, hs - 1)
        reach = TEXTURE_REACH * depth[k] / MIRROR_DEPTH
        nearest = _nearest_own(lab, k, cache, key, boxes[k], reach)
        if nearest is None:
            continue
        index, ox, oy, (r0, c0, r1, c1) = nearest
        ix, iy = np.rint(px).astype(int), np.rint(py).astype(int)
        inside = (iy >= r0) & (iy < r1) & (ix >= c0) & (ix < c1)  # outside the window: beyond the reach
        i = np.zeros(len(ix), np.int64)
        i[inside] = index[iy[inside] - r0, ix[inside] - c0] - 1
        qx, qy = ox[i], oy[i]
        # A proposal far from every pixel of its part (a guessed map pointing off the limb) has no texture
        # of its own nearby: left to the smooth fill.
        near = inside & (np.hypot(qx - px, qy - py) <= reach)
        ys, xs, px, py, qx, qy = ys[near], xs[near], px[near], py[near], qx[near], qy[near]
        # Mirrored no deeper than ``depth`` into the part: deeper lies other material (a bodysuit inside a coat).
        dx, dy = qx - px, qy - py
        f = np.minimum(1.0, depth.get(k, np.inf) / np.maximum(np.hypot(dx, dy), 1e-6))
        mx, my = qx + f * dx, qy + f * dy
        mxi, myi = np.rint(mx).astype(int), np.rint(my).astype(int)
        on = (mxi >= 0) & (mxi < ws) & (myi >= 0) & (myi < hs)
        on[on] = lab[myi[on], mxi[on]] == k
        tx, ty = np.where(on, mx, qx), np.where(on, my, qy)
        coords[0, ys, xs] = torch.from_numpy(tx.astype(np.float32))
        coords[1, ys, xs] = torch.from_numpy(ty.astype(np.float32))
        textured[ys, xs] = True
    return textured


def _close_gaps(coords, person, owner, taken, hole, source_labels, source_mask, k: int = GAP):
    """Fill, in place, the narrow gaps no part keeps between kept pixels: where two parts' maps meet along
    loose clothes (a coat panel between thigh and torso) each keeps only the pixels landing on its own
    label, which leaves comb-like teeth along the seam. A gap pixel (inside the ``k x k`` closing of the
    kept pixels) takes the mean displacement of its kept neighbours when that lands on the person."""
    t_np = taken.numpy()  # (numpy's any() on a bool tensor's memory: torch's is many times slower)
    rows, cols = np.flatnonzero(t_np.any(1)), np.flatnonzero(t_np.any(0))
    r0, r1 = max(int(rows[0]) - k, 0), int(rows[-1]) + k + 1
    c0, c1 = max(int(cols[0]) - k, 0), int(cols[-1]) + k + 1
    win = (slice(r0, r1), slice(c0, c1))
    t = taken[win].numpy().astype(np.uint8)
    kernel = np.ones((k, k), np.uint8)
    gap = torch.from_numpy(cv2.morphologyEx(t, cv2.MORPH_CLOSE, kernel) > 0) & ~taken[win] & ~hole[win]
    if not bool(gap.numpy().any()):
        return
    # Average the displacement, not the position: a pixel among neighbours that do not move stays put.
    # Only the (few) gap pixels are sampled.
    tf = t.astype(np.float32)
    ys, xs = np.nonzero(gap.numpy())
    wsum = cv2.boxFilter(tf, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)[ys, xs]
    xy = np.stack([xs + c0, ys + r0]).astype(np.float32)
    c = coords[:, win[0], win[1]].numpy()
    disp = (c[0] - np.arange(c0, c0 + t.shape[1], dtype=np.float32)[None, :],
            c[1] - np.arange(r0, r0 + t.shape[0], dtype=np.float32)[:, None])
    shift = np.stack([cv2.boxFilter(d * tf, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)[ys, xs]
                      for d in disp])
    mean = torch.from_numpy(xy + shift / np.maximum(wsum, 1e-6))[:, None, :]  # (2, 1, n)
    label = _sample(source_labels, mean, "nearest").round().long()[0]
    fill = label > 0
    ys, xs, mean = ys[fill.numpy()] + r0, xs[fill.numpy()] + c0, mean[:, 0, fill]
    coords[:, ys, xs] = mean
    person[ys, xs] = _sample(source_mask, mean[:, None, :], "bilinear")[0]
    owner[ys, xs] = label[fill]
    taken[ys, xs] = True


def _not_speck(hole: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """False at hole pixels with fewer than 3 of their 8 neighbours in the person (kept or hole): single
    pixels where a part's core proposal happened to land on another label among pixels nobody keeps. Shown
    with their part's texture they would be specks on the background; they are background."""
    rows, cols = (np.flatnonzero(hole.numpy().any(d)) for d in (1, 0))
    r0, r1 = max(int(rows[0]) - 1, 0), int(rows[-1]) + 2
    c0, c1 = max(int(cols[0]) - 1, 0), int(cols[-1]) + 2
    body = (hole | taken)[r0:r1, c0:c1].numpy().astype(np.float32)
    n = cv2.boxFilter(body, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT) - body
    out = torch.ones(hole.shape, dtype=torch.bool)
    out[r0:r1, c0:c1] = torch.from_numpy(n >= 3)
    return out


FRINGE = 2  # px: how far past the kept pixels a part's soft silhouette edge reaches (_add_soft_edge)
_NAME_OF_LABEL = {p.label: p.name for p in PART_BY_NAME.values()}


def _add_soft_edge(coords, person, owner, taken, hole, transforms, t_geom, target, ratio, codes, source_mask):
    """Give, in place, the pixels within ``FRINGE`` px of the kept ones that no part keeps the soft edge of a
    neighbouring kept part (the highest label among them): where that part's map lands on the source's
    background (label 0) but on the soft edge of the person mask, the pixel takes that part's flow and the
    mask's soft value as alpha. The nearest-label keep test cuts the mask's anti-aliased edge off as a hard
    step at 0.5; a magnified part then shows the source's pixel grid as stair-steps along its edge (about
    1 px at 1.6x). Only pixels no part keeps are used, so an arm's soft edge never hides the torso behind
    it. One dilation for all parts; the maps are evaluated at the (few) edge pixels only."""
    t_np = taken.numpy()  # (numpy's any() on a bool tensor's memory: torch's is many times slower)
    rows, cols = np.flatnonzero(t_np.any(1)), np.flatnonzero(t_np.any(0))
    h, w = taken.shape
    r0, r1 = max(int(rows[0]) - FRINGE, 0), min(int(rows[-1]) + FRINGE + 1, h)
    c0, c1 = max(int(cols[0]) - FRINGE, 0), min(int(cols[-1]) + FRINGE + 1, w)
    t = taken[r0:r1, c0:c1].numpy()
    k = 2 * FRINGE + 1
    near = cv2.dilate(owner[r0:r1, c0:c1].numpy().astype(np.uint8) * t, np.ones((k, k), np.uint8))
    ys, xs = np.nonzero((near > 0) & ~t & ~hole[r0:r1, c0:c1].numpy())
    if not len(ys):
        return
    part_of = near[ys, xs]
    hs, ws = codes.shape
    groups, maps = [], []
    for label_k in np.unique(part_of).tolist():
        name = _NAME_OF_LABEL.get(label_k)
        m = transforms.get(name)
        if m is None or name not in t_geom:
            continue
        sel = part_of == label_k
        py, px = ys[sel] + r0, xs[sel] + c0
        pts = torch.from_numpy(np.stack([px, py]).astype(np.float32))[:, None, :]
        # The part's own map, not its blend into the parent's at the joint: a one- or two-pixel soft edge
        # differs by a fraction of a pixel there, and the blend costs more than the rest of this pass.
        maps.append(_end_at_body_scale(m, _affine(m, pts), name, target, pts, ratio))
        groups.append((label_k, py, px))
    if not maps:
        return
    r = torch.cat(maps, dim=2)  # all parts' edge pixels sampled at once
    label = _sample(codes, r, "nearest").round().long()[0] & _LABEL_BITS
    alpha = _sample(source_mask, r, "bilinear")[0]
    inside = ((r[0] >= -0.5) & (r[0] <= ws - 0.5) & (r[1] >= -0.5) & (r[1] <= hs - 0.5))[0]
    ok = (label == 0) & inside & (alpha > 0)
    py = torch.from_numpy(np.concatenate([g[1] for g in groups]))
    px = torch.from_numpy(np.concatenate([g[2] for g in groups]))
    lab = torch.from_numpy(np.concatenate([np.full(len(g[1]), g[0]) for g in groups]))
    coords[:, py[ok], px[ok]] = r[:, 0, ok]
    person[py[ok], px[ok]] = alpha[ok]
    owner[py[ok], px[ok]] = lab[ok]


def _affine(m: np.ndarray, xy: torch.Tensor) -> torch.Tensor:
    """``m`` (2, 3) applied to grid points ``xy`` (2, h, w)."""
    x, y = xy[0], xy[1]
    return torch.stack((float(m[0, 0]) * x + float(m[0, 1]) * y + float(m[0, 2]),
                        float(m[1, 0]) * x + float(m[1, 1]) * y + float(m[1, 2])))


def _core(geom, box, rows: slice, cols: slice) -> torch.Tensor:
    """``normalised_distance < 1`` on the pixel grid's window ``rows, cols``, computed only inside the part's
    own ``box`` (it is False outside it), with the per-row and per-column terms once
    (:func:`~..body.part_fields.grid_normalised_distance`: the same values)."""
    core = torch.zeros(rows.stop - rows.start, cols.stop - cols.start, dtype=torch.bool)
    y0, y1 = max(int(np.floor(box[1])), rows.start), min(int(np.ceil(box[3])) + 1, rows.stop)
    x0, x1 = max(int(np.floor(box[0])), cols.start), min(int(np.ceil(box[2])) + 1, cols.stop)
    if y0 < y1 and x0 < x1:
        core[y0 - rows.start:y1 - rows.start, x0 - cols.start:x1 - cols.start] = \
            grid_normalised_distance(geom, slice(y0, y1), slice(x0, x1)) < 1.0
    return core


def _polar(lin: np.ndarray) -> tuple[float, np.ndarray]:
    """``lin = R(angle) @ S`` with S symmetric positive (2-D polar decomposition)."""
    angle = float(np.arctan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))
    c, s = np.cos(angle), np.sin(angle)
    return angle, np.array([[c, s], [-s, c]]) @ lin


def _blend_at_joint(parent: np.ndarray, child: np.ndarray, geom, xy: torch.Tensor) -> torch.Tensor:
    """Source positions of a child part whose map fades into its parent's near their shared joint.

    Along the child's bone, from the joint (its first point) over ``BLEND`` part radii, the weight goes 0 -> 1
    (smoothstep). The maps are blended about the joint as rotation angle and stretch separately (2-D polar
    decomposition), not as raw coordinates: a linear blend of two rotations folds a bent elbow or knee
    into thin stretched streaks, an angle blend does not.
    """
    a, b = geom.points
    u = (b - a) / max(np.linalg.norm(b - a), 1e-6)
    dx, dy = xy[0] - float(a[0]), xy[1] - float(a[1])
    wgt = _smoothstep((dx * float(u[0]) + dy * float(u[1])) / max(BLEND * geom.radius, 1e-6))
    ang_p, s_p = _polar(parent[:, :2])
    ang_c, s_c = _polar(child[:, :2])
    dang = (ang_c - ang_p + np.pi) % (2 * np.pi) - np.pi
    q_p, q_c = parent[:, :2] @ a + parent[:, 2], child[:, :2] @ a + child[:, 2]  # where each sends the joint
    ang = ang_p + wgt * dang
    cos, sin = torch.cos(ang), torch.sin(ang)
    rest = 1 - wgt  # (once: the same values as 1 - wgt in every term)
    s = [[rest * float(s_p[i, j]) + wgt * float(s_c[i, j]) for j in range(2)] for i in range(2)]
    sx = s[0][0] * dx + s[0][1] * dy  # stretch, then rotate
    sy = s[1][0] * dx + s[1][1] * dy
    qx = rest * float(q_p[0]) + wgt * float(q_c[0])
    qy = rest * float(q_p[1]) + wgt * float(q_c[1])
    return torch.stack((qx + cos * sx - sin * sy, qy + sin * sx + cos * sy))


def _neighbours(name: str) -> list[tuple[str, int]]:
    """Parts sharing a joint with ``name``: its parent and its children, with the shared joint."""
    out = []
    if name in PART_PARENT:
        out.append(PART_PARENT[name])
    out += [(child, joint) for child, (parent, joint) in PART_PARENT.items() if parent == name]
    return out
