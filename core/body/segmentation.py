"""Person masks and part-label maps of a photo, from its keypoints alone (no model).

``person_mask`` finds the person's silhouette: ``"skeleton"`` is the union of the part regions around the
bones; ``"grabcut"`` runs cv2's GrabCut seeded by the skeleton (bones = sure person, far from the body =
sure background, in between = let colour decide), on a copy at most ``GRABCUT_SIDE`` pixels wide for
speed, then upsampled. GrabCut follows loose clothes and hair that the skeleton regions miss; it needs
some colour contrast between person and background.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import torch

from ..pose.keypoints import Person
from .part_fields import grid_normalised_distance, part_geometry
from ..warp.hole_fill import pyramid_fill
from .parts import DEFAULT_DEPTH_ORDER, PART_BY_NAME, body_scale

SEGMENTATION_METHODS = ("grabcut", "skeleton")
GRABCUT_SIDE = 192
GRABCUT_ITERATIONS = 2  # 4 gave the same masks on the samples (IoU >= 0.998) at 1.6x the time
LOOSE = 2.0  # person pixels farther than this (in part radii) from every bone move with the torso
CORE = 1.0  # normalised distance below which a pixel is inside a part's nominal region
REACH_LOOSE = 0.6  # GrabCut may find person up to this many body scales beyond 3 part radii
MIN_SURE_BACKGROUND = 0.3  # the wider zone is used only where it leaves this fraction as sure background
COLOUR_GAP = 0.15  # RGB distance (0..1) from the predicted background that makes a pixel stand out
PERSON_RATIO = 0.35  # ... when its distance to the predicted person colour is below this times that distance
BACKDROP_GAP = 0.12  # ... and closer than this to it makes a loose person pixel background after all
SURE = 0.35  # normalised distance below which a pixel is the person whatever the colours say (GrabCut seed)


REACH = 3.5  # fields are exact up to this many radii from a part (enough for every use below); FAR beyond
FAR = 1e4


def part_distance_fields(person: Person, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Normalised distance field ``(H, W)`` of every part the person's joints determine.

    Computed only within ``REACH`` radii of each part (``FAR`` elsewhere): the cost follows the person's
    size, not the canvas's times the number of parts."""
    h, w = size
    out = {}
    for name, g in part_geometry(person).items():
        lo = np.floor(g.points.min(0) - REACH * g.radius).astype(int)
        hi = np.ceil(g.points.max(0) + REACH * g.radius).astype(int) + 1
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], w), min(hi[1], h)
        field = torch.full((h, w), FAR)
        if x0 < x1 and y0 < y1:
            field[y0:y1, x0:x1] = grid_normalised_distance(g, slice(y0, y1), slice(x0, x1))
        out[name] = field
    return out


def person_mask(image: np.ndarray, person: Person, method: str = "grabcut",
                fields: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """Soft person mask ``(H, W)`` float32 in 0..1 for ``image`` ``(H, W, 3)`` float 0..1 (see module doc)."""
    if method not in SEGMENTATION_METHODS:
        raise ValueError(f"segmentation: expected one of {SEGMENTATION_METHODS}, got {method!r}")
    h, w = image.shape[:2]
    fields = fields if fields is not None else part_distance_fields(person, (h, w))
    if not fields:
        return np.zeros((h, w), np.float32)
    radii = {name: g.radius for name, g in part_geometry(person).items()}
    # Union of the part regions, with a one-pixel anti-aliased edge. Running minimum / maximum, in place:
    # the same values as amin / amax over stacked fields without the stacked copies.
    nearest, skeleton = None, None
    for n, f in fields.items():
        region = (1 - f).mul_(radii[n]).add_(0.5).clamp_(0, 1)
        if nearest is None:
            nearest, skeleton = f.clone(), region
        else:
            torch.minimum(nearest, f, out=nearest)
            torch.maximum(skeleton, region, out=skeleton)
    nearest = nearest.numpy()
    skeleton = skeleton.numpy().astype(np.float32)
    if method == "skeleton":
        return skeleton
    scale = min(1.0, GRABCUT_SIDE / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(np.clip(image * 255, 0, 255).astype(np.uint8), small, interpolation=cv2.INTER_AREA)
    near = cv2.resize(nearest, small, interpolation=cv2.INTER_LINEAR)
    seeds = np.full(near.shape, cv2.GC_BGD, np.uint8)
    # Loose clothes (coat tails, wide skirts) reach far from every bone: "probably background", not sure
    # background, up to a further REACH_LOOSE body scales around the 3-radii zone.
    k = 2 * int(round(REACH_LOOSE * body_scale(person) * scale)) + 1
    zone = near < 3.0
    wide = cv2.dilate(zone.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    if (~wide).mean() >= MIN_SURE_BACKGROUND:  # GrabCut needs enough sure background for its colour model
        zone = wide
    seeds[zone] = cv2.GC_PR_BGD
    seeds[near < 1.2] = cv2.GC_PR_FGD
    seeds[near < 0.35] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any() or not ((seeds == cv2.GC_PR_BGD) | (seeds == cv2.GC_BGD)).any():
        return skeleton
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if not _seeded_grabcut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), seeds, bgd, fgd):
        return skeleton  # degenerate colour models (e.g. a flat image): fall back to the skeleton
    fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = _grow_by_colour(img, fg, zone, near >= CORE).astype(np.float32)
    mask = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, 0.5 / scale))
    # Only the sure seeds are forced: the ring between them and the part's nominal region (CORE) is
    # person or background as the colours say, so background between the legs or beside a thin arm is
    # never taken for the person (it would be moved with the limb and counted as real person content).
    return np.maximum(np.clip(mask, 0, 1), (nearest < SURE).astype(np.float32))


def _seeded_grabcut(bgr: np.ndarray, seeds: np.ndarray, bgd: np.ndarray, fgd: np.ndarray) -> bool:
    """cv2.grabCut (in place on ``seeds``) with its k-means start seeded, so the same photo gives the same mask,
    without touching the caller's OpenCV RNG: OpenCV's RNG (``cv::theRNG``) is per thread, and Python's cv2
    cannot read or restore it, so the seeding and the cut run in a short-lived thread of their own (the
    ComfyUI process's RNG is left as it was). False when GrabCut fails (degenerate colour models)."""
    failed = []

    def cut():
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(bgr, seeds, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            failed.append(True)

    worker = threading.Thread(target=cut, name="posetransfer-grabcut")
    worker.start()
    worker.join()
    return not failed


def _grow_by_colour(img: np.ndarray, fg: np.ndarray, zone: np.ndarray, loose: np.ndarray) -> np.ndarray:
    """``fg`` plus the pixels of ``zone`` whose colour stands out from the backdrop around them and that
    touch ``fg``: GrabCut's colour models miss clothes close in colour to a plain backdrop (a pale pink coat on
    light grey). The backdrop's colour at each pixel is predicted by a smooth fill of the pixels outside
    ``zone``, the person's by a fill of ``fg``; a pixel is added when it is far from the first and much
    closer to the second. The other way round, ``loose`` pixels (outside every part's nominal region) of the
    backdrop's colour (within ``BACKDROP_GAP`` of it) are taken out: GrabCut keeps patches of background
    between the legs or below a skirt, which would be moved with the limbs and count as real person content."""
    outside = ~zone
    if not outside.any():
        return fg
    # The fills are smooth: computed at half resolution, then brought back.
    h, w = img.shape[:2]
    half = (max(1, w // 2), max(1, h // 2))
    rgb = torch.from_numpy(cv2.resize(img, half, interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].float() / 255

    def distance_to_fill(known):
        k = torch.from_numpy(cv2.resize(known.astype(np.float32), half, interpolation=cv2.INTER_AREA))[None, None]
        fill = pyramid_fill(rgb, k)[0].permute(1, 2, 0).numpy()
        return np.linalg.norm(img / 255.0 - cv2.resize(fill, (w, h), interpolation=cv2.INTER_LINEAR), axis=-1)

    d_bg, d_fg = distance_to_fill(outside), distance_to_fill(fg > 0)
    stands_out = (d_bg > COLOUR_GAP) & (d_fg < PERSON_RATIO * d_bg) & zone
    grown = (stands_out | (fg > 0)).astype(np.uint8)
    _, comp = cv2.connectedComponents(grown, connectivity=4)
    touching = np.unique(comp[fg > 0])
    return (np.isin(comp, touching[touching > 0]) | (fg > 0)) & ~(loose & (d_bg < BACKDROP_GAP))


def part_label_map(fields: dict[str, torch.Tensor], mask: torch.Tensor,
                   depth_order: tuple[str, ...] = DEFAULT_DEPTH_ORDER) -> torch.Tensor:
    """Part label per pixel (``BodyPart.label``, 0 = background) of a person with soft ``mask`` ``(H, W)``.

    Where parts' cores (normalised distance < 1) overlap, the front-most in ``depth_order`` wins; other
    person pixels (loose clothes, hair) go to the nearest part if it is within ``LOOSE`` radii, else to the
    torso (capes, long skirts and coats hang from the torso; a limb would swing them around). Only person
    pixels (``mask > 0.5``) get a label: background inside a part's nominal region stays background.
    """
    nearest, labels = None, None
    for name, field in fields.items():  # running argmin (faster than argmin over a stacked tensor)
        label = PART_BY_NAME[name].label
        if nearest is None:
            nearest, labels = field.clone(), torch.full(field.shape, label, dtype=torch.long)
        else:
            closer = field < nearest
            nearest = torch.where(closer, field, nearest)
            labels = torch.where(closer, torch.tensor(label), labels)
    if "torso" in fields:
        labels = torch.where(nearest > LOOSE, torch.tensor(PART_BY_NAME["torso"].label), labels)
    for name in depth_order:  # back to front
        if name in fields:
            labels = torch.where(fields[name] < 1.0, torch.tensor(PART_BY_NAME[name].label), labels)
    return torch.where(mask > 0.5, labels, torch.zeros_like(labels))
