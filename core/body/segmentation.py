"""Person masks and part-label maps of a photo, from its keypoints alone (no model).

``person_mask`` finds the person's silhouette: ``"skeleton"`` is the union of the part regions around the
bones; ``"grabcut"`` runs cv2's GrabCut seeded by the skeleton (bones = sure person, far from the body =
sure background, in between = let colour decide), on a copy at most ``GRABCUT_SIDE`` pixels wide for
speed, then upsampled. GrabCut follows loose clothes and hair that the skeleton regions miss; it needs
some colour contrast between person and background.

Both methods then take one colour step (:func:`_grow_by_colour`): pixels up to ``GROW_REACH`` body scales
around the person that stand out from the backdrop and touch the person join it (clothes both miss: coat
tails far from every bone), at most ``GROW_MAX`` of the person's area; and pixels GrabCut took outside every
part's nominal region that have the backdrop's colour (in shadow or not) leave it. ``"skeleton"`` gets the
growth too (it is what misses loose clothes most; without it their colours would stay standing in the
background where the person was); it never loses any of its part regions. GrabCut's mask then takes a
palette step (:func:`_drop_backdrop_palette`): its loose pixels of a colour the backdrop shows and the
person does not wear within its parts' regions leave it (lit signs and graffiti beside the person).
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
LOOSE = 2.0  # person pixels farther than this (in part radii) from every bone move with the torso or a leg
CORE = 1.0  # normalised distance below which a pixel is inside a part's nominal region
REACH_LOOSE = 0.6  # GrabCut may find person up to this many body scales beyond 3 part radii
BACKDROP_BAND = 0.3  # body scales of sure background around the zone that GrabCut's backdrop model learns from
MIN_SURE_BACKGROUND = 0.3  # the wider zone is used only where it leaves this fraction as sure background
ZONE_REACHES = (3.0, 2.2, 1.6)  # part radii of GrabCut's zone, tried in turn until it leaves ...
MIN_CLOSE_UP_BACKGROUND = 0.05  # ... this fraction of the photo as sure background
COLOUR_GAP = 0.15  # RGB distance (0..1) from the predicted background that makes a pixel stand out
PERSON_RATIO = 2.0  # ... when its distance to the predicted person colour is below this times that distance
BACKDROP_GAP = 0.12  # ... and closer than this to it makes a loose person pixel background after all
SHADOW_MIN = 0.5  # a saturated backdrop darkened to this fraction (its shadow), or lit 1 / this, is backdrop
SATURATED = 0.5  # a backdrop this saturated is told from the person by colour even inside a part's region
GROW_REACH = 0.6  # the colour growth looks for missed clothes up to this many body scales around the person
GROW_MAX = 0.25  # ... and adds nothing when it would add more than this fraction of the person's area
PALETTE_LEVELS = 8  # colour histogram bins per RGB channel for the palette test (_drop_backdrop_palette)
PALETTE_GLOBAL_RATIO = 3.0  # a loose pixel goes when its colour's share of the backdrop is over this times
PALETTE_RATIO = 2.0  # ... its share of the person's palette, or this times in the backdrop around it ...
PALETTE_CELL = 0.2  # ... within the 3x3 cells around it of this many body scales
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
                fields: dict[str, torch.Tensor] | None = None, meanwhile=None) -> np.ndarray:
    """Soft person mask ``(H, W)`` float32 in 0..1 for ``image`` ``(H, W, 3)`` float 0..1 (see module doc).
    ``meanwhile``: a callable of the caller's that needs no mask, called once (before this returns) while
    GrabCut runs in its thread (cv2 releases the GIL there), so the two overlap on a second core."""
    if method not in SEGMENTATION_METHODS:
        raise ValueError(f"segmentation: expected one of {SEGMENTATION_METHODS}, got {method!r}")
    pending = [meanwhile] if meanwhile is not None else []

    def run_meanwhile():
        while pending:
            pending.pop()()

    mask = _person_mask(image, person, method, fields, run_meanwhile)
    run_meanwhile()  # (when GrabCut did not run)
    return mask


def _person_mask(image, person, method, fields, meanwhile) -> np.ndarray:
    h, w = image.shape[:2]
    fields = fields if fields is not None else part_distance_fields(person, (h, w))
    if not fields:
        return np.zeros((h, w), np.float32)
    radii = {name: g.radius for name, g in part_geometry(person).items()}
    # Running minimum, in place: the same values as amin over stacked fields without the stacked copy.
    nearest = None
    for f in fields.values():
        nearest = f.clone() if nearest is None else torch.minimum(nearest, f, out=nearest)
    nearest = nearest.numpy()

    def skeleton_of() -> np.ndarray:
        """Union of the part regions, with a one-pixel anti-aliased edge (running maximum, in place); only
        the skeleton method and a failed GrabCut need it."""
        skeleton = None
        for n, f in fields.items():
            region = (1 - f).mul_(radii[n]).add_(0.5).clamp_(0, 1)
            skeleton = region if skeleton is None else torch.maximum(skeleton, region, out=skeleton)
        return skeleton.numpy().astype(np.float32)

    # Both methods work on a copy at most GRABCUT_SIDE pixels wide (the colour steps need no more).
    scale = min(1.0, GRABCUT_SIDE / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(np.clip(image * 255, 0, 255).astype(np.uint8), small, interpolation=cv2.INTER_AREA)
    near = cv2.resize(nearest, small, interpolation=cv2.INTER_LINEAR)
    fg = _grabcut(img, near, person, scale, meanwhile) if method == "grabcut" else None
    reach = GROW_REACH * body_scale(person) * scale
    if fg is None:  # "skeleton", or GrabCut could not run: the part regions, grown by colour
        skeleton = skeleton_of()
        fg = (cv2.resize(skeleton, small, interpolation=cv2.INTER_AREA) > 0.5).astype(np.uint8)
        _, added = _grow_by_colour(img, fg, near, reach)
        # Slivers one small pixel thin along the part regions are their own edge, resampled (the small copy's
        # pixels straddle it), not clothes the regions missed: kept, they would roughen the exact edge.
        solid = cv2.morphologyEx(added.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        added = added.astype(bool) & (cv2.dilate(solid, np.ones((3, 3), np.uint8)) > 0)
        if not added.any():
            return skeleton
        # A full-resolution pixel more than the small copy's edge: the part regions' edge is exact, and the
        # added clothes' colours must not stay outside it where the person was.
        return np.maximum(skeleton, cv2.dilate(_upsample(added, (w, h), scale), np.ones((3, 3), np.uint8)))
    fg, _ = _grow_by_colour(img, fg, near, reach)
    fg = _drop_backdrop_palette(img, fg, near, max(2, int(round(PALETTE_CELL * body_scale(person) * scale))))
    # Only the sure seeds are forced: the ring between them and the part's nominal region (CORE) is
    # person or background as the colours say, so background between the legs or beside a thin arm is
    # never taken for the person (it would be moved with the limb and counted as real person content).
    return np.maximum(_upsample(fg, (w, h), scale), (nearest < SURE).astype(np.float32))


def _upsample(binary: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
    """A 0/1 mask of the small copy back at full ``size`` ``(W, H)``, with a soft edge."""
    mask = cv2.resize(binary.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return np.clip(cv2.GaussianBlur(mask, (0, 0), max(0.6, 0.5 / scale)), 0, 1)


def _grabcut(img: np.ndarray, near: np.ndarray, person: Person, scale: float, meanwhile=None
             ) -> np.ndarray | None:
    """GrabCut's person (uint8 0/1) on the small copy ``img`` (RGB uint8), seeded by the normalised distance
    ``near`` to the nearest part; None when it cannot run (no background seed, degenerate colour models).
    ``meanwhile``: called while GrabCut runs (see :func:`person_mask`)."""
    seeds = np.full(near.shape, cv2.GC_BGD, np.uint8)
    # Loose clothes (coat tails, wide skirts) reach far from every bone: "probably background", not sure
    # background, up to a further REACH_LOOSE body scales around the 3-radii zone.
    k = 2 * int(round(REACH_LOOSE * body_scale(person) * scale)) + 1
    # A close-up (a portrait filling the frame) has no pixel 3 radii from every part: the zone then shrinks
    # until it leaves some sure background, instead of GrabCut not running (the skeleton's mask was used).
    for reach in ZONE_REACHES:
        zone = near < reach
        if (~zone).mean() >= MIN_CLOSE_UP_BACKGROUND:
            break
    wide = cv2.dilate(zone.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    if (~wide).mean() >= MIN_SURE_BACKGROUND:  # GrabCut needs enough sure background for its colour model
        zone = wide
    seeds[zone] = cv2.GC_PR_BGD
    seeds[near < 1.2] = cv2.GC_PR_FGD
    seeds[near < SURE] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any() or not ((seeds == cv2.GC_PR_BGD) | (seeds == cv2.GC_BGD)).any():
        return None
    # The backdrop's colour model comes from a band of sure background around the zone, not from the whole
    # photo: far pixels (black pillar-box margins, a second scene) are not what the person stands against,
    # and one of their colours matching the person (black hair, black margins) would cut it away.
    band = max(4, int(round(BACKDROP_BAND * body_scale(person) * scale)))
    rows, cols = np.flatnonzero(zone.any(1)), np.flatnonzero(zone.any(0))
    h, w = seeds.shape
    box = (slice(max(rows[0] - band, 0), min(rows[-1] + band + 1, h)),
           slice(max(cols[0] - band, 0), min(cols[-1] + band + 1, w)))
    crop = np.ascontiguousarray(seeds[box])
    if not (crop == cv2.GC_BGD).any():
        crop, box = seeds, (slice(None), slice(None))
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if not _seeded_grabcut(cv2.cvtColor(np.ascontiguousarray(img[box]), cv2.COLOR_RGB2BGR), crop, bgd, fgd,
                           meanwhile):
        return None  # degenerate colour models (e.g. a flat image)
    seeds[box] = crop
    fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


def _seeded_grabcut(bgr: np.ndarray, seeds: np.ndarray, bgd: np.ndarray, fgd: np.ndarray, meanwhile=None) -> bool:
    """cv2.grabCut (in place on ``seeds``) with its k-means start seeded, so the same photo gives the same mask,
    without touching the caller's OpenCV RNG: OpenCV's RNG (``cv::theRNG``) is per thread, and Python's cv2
    cannot read or restore it, so the seeding and the cut run in a short-lived thread of their own (the
    ComfyUI process's RNG is left as it was). ``meanwhile`` (optional) runs on this thread while the cut
    runs. False when GrabCut fails (degenerate colour models)."""
    failed = []

    def cut():
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(bgr, seeds, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            failed.append(True)

    worker = threading.Thread(target=cut, name="posetransfer-grabcut")
    worker.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        worker.join()
    return not failed


def _grow_by_colour(img: np.ndarray, fg: np.ndarray, near: np.ndarray, reach: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The one colour step of both methods, on the small copy ``img`` (RGB uint8): ``(person, added)``, 0/1.
    ``near``: normalised distance to the nearest part; ``reach`` in pixels.

    Growth: the pixels within ``reach`` pixels of ``fg`` whose colour stands out from the backdrop around
    them and that touch ``fg`` are added (clothes the part regions or GrabCut's colour models miss: coat
    tails far from every bone, a pale pink coat on light grey). The backdrop's colour at each pixel is
    predicted by a smooth fill of the pixels farther than ``reach`` from ``fg``, the person's by a fill of
    ``fg``; a pixel is added when it is far from the first (:func:`_backdrop_distance`), not much farther
    (``PERSON_RATIO``) from the second, and not of the colour of the backdrop right around it either (a fill
    of the pixels that are neither person nor such candidates: it follows a floor's shading and the person's
    shadow, which the far prediction misses). When that would add more than ``GROW_MAX`` times the person's
    area, the backdrop could not be predicted (a busy photo) and nothing is added. (The ratio was 0.35 for
    GrabCut and 2 in a second pass over the whole mask; one pass with 2 keeps what both took.)

    Removal: pixels of ``fg`` of the backdrop's colour (within ``BACKDROP_GAP`` of it, the backdrop in shadow
    included) are taken out where they are loose (outside every part's nominal region, ``CORE``), and on a
    saturated backdrop (``SATURATED``) anywhere outside the sure seeds (``SURE``). GrabCut keeps patches of
    backdrop between the legs, below a skirt or in the person's shadow on the floor (dark, like boots, to its
    colour model), and a part's nominal region is wider than a thin boot: moved with the limbs, they would
    count as real person content. Only a saturated backdrop's colour is evidence enough inside a part's
    region; a grey one matches grey and white clothes (the limb would get holes).
    """
    none = np.zeros_like(fg)
    if not fg.any():
        return fg, none
    ring = cv2.distanceTransform((fg == 0).astype(np.uint8), cv2.DIST_L2, 3) <= reach
    outside = ~ring
    if not outside.any():
        return fg, none
    # The fills are smooth: computed at half resolution, then brought back.
    h, w = img.shape[:2]
    half = (max(1, w // 2), max(1, h // 2))
    rgb = torch.from_numpy(cv2.resize(img, half, interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].float() / 255
    colour = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255  # planar: fast per-pixel sums

    def fill_of(known):
        k = torch.from_numpy(cv2.resize(known.astype(np.float32), half, interpolation=cv2.INTER_AREA))[None, None]
        fill = pyramid_fill(rgb, k)[0].permute(1, 2, 0).numpy()
        return cv2.resize(fill, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)

    # Candidates stand out from the backdrop predicted from beyond the ring and are close to the person's
    # colours. That prediction is far from them (a floor's shading, the person's own shadow, pillar-box
    # margins spoil it), so each candidate must also stand out from the backdrop right around it: a fill of
    # the pixels that are neither person nor candidate. Removal judges fg's pixels against that too.
    d_far = _backdrop_distance(colour, fill_of(outside))
    d_fg = _norm(colour - fill_of(fg > 0))
    candidate = (d_far > COLOUR_GAP) & (d_fg < PERSON_RATIO * d_far) & ring & (fg == 0)
    near_fill = fill_of((fg == 0) & ~candidate)
    d_near = _backdrop_distance(colour, near_fill)
    removable = (near >= CORE) | ((near >= SURE) & (_saturation(near_fill) >= SATURATED))
    person = (fg > 0) & ~(removable & (d_near < BACKDROP_GAP))
    stands_out = candidate & (d_near >= BACKDROP_GAP)
    _, comp = cv2.connectedComponents((stands_out | person).astype(np.uint8), connectivity=4)
    touching = np.unique(comp[person])
    added = np.isin(comp, touching[touching > 0]) & stands_out
    if added.sum() > GROW_MAX * person.sum():
        return person.astype(np.uint8), none
    return (person | added).astype(np.uint8), added.astype(np.uint8)


def _drop_backdrop_palette(img: np.ndarray, fg: np.ndarray, near: np.ndarray, cell: int) -> np.ndarray:
    """``fg`` (uint8 0/1 on the small copy ``img``, RGB uint8) less its loose pixels (outside every part's
    nominal region, ``near >= CORE``) of a colour the backdrop shows and the person does not.

    On a busy backdrop (neon signs, graffiti) GrabCut's person colour model learns some backdrop colours from
    the "probably person" ring, and the colour growth adds lit signs next to a dark person: they stand out
    from the smooth backdrop prediction. Neither compares with what the person is seen to wear: the
    person's palette is a colour histogram (``PALETTE_LEVELS`` bins per channel, half a count per bin) of
    ``fg`` within the parts' nominal regions. A loose pixel goes when its colour's share of the backdrop is
    over ``PALETTE_GLOBAL_RATIO`` times its share of that palette, the backdrop being the pixels not in
    ``fg`` within ``REACH`` part radii (not far margins: black pillar-box bars are not what the person
    stands against), or over ``PALETTE_RATIO`` times it in the backdrop right around the pixel (the 3x3
    cells of ``cell`` px around the pixel's cell). Only the second test is local: a colour the backdrop
    shows only elsewhere (a brown tank across the photo, the colour of the hair) says little about a pixel
    here, so it must be far rarer on the person to go. Loose clothes (coat tails, a skirt, hair beyond the
    head's region) show the colours of the clothes and hair within the parts' regions and stay. What is
    then cut off from every part's nominal region goes too (a sign left hanging by a thin strip). (A naive
    Bayes test: chosen for being cheap, a few histograms.)"""
    inside = (near < CORE) & (fg > 0)  # the person within the parts' nominal regions: its palette
    backdrop = fg == 0
    loose = (fg > 0) & (near >= CORE)
    if inside.sum() < 16 or not backdrop.any() or not loose.any():
        return fg
    q = img.astype(np.int32) * PALETTE_LEVELS // 256
    bins = (q[..., 0] * PALETTE_LEVELS + q[..., 1]) * PALETTE_LEVELS + q[..., 2]
    n = PALETTE_LEVELS ** 3
    on_person = np.bincount(bins[inside], minlength=n) + 0.5
    share_person = on_person / on_person.sum()
    near_backdrop = backdrop & (near < REACH)
    on_backdrop = np.bincount(bins[near_backdrop], minlength=n) + 0.5
    drop = loose & (on_backdrop / on_backdrop.sum() > PALETTE_GLOBAL_RATIO * share_person)[bins]
    # The local backdrop: a histogram per cell, summed with its 8 neighbours, of the colours the loose pixels
    # still show (all others in one last bin, for the cells' totals).
    ys, xs = np.nonzero(loose & ~drop)
    shown = np.unique(bins[ys, xs])
    lut = np.full(n, len(shown))
    lut[shown] = np.arange(len(shown))
    h, w = fg.shape
    gy, gx = -(-h // cell), -(-w // cell)
    m = len(shown) + 1
    cells = (np.arange(h)[:, None] // cell) * gx + np.arange(w)[None, :] // cell
    counts = np.bincount((cells * m + lut[bins])[backdrop], minlength=gy * gx * m).reshape(gy, gx, m)
    padded = np.pad(counts, ((1, 1), (1, 1), (0, 0)))
    local = sum(padded[i:i + gy, j:j + gx] for i in range(3) for j in range(3))
    total = np.maximum(local.sum(-1), 1)
    cy, cx, b = ys // cell, xs // cell, bins[ys, xs]
    local_like = local[cy, cx, lut[b]] > PALETTE_RATIO * share_person[b] * total[cy, cx]
    drop[ys[local_like], xs[local_like]] = True
    person = (fg > 0) & ~drop
    # A single dropped pixel amid the person (a strand of hair's highlight) is noise, not backdrop.
    person |= drop & (cv2.boxFilter(person.astype(np.float32), -1, (3, 3), normalize=False) >= 8)
    _, comp = cv2.connectedComponents(person.astype(np.uint8), connectivity=4)
    anchored = np.unique(comp[person & (near < CORE)])
    return np.isin(comp, anchored[anchored > 0]).astype(np.uint8)


def _backdrop_distance(colour: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """RGB distance ``(H, W)`` of ``colour`` from the predicted ``backdrop`` (both planar ``(3, H, W)`` 0..1), the
    backdrop in shadow or in brighter light counted as backdrop: the distance to the nearest ``a * backdrop``
    with ``a`` between ``lo`` and ``1 / lo``. ``lo`` is ``SHADOW_MIN`` on a saturated backdrop and rises to 1
    (brightness must match) on a grey one: a darker grey is as likely a grey garment as a shadow, while a
    darker red of a red backdrop's own hue is its shadow (the person's shadow on a red floor is as dark as
    black boots, and GrabCut takes it for them), and the smooth prediction itself is darker or lighter than
    a shaded floor."""
    lo = 1 - (1 - SHADOW_MIN) * np.minimum(_saturation(backdrop), _saturation(colour))
    a = _dot(colour, backdrop) / np.maximum(_dot(backdrop, backdrop), 1e-6)
    a = np.clip(a, lo, 1 / lo)
    return _norm(colour - a * backdrop)


# Per-pixel helpers on planar (3, H, W) colours (reductions over a last axis of 3 are slow in numpy).
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(_dot(a, a))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(H, W)`` of planar ``rgb`` ``(3, H, W)`` 0..1 (0 = grey, 1 = a pure hue)."""
    top = np.maximum(np.maximum(rgb[0], rgb[1]), rgb[2])
    return (top - np.minimum(np.minimum(rgb[0], rgb[1]), rgb[2])) / np.maximum(top, 1e-3)


def part_label_map(fields: dict[str, torch.Tensor], mask: torch.Tensor,
                   depth_order: tuple[str, ...] = DEFAULT_DEPTH_ORDER) -> torch.Tensor:
    """Part label per pixel (``BodyPart.label``, 0 = background) of a person with soft ``mask`` ``(H, W)``.

    Where parts' cores (normalised distance < 1) overlap, the front-most in ``depth_order`` wins; other
    person pixels within ``LOOSE`` radii of a part go to the nearest part. Farther ones (loose clothes, hair)
    go to the torso or to the nearest leg part (thigh or shin), whichever is nearer: a cape or long hair
    hangs from the torso, but the tails of a long coat or skirt beside the legs swing with them (moved by the
    torso's map they would stay standing where the feet were when the legs are raised). Arms and the head
    never take far pixels (a swinging arm would fling them around). Pixels beyond every part's field
    (``REACH`` radii: a coat's train spread on the floor) take the label of the nearest labelled person
    pixel, so they move with the part they hang from. Only person pixels (``mask > 0.5``) get a label:
    background inside a part's nominal region stays background.
    """
    person_full = (mask > 0.5).numpy()
    out = torch.zeros(mask.shape, dtype=torch.long)
    rows, cols = np.flatnonzero(person_full.any(1)), np.flatnonzero(person_full.any(0))
    if len(rows) == 0 or not fields:
        return out
    # Only the person's bounding box can get labels: work there (the person is a fraction of the canvas), in
    # numpy (its masked copies are several times faster than torch.where on these sizes; same values).
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    fields = {name: f[box].numpy() for name, f in fields.items()}
    person = person_full[box]
    nearest, labels = _nearest_part(fields, fields)
    if "torso" in fields:
        loose = nearest > LOOSE
        labels[loose] = PART_BY_NAME["torso"].label
        legs = [n for n in LEG_PARTS if n in fields]
        if legs:
            leg_near, leg_labels = _nearest_part(fields, legs)
            np.copyto(labels, leg_labels, where=loose & (leg_near < fields["torso"]))
    for name in depth_order:  # back to front
        if name in fields:
            labels[fields[name] < 1.0] = PART_BY_NAME[name].label
    labels[~person] = 0
    far = person & (nearest >= FAR)
    if far.any() and (person & ~far).any():
        # Each far pixel takes the label of the nearest person pixel within the fields.
        src = (~(person & ~far)).astype(np.uint8)
        _, index = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
        inside = labels.ravel()[np.flatnonzero(src.ravel() == 0)]
        np.copyto(labels, inside[index.astype(np.int64) - 1], where=far)
    out[box] = torch.from_numpy(labels)
    return out


LEG_PARTS = ("right_thigh", "right_shin", "left_thigh", "left_shin")


def _nearest_part(fields: dict[str, np.ndarray], names) -> tuple[np.ndarray, np.ndarray]:
    """Running argmin over the ``names`` fields (faster than argmin over a stacked array): the smallest
    normalised distance and the label (int64) of its part."""
    nearest, labels = None, None
    for name in names:
        field, label = fields[name], PART_BY_NAME[name].label
        if nearest is None:
            nearest, labels = field.copy(), np.full(field.shape, label, np.int64)
        else:
            closer = field < nearest
            np.copyto(nearest, field, where=closer)
            labels[closer] = label
    return nearest, labels
