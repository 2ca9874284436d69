"""FlowWarp: move a photographed person into a target pose by warping pixels along a dense flow.

``method="parts"`` is training-free (:mod:`.part_warp`); a learned estimator (any object with the
:class:`FlowEstimator` interface) can supply the flow instead. Either way the result is composited over
the source background:

* ``background="inpaint"`` removes the source person (its mask dilated) and fills the area it leaves
  (``fill`` method; ``"mirror"``, the default, continues the backdrop's own texture into it, see
  :func:`.hole_fill.mirror_fill`), so the person does not appear twice; ``"keep"`` leaves the source photo as it is
  behind the moved person; ``"black"`` / ``"white"`` give a cut-out on a plain background.
* The output canvas is the target pose's. When it differs from the source image's, the background is
  scaled uniformly to cover it (centred, cropped).
* Visibility is 1 where the output shows real source content, 0 where content had to be made up (holes
  inside the person that the source hides, and background the source person covered). It is binary:
  ``1 - visibility`` (:attr:`FlowWarpResult.generate_mask`) is the mask a later inpainting or diffusion stage
  should repaint.
* A photo whose larger side is below ``SUPERSAMPLE_BELOW`` px (a pedestrian crop) is worked on at twice its
  size (method ``"parts"``); every result comes back at the photo's size (:func:`prepare_source`,
  :func:`_downsampled`).

Every door (Python, the CLI's ``transfer``, the FlowWarp node) goes through :func:`iter_flow_warp` with one
:class:`FlowWarpOptions` vocabulary and one set of defaults, and takes the generate mask and the flow picture
from :class:`FlowWarpResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..flow import base_coords, coords_to_flow, coords_to_grid, flow_to_color, warp
from ..pose.geometry import fit_source_pose, resize
from .hole_fill import INPAINT_METHODS, context_box, fill_holes
from ..pose.keypoints import Person, Pose, check_canvas_size, check_has_pose, check_joints
from .part_warp import hidden_parts, label_boxes, part_flow, prepare_cache
from ..body.parts import DEFAULT_DEPTH_ORDER
from ..pose.retarget import ANCHORS, retarget_pose
from ..body.segmentation import SEGMENTATION_METHODS, part_distance_fields, part_label_map, person_mask
from ..body.views import side_view_depth_order, uncross_legs

BACKGROUNDS = ("inpaint", "keep", "black", "white")
# parts: training-free; single: the learned single-spatial-transformation flow model; structure: the learned
# structure-aware part-flow model (core.flow_models). The same names in Python, the CLI and the node.
METHODS = ("parts", "single", "structure")
LEARNED_METHODS = METHODS[1:]
# A photo whose larger side is below this many px (a pedestrian crop) is worked on at twice its size, the
# results brought back by averaging (method "parts"; see prepare_source).
SUPERSAMPLE_BELOW = 256
METHOD_MODELS = {"single": "single-spatial-transformation", "structure": "structure-aware part-flow"}


class FlowEstimator(Protocol):
    """A learned flow model usable by FlowWarp.

    ``estimate(source (1, 3, Hs, Ws) in 0..1, source_pose, target_pose) -> (flow (1, 2, H, W),
    visibility (1, 1, H, W))`` on the target canvas ``H x W``, flow in the project's convention
    (:mod:`..flow`).
    """

    def estimate(self, source: torch.Tensor, source_pose: Pose, target_pose: Pose
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


def flow_model_method(estimator) -> str | None:
    """The FlowWarp method a learned flow model is (``"single"`` / ``"structure"``, its ``flowwarp_method``
    attribute), or None when it does not say."""
    method = getattr(estimator, "flowwarp_method", None)
    return method if method in LEARNED_METHODS else None


def check_flow_model(method: str, estimator, what: str = "estimator") -> None:
    """The flow model fits ``method``: none for ``parts``; one with ``estimate`` for ``single`` / ``structure``,
    of that kind when it says its kind. ``what`` names the input in the message (``flow_model``, ``--model``)."""
    if method == "parts":
        if estimator is not None:
            kind = flow_model_method(estimator)
            use = f"method {kind!r} with this one" if kind else "method 'single' or 'structure' with a learned one"
            raise ValueError(f"{what}: method 'parts' is training-free and takes no flow model; use {use}")
        return
    if estimator is None:
        raise ValueError(f"{what}: method {method!r} needs a trained {METHOD_MODELS[method]} model; give one, "
                         f"or use method 'parts' (no model needed)")
    if not callable(getattr(estimator, "estimate", None)):
        raise ValueError(f"{what}: expected a flow model with an estimate(source, source_pose, target_pose) method, "
                         f"got {type(estimator).__name__}")
    kind = flow_model_method(estimator)
    if kind is not None and kind != method:
        raise ValueError(f"{what}: holds a {METHOD_MODELS[kind]} model, not a {METHOD_MODELS[method]} one; use "
                         f"method {kind!r} with it")


@dataclass(frozen=True)
class FlowWarpOptions:
    """FlowWarp's settings, the same in Python, the CLI and the node (frozen: one instance serves as the shared
    default).

    ``method``: :data:`METHODS`. ``fill``: how the area the source person leaves is filled (and the person's
    holes that no part's texture covers; with ``"mirror"``, a backdrop fill, those take ``"pyramid"``).
    ``retarget`` is on by default: the usual call moves a person into someone
    else's pose (an artist's arbitrary target, another body, another canvas); without retargeting the
    person would take that body's bone lengths and its place on its canvas. Turn it off for dataset pose pairs
    (the target is the ground-truth pose of the same person, on the same canvas, and the result is scored
    against the ground-truth photo: the pose must be used exactly as given). With retarget on, the output has
    the source photo's canvas; off, the target pose's.
    """

    method: str = "parts"
    segmentation: str = "grabcut"
    background: str = "inpaint"
    fill: str = "mirror"
    retarget: bool = True
    anchor: str = "source"
    source_person: int = 0
    target_person: int = 0
    depth_order: tuple[str, ...] = DEFAULT_DEPTH_ORDER

    def __post_init__(self):
        if self.method == "model":  # the name before single / structure
            raise ValueError("method: 'model' is now named by the flow model's kind: 'single' (single spatial "
                             "transformation) or 'structure' (structure-aware part flow)")
        for name, allowed in (("method", METHODS), ("segmentation", SEGMENTATION_METHODS),
                              ("background", BACKGROUNDS), ("fill", INPAINT_METHODS), ("anchor", ANCHORS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("source_person", "target_person"):  # -1 must not silently pick the last person
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: expected a person index 0 or more (0 = first person), got {value!r}")


@dataclass
class PreparedSource:
    """Everything about one source photo that does not depend on the target (reused across targets)."""

    image: torch.Tensor       # (3, H, W) 0..1
    pose: Pose
    person: Person
    mask: torch.Tensor        # (H, W) soft person mask
    labels: torch.Tensor      # (H, W) part labels
    background: torch.Tensor  # (3, H, W)
    background_real: torch.Tensor  # (H, W) 1 where the background is the photo's, 0 where it was filled
    boxes: dict = field(default_factory=dict)  # bounding box of each part label (part_flow.label_boxes)
    hidden: frozenset = frozenset()  # far-side limbs a side view hides (part_flow.hidden_parts)
    device: torch.device = torch.device("cpu")  # where the input image was: the results go back there
    # What part_flow derives from the source alone (split labels, distance transforms), filled by the first warp
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    scale: int = 1  # the working scale: every field above is at this many times the photo's size
    photo: torch.Tensor | None = None  # (3, h, w) the photo itself when the scale is not 1


@dataclass
class FlowWarpResult:
    """One output frame of FlowWarp, on the target canvas."""

    image: torch.Tensor       # (3, H, W) 0..1
    flow: torch.Tensor        # (2, H, W) backward flow, source pixels
    visibility: torch.Tensor  # (H, W) 1 = real source content, 0 = made up (binary)
    person: torch.Tensor      # (H, W) soft person mask on the output
    target_pose: Pose | None = None  # the pose actually used (after retargeting)

    @property
    def generate_mask(self) -> torch.Tensor:
        """``(H, W)`` float 0..1: ``1 - visibility``, 1 where content was made up (what an inpainting stage
        repaints), 0 where the pixels are the photo's."""
        return (1 - self.visibility.detach().float()).clamp(0, 1)

    @property
    def flow_image(self) -> torch.Tensor:
        """``(3, H, W)`` in 0..1: the flow's colour picture (:func:`..flow.flow_to_color`: white = stayed put,
        hue = direction, saturation = distance, scaled to the frame's largest move)."""
        return flow_to_color(self.flow.detach().float()[None])[0]


def _check_image(image, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"{what}: expected an RGB image array (H, W, 3) in 0..1, got {shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{what}: image contains NaN or infinite values")
    return image.astype(np.float32, copy=False)


def prepare_source(image: np.ndarray, pose: Pose, options: FlowWarpOptions = FlowWarpOptions(),
                   what: str = "source") -> PreparedSource:
    """Segment the source person, label its parts and build the background (see module doc)."""
    device = image.device if isinstance(image, torch.Tensor) else torch.device("cpu")
    image = _check_image(image, f"{what} image")
    h, w = image.shape[:2]
    check_canvas_size(w, h, f"{what} image")
    if (pose.height, pose.width) != (h, w):
        raise ValueError(f"{what} pose: canvas {pose.width}x{pose.height} does not match the {what} image "
                         f"{w}x{h}; the pose must be detected on this image (or resized with it)")
    # Small photos (pedestrian crops of 64-128 px) are worked on at twice their size: the segmentation's and
    # the part maps' pixel-sized steps (GrabCut's pixels, 3x3 openings, nearest labels, a 1 px feather) are
    # coarse there next to a limb a few pixels wide. On the real video frames resized to 128 / 64 px high
    # (benchmarks/compare_video.py --height) this took the person-masked SSIM over all pairs from 0.220 to
    # 0.233 and 0.279 to 0.299. The results are brought back by averaging each 2x2 block (warp_prepared).
    scale = 2 if max(h, w) < SUPERSAMPLE_BELOW and options.method == "parts" else 1
    photo = None
    if scale > 1:
        photo = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (pixels that stay put are given back)
        h, w = h * scale, w * scale
        image, pose = resize(image, pose, w, h, "bilinear")
    person = uncross_legs(pose.person(options.source_person, f"{what} pose"))
    fields = part_distance_fields(person, (h, w))
    if not fields:
        raise ValueError(f"{what} pose: too few joints to locate any body part (need e.g. neck and a hip, "
                         f"or both ends of a limb)")
    cache, made = {}, {}

    def meanwhile():  # what needs no mask, worked out while GrabCut runs in its own thread
        made["img"] = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        prepare_cache(person, (h, w), cache)

    mask = torch.from_numpy(person_mask(image, person, options.segmentation, fields, meanwhile))
    img = made["img"]
    labels = part_label_map(fields, mask, side_view_depth_order(person, options.depth_order))
    if options.background == "inpaint":
        # Fill from colours well away from the silhouette (segmentation edges are not exact), but keep the
        # photo wherever the mask says background, so an unmoved person gives back the photo exactly.
        k = max(3, int(round(0.04 * max(h, w)))) | 1
        remove = cv2.dilate((mask.numpy() > 0.1).astype(np.uint8), np.ones((k, k), np.uint8))
        filled = fill_holes(img[None], torch.from_numpy(remove.astype(np.float32))[None, None], options.fill)[0]
        real = (mask <= 0.5).float()  # the complement of part_label_map's person (mask > 0.5)
        # The silhouette's soft edge outside the person (0 < mask <= 0.5) still carries the person's colours:
        # a ghost outline once the person moves away. Show the fill there too; it still counts as real.
        edge = cv2.dilate((mask.numpy() > 0.02).astype(np.uint8), np.ones((5, 5), np.uint8))
        keep = real * (1 - torch.from_numpy(edge.astype(np.float32)))
        background = keep * img + (1 - keep) * filled
    else:
        value = {"keep": None, "black": 0.0, "white": 1.0}[options.background]
        background = img.clone() if value is None else torch.full_like(img, value)
        real = torch.ones(h, w)
    return PreparedSource(img, pose, person, mask, labels, background, real, label_boxes(labels),
                          hidden_parts(person, labels), device, cache, scale, photo)


def _downsampled(result: "FlowWarpResult", scale: int, target_pose: Pose, photo: torch.Tensor,
                 enlarged: torch.Tensor) -> "FlowWarpResult":
    """A result worked out at ``scale`` times the canvas brought back to it: the image and the person mask
    averaged over each ``scale x scale`` block, the flow too (as source positions, then in the photo's
    pixels), a pixel real only where its whole block is (what is partly made up is to generate). A real
    pixel whose whole block stayed put and shows the ``enlarged`` photo unchanged (the same pose, the
    backdrop kept on the same canvas; not a black or white backdrop, not a fill) is the ``photo``'s own
    pixel, not its enlarged-and-averaged copy (a slight blur)."""
    def pool(x):
        return F.avg_pool2d(x[None], scale)[0]

    h, w = result.image.shape[-2] // scale, result.image.shape[-1] // scale
    base = base_coords(h * scale, w * scale)[0].to(result.flow)
    coords = (pool(result.flow + base) + 0.5) / scale - 0.5
    flow = coords - base_coords(h, w)[0].to(coords)
    visibility = -F.max_pool2d(-result.visibility[None, None], scale)[0, 0]
    image = pool(result.image)
    if photo.shape[-2:] == image.shape[-2:]:
        change = torch.maximum(result.flow.abs().amax(0), (result.image - enlarged.to(result.image)).abs().amax(0))
        still = (F.max_pool2d(change[None, None], scale)[0, 0] < 1e-4) & (visibility > 0.5)
        image = torch.where(still, photo.to(image), image)
    used = target_pose if result.target_pose is None else resize(None, result.target_pose, w, h)[1]
    return FlowWarpResult(image, flow, visibility, pool(result.person[None])[0], used)


def _cover_coords(target_size: tuple[int, int], source_size: tuple[int, int]) -> torch.Tensor:
    """Source positions of a uniform, centred 'cover' fit of the source canvas onto the target canvas."""
    (ht, wt), (hs, ws) = target_size, source_size
    s = max(ht / hs, wt / ws)
    ox, oy = (wt - s * ws) / 2, (ht - s * hs) / 2
    # x depends on the column only, y on the row only: computed once per column / row (the same values).
    x = (torch.arange(wt, dtype=torch.float32) + 0.5 - ox) / s - 0.5
    y = (torch.arange(ht, dtype=torch.float32) + 0.5 - oy) / s - 0.5
    return torch.stack((x[None, :].expand(ht, wt), y[:, None].expand(ht, wt)))


def _sample(map_: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    return warp(map_[None], coords_to_flow(coords[None]))[0]


def warp_prepared(source: PreparedSource, target_pose: Pose, options: FlowWarpOptions = FlowWarpOptions(),
                  estimator: FlowEstimator | None = None, what: str = "target pose") -> FlowWarpResult:
    """Warp a prepared source into ``target_pose`` (on its canvas, or the source's when retargeting)."""
    if source.scale > 1:  # worked on at the source's working scale, brought back to the target's canvas
        k = source.scale
        width, height = target_pose.width * k, target_pose.height * k
        check_canvas_size(width, height, f"{what} (its canvas worked on at {k}x, the source photo being smaller "
                                         f"than {SUPERSAMPLE_BELOW} px)")
        result = _warp_prepared(source, resize(None, target_pose, width, height)[1], options, estimator, what)
        return _downsampled(result, source.scale, target_pose, source.photo, source.image)
    return _warp_prepared(source, target_pose, options, estimator, what)


def _warp_prepared(source: PreparedSource, target_pose: Pose, options: FlowWarpOptions,
                   estimator: FlowEstimator | None, what: str) -> FlowWarpResult:
    if options.retarget:
        target_pose = retarget_pose(source.pose, target_pose, anchor=options.anchor,
                                    source_index=options.source_person, target_index=options.target_person)
        target = target_pose.person(0, what)
    else:
        target = target_pose.person(options.target_person, what)
    target = uncross_legs(target)
    size = (target_pose.height, target_pose.width)
    hs, ws = source.mask.shape
    bg_coords = _cover_coords(size, (hs, ws))
    if size == (hs, ws):  # same canvas: the cover fit is the identity, no resampling needed
        bg, bg_real = source.background, source.background_real
    else:
        bg = _sample(source.background, bg_coords)
        bg_real = _sample(source.background_real[None], bg_coords)[0]

    if options.method in LEARNED_METHODS:
        if estimator is None:
            raise ValueError(f"estimator: method {options.method!r} needs a flow model; give one or use 'parts'")
        flow, vis = estimator.estimate(source.image[None], source.pose, target_pose)
        flow, vis = flow.to(torch.float32).cpu(), vis.to(torch.float32).cpu()
        # Composited like the parts method: the model's flow moves the source person (its mask, sampled
        # along the flow, is the output person), the model's visibility says where that content is real.
        coords = (flow + base_coords(*size))[0]
        on_person = _sample(source.mask[None], coords)[0]
        seen = vis[0, 0] > 0.5
        hole = (on_person > 0.5) & ~seen
        alpha = torch.where(seen, on_person, hole.float())
        coords = torch.where((alpha > 0)[None], coords, bg_coords)
        return _composite(source, coords, alpha, hole, hole, bg, bg_real, options, target_pose)

    pf = part_flow(source.person, source.labels, source.mask, target, size, options.depth_order, source.boxes,
                   source.hidden, source.cache)
    body = (pf.person > 0) | pf.hole
    if not bool(body.numpy().any()):  # else a picture with the person erased, silently
        shown = (size[0] // source.scale, size[1] // source.scale)  # the canvas as the caller gave it
        raise ValueError(f"{what}: no body part of the person could be placed on the {shown[1]}x{shown[0]} canvas "
                         f"(it needs both ends of a limb, the torso's or a face joint, on or near the canvas, "
                         f"that the source pose also has)")
    coords = torch.where(body, pf.coords, bg_coords)
    return _composite(source, coords, pf.person, pf.hole, pf.hole | (pf.owner == 0), bg, bg_real, options,
                      target_pose, pf.textured)


def _composite(source: PreparedSource, coords: torch.Tensor, alpha: torch.Tensor, hole: torch.Tensor,
               unknown: torch.Tensor, bg: torch.Tensor, bg_real: torch.Tensor, options: FlowWarpOptions,
               target_pose: Pose, textured: torch.Tensor | None = None) -> FlowWarpResult:
    """The moved person (source pixels at ``coords``, soft ``alpha``) over the background. ``hole`` person
    pixels (content to generate) show a placeholder: the ``textured`` ones the source texture of their own
    part that ``coords`` points at (:func:`.part_warp.hole_texture`), the others a smooth fill of the visible
    person around them (``unknown`` = not a colour to fill from)."""
    xy = base_coords(*alpha.shape)
    flow = coords[None] - xy  # coords_to_flow
    # The source is sampled only on the box of the person (alpha > 0, holes) and the feathered edge around
    # it: elsewhere alpha is 0 (the output is the background) and the hole fill takes no colour from it
    # (known is 0 there), so person_img holds zeros outside the box. Sampled as flow.warp does (from
    # flow + pixel position: the same positions to the last bit).
    box = _support_box(alpha, hole)
    if box is None or box == (slice(None), slice(None)):
        person_img = warp(source.image[None], flow)[0]
    else:
        rows, cols = box
        person_img = torch.zeros((source.image.shape[0], *alpha.shape), dtype=source.image.dtype)
        grid = coords_to_grid(flow[:, :, rows, cols] + xy[:, :, rows, cols], tuple(source.image.shape[-2:]))
        person_img[:, rows, cols] = F.grid_sample(source.image[None], grid, mode="bilinear", padding_mode="border",
                                                  align_corners=False)[0]
    flat = hole if textured is None else hole & ~textured
    known = (~unknown & (alpha > 0.5)).float()
    if bool(flat.numpy().any()):
        # Filled within the box of the flat holes grown by their own size (context_box): the fill only needs
        # the colours around them, and most holes are textured (whole-person boxes cost ~10 ms).
        rows, cols = context_box(flat.numpy())
        if not bool(known[rows, cols].numpy().any()):  # no colour nearby: the whole person's box
            rows, cols = _box_slices(flat | (known > 0), margin=8)
        # Only the flat holes are read: the finest level of the fill is worked out on their box alone.
        # The mirror fill is for backdrops: across a limb's hole it would mirror another part's pixels.
        hole_fill = "pyramid" if options.fill == "mirror" else options.fill
        needed = _box_slices(flat[rows, cols], margin=0)
        filled = fill_holes(person_img[None, :, rows, cols], (1 - known[rows, cols])[None, None], hole_fill,
                            needed)[0]
        person_img[:, rows, cols] = torch.where(flat[rows, cols], filled, person_img[:, rows, cols])
    # Content to generate: holes in the person, and background the source person hid that the moved
    # person does not cover. Binary, as inpainting stages expect.
    generate = hole | ((alpha < 0.5) & (bg_real < 0.5))
    alpha = _feather(alpha, box)
    image = alpha * person_img + (1 - alpha) * bg
    visibility = (~generate).float()
    d = source.device
    return FlowWarpResult(image.clamp(0, 1).to(d), flow[0].to(d), visibility.to(d), alpha.to(d), target_pose)




def _box_slices(mask: torch.Tensor, margin: int) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``mask`` (non-empty), grown by ``margin``."""
    m = mask.cpu().numpy()  # (numpy's any(): torch's is many times slower on bool tensors)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    h, w = mask.shape
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, h)),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, w)))


def _support_box(alpha: torch.Tensor, hole: torch.Tensor) -> tuple[slice, slice] | None:
    """The box (:func:`_box_slices`) of the nonzero ``alpha`` and the ``hole`` pixels, grown by the one pixel
    :func:`_feather` spreads alpha by; None when both are empty, the whole canvas when the box covers most of
    it (not worth the cutting)."""
    support = (alpha > 0) | hole
    if not bool(support.cpu().numpy().any()):
        return None
    rows, cols = _box_slices(support, margin=1)
    h, w = alpha.shape
    if (rows.stop - rows.start) * (cols.stop - cols.start) > 0.8 * h * w:
        return slice(None), slice(None)
    return rows, cols


_FEATHER = np.array([0.25, 0.5, 0.25], np.float32)  # the 3x3 binomial filter, as its two 1-D halves


def _feather(alpha: torch.Tensor, box: tuple[slice, slice] | None = None) -> torch.Tensor:
    """Soften the person's edge by about half a pixel (anti-aliasing), keeping the inside at 1. ``box``
    (:func:`_support_box`, computed when not given) holds every pixel the result can be nonzero at: the
    filter runs only there (its values do not depend on where the window lies), the rest stays 0.
    cv2's separable filter, not F.conv2d: the conv sets up a new kernel for every window size (about 2 ms
    at 512x352, the filter itself takes 0.05)."""
    box = _support_box(alpha, torch.zeros(alpha.shape, dtype=torch.bool)) if box is None else box
    if box is None:
        return torch.zeros_like(alpha)
    rows, cols = box
    w = alpha[rows, cols]
    # The edge repeated: on the image's edge as the whole image padded; on the window's, its outer pixels
    # are 0 (the box holds the support grown by a pixel), as the pixels beyond it.
    a = cv2.sepFilter2D(np.ascontiguousarray(w.cpu().numpy()), -1, _FEATHER, _FEATHER,
                        borderType=cv2.BORDER_REPLICATE)
    out = torch.zeros_like(alpha)
    out[rows, cols] = torch.maximum(torch.from_numpy(a), torch.where(w >= 1, w, torch.zeros_like(w))).clamp_(0, 1)
    return out


def _check_inputs(images, source_poses, target_poses, options: FlowWarpOptions, estimator,
                  names: tuple[str, str]) -> list[Pose]:
    """Every check that needs no warping, for all frames at once: a bad last frame fails before the first is
    made. ``names``: the labels of the source and target poses in the messages (``name[i]``). Returns the
    source poses on their images' canvases (:func:`fit_source_pose`)."""
    check_flow_model(options.method, estimator)
    n_img, n_src, n_tgt = len(images), len(source_poses), len(target_poses)
    if n_img == 0 or n_tgt == 0:
        raise ValueError(f"expected at least one source image and one target pose, got {n_img} images and "
                         f"{n_tgt} target poses")
    if n_src != n_img:
        raise ValueError(f"{names[0]}: expected one pose frame per source image ({n_img}), got {n_src}")
    if n_img not in (1, n_tgt):
        raise ValueError(f"batch mismatch: {n_img} source images and {n_tgt} target poses; expected N images "
                         f"with N target poses, or 1 image with N target poses")
    for j, image in enumerate(images):
        shape = getattr(image, "shape", None)
        if shape is None or len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"source[{j}] image: expected an RGB image array (H, W, 3) in 0..1, got "
                             f"{shape if shape is not None else type(image).__name__}")
        check_canvas_size(int(shape[1]), int(shape[0]), f"source[{j}] image")
    for kind, index, poses in ((names[0], options.source_person, source_poses),
                               (names[1], options.target_person, target_poses)):
        for i, pose in enumerate(poses):
            what = f"{kind}[{i}]"
            if not isinstance(pose, Pose):
                raise ValueError(f"{what}: expected a Pose, got {type(pose).__name__}")
            check_joints(pose, what)
            check_has_pose(pose.person(index, what), f"{what}, person {index}")
    return [fit_source_pose(pose, int(images[j].shape[1]), int(images[j].shape[0]), f"{names[0]}[{j}]")
            for j, pose in enumerate(source_poses)]


def iter_flow_warp(images: Sequence[np.ndarray], source_poses: Sequence[Pose], target_poses: Sequence[Pose],
                   options: FlowWarpOptions = FlowWarpOptions(), estimator: FlowEstimator | None = None,
                   names: tuple[str, str] = ("source_pose", "target_pose")) -> Iterator[FlowWarpResult]:
    """:func:`flow_warp` one frame at a time: checks every input now (before any frame), then returns an
    iterator that makes each frame only when asked and keeps none, so a long pose sequence never sits in
    memory whole. ``names`` label the source and target poses in error messages. A source pose detected on a
    resized copy of its image is rescaled to it (:func:`fit_source_pose`)."""
    source_poses = _check_inputs(images, source_poses, target_poses, options, estimator, names)
    return _frames(images, source_poses, target_poses, options, estimator, names)


def _frames(images, source_poses, target_poses, options, estimator, names) -> Iterator[FlowWarpResult]:
    prepared: dict[int, PreparedSource] = {}
    for i, target in enumerate(target_poses):
        j = 0 if len(images) == 1 else i
        if j not in prepared:
            if len(images) > 1:
                prepared.clear()  # N images with N poses: each source serves one frame
            prepared[j] = prepare_source(images[j], source_poses[j], options, what=f"source[{j}]")
        yield warp_prepared(prepared[j], target, options, estimator, what=f"{names[1]}[{i}]")


def flow_warp(images: Sequence[np.ndarray], source_poses: Sequence[Pose], target_poses: Sequence[Pose],
              options: FlowWarpOptions = FlowWarpOptions(), estimator: FlowEstimator | None = None,
              progress=None) -> list[FlowWarpResult]:
    """Batch FlowWarp: N images with N source and N target poses, or 1 image (and 1 source pose) with N
    target poses (a pose sequence -> N frames). ``progress(i, n)`` is called after each frame. Every input is
    checked before the first frame (:func:`iter_flow_warp`, which also streams the frames)."""
    results = []
    for result in iter_flow_warp(images, source_poses, target_poses, options, estimator):
        results.append(result)
        if progress is not None:
            progress(len(results), len(target_poses))
    return results
