"""Filling holes in images without a model: a fast pull-push pyramid, a mirror of the pixels beside each hole,
or cv2's Telea inpainting."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

INPAINT_METHODS = ("pyramid", "mirror", "telea")
WINDOW_PIXELS = 256 * 256  # below this the finest level is not worth cutting to the box of the holes


FILL_MARGIN = 16  # px of context at least around a hole for its smooth fill on a crop (context_box)


def context_box(mask: np.ndarray, margin: int = FILL_MARGIN) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``mask`` (``(H, W)`` bool, not empty) grown on every side by
    its own height and width, at least ``margin`` px, within the image: the context a smooth fill of those
    pixels needs (the colours around them), so it can run on that crop instead of the whole image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    grow = max(margin, int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    return (slice(max(int(rows[0]) - grow, 0), min(int(rows[-1]) + 1 + grow, h)),
            slice(max(int(cols[0]) - grow, 0), min(int(cols[-1]) + 1 + grow, w)))


def pyramid_fill(image: torch.Tensor, known: torch.Tensor,
                 needed: tuple[slice, slice] | None = None) -> torch.Tensor:
    """Fill where ``known`` is 0 with a smooth extension of the known pixels (pull-push).

    ``image`` ``(B, C, H, W)``, ``known`` ``(B, 1, H, W)`` weights in 0..1. Known pixels are kept (soft
    weights blend). Each coarser level averages the known pixels (weighted); holes take the upsampled
    coarser value, so a hole gets the colours around it, smoothly. Linear in the pixel count.
    ``needed``: the rows and columns (slices) of the only pixels the caller reads; on one thread the finest
    level is then worked out only there (their values unchanged), and the holes outside are left unfilled.
    """
    # The tests on the weights are float minima / maxima: on CPU many times faster than comparisons
    # reduced with any() / all(), with the same answers for weights without NaN (NaN takes the old tests).
    known = known.clamp(0, 1)
    finite = not bool(torch.isnan(known.amin()))
    # A 0/1 mask (the usual hole mask) keeps the known pixels and takes the upsampled fill in the holes
    # exactly, so the finest level needs no blending (3 full-size operations instead of about 10).
    # For w in 0..1, w * (1 - w) is 0 exactly when w is 0 or 1.
    binary = bool((known * (1 - known)).amax() == 0) if finite else bool(((known == 0) | (known == 1)).all())
    s, k = image * known, known
    levels = [(s, k)]
    while min(k.shape[-2:]) > 1 and (bool(k.amin() < 1e-3) if finite else bool((k < 1e-3).any())):
        s, k = _half(s), _half(k)
        levels.append((s, k))
    filled = s / k.clamp_min(1e-6)
    if (k < 1e-6).all():  # nothing known at all: leave the image as it is
        return image
    filled = torch.where(k > 1e-6, filled, filled.mean(dim=(-2, -1), keepdim=True))
    for i in range(len(levels) - 2, 0, -1):
        s, k = levels[i]
        up = F.interpolate(filled, size=s.shape[-2:], mode="bilinear", align_corners=False)
        w = k.clamp(max=1)
        own = s / k.clamp_min(1e-6)
        # A pixel with weight w is w parts its own (normalised) value and 1 - w parts the coarser fill.
        filled = w * own + (1 - w) * up
    if len(levels) == 1:  # every weight is at least 1e-3: no coarser level
        return known * image + (1 - known) * filled
    # The finest level. Where the weight is 1 the result is the image (s + 0 * up, or 1 * image + 0 * fill),
    # so on large images the upsampling and the blend run only on the box of the weights below 1 (the same
    # values there). Only on one thread: with several, F.interpolate's last bit depends on how its work is
    # split among them (the whole image on 1 and on 2 threads differ too), so only the whole image gives
    # its values.
    s = levels[0][0]
    h, w = s.shape[-2:]
    rows, cols = (0, h), (0, w)
    if finite and (h * w >= WINDOW_PIXELS or needed is not None) and torch.get_num_threads() == 1:
        rows = _extent(known.amin(dim=-1).flatten(0, -2).amin(0) < 1)
        cols = _extent(known.amin(dim=-2).flatten(0, -2).amin(0) < 1)
        if needed is not None:
            inner = [(max(lo, r.indices(n)[0]), min(hi, r.indices(n)[1]))
                     for (lo, hi), r, n in zip((rows, cols), needed, (h, w))]
            if all(lo < hi for lo, hi in inner):  # (else no hole is read: any box serves)
                rows, cols = inner
    if (rows[1] - rows[0]) * (cols[1] - cols[0]) > 0.8 * h * w:  # not worth the cutting
        rows, cols = (0, h), (0, w)
    up = _upsample_box(filled, rows, cols, (h, w))
    whole = rows == (0, h) and cols == (0, w)
    rows, cols = slice(*rows), slice(*cols)
    k = known[..., rows, cols]
    if binary:  # what the general blend below and the final line give for w in {0, 1}
        if whole:
            return s + (1 - known) * up
        s[..., rows, cols] += (1 - k) * up  # s is this function's own tensor
        return s
    filled = k.clamp(max=1) * (s[..., rows, cols] / k.clamp_min(1e-6)) + (1 - k) * up
    if whole:
        return known * image + (1 - known) * filled
    out = image.clone()
    out[..., rows, cols] = k * image[..., rows, cols] + (1 - k) * filled
    return out


def _extent(flags: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last index of the True entries of a 1-D bool tensor (it has one)."""
    idx = torch.nonzero(flags).flatten()
    return int(idx[0]), int(idx[-1]) + 1


def _upsample_box(coarse: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
                  size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(coarse, size, bilinear)[..., rows, cols]`` computed on a window of ``coarse``: along a
    dimension of exactly twice the coarse size every output pixel reads its two nearest coarse pixels with
    weights 1/4 and 3/4 wherever it lies, so the window (one coarse pixel of margin, whose outer output
    rows are dropped) gives the same values on one thread (tests/test_inpaint.py); along any other dimension
    the whole extent is used."""
    if rows == (0, size[0]) and cols == (0, size[1]):
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    spans = []
    for (lo, hi), n, n1 in zip((rows, cols), size, coarse.shape[-2:]):
        if n == 2 * n1:
            a, b = max(lo // 2 - 1, 0), min((hi + 1) // 2 + 1, n1)
            spans.append((a, b, 2 * (b - a), lo - 2 * a, hi - 2 * a))
        else:
            spans.append((0, n1, n, lo, hi))
    (a0, b0, n0, lo0, hi0), (a1, b1, n1, lo1, hi1) = spans
    up = F.interpolate(coarse[..., a0:b0, a1:b1], size=(n0, n1), mode="bilinear", align_corners=False)
    return up[..., lo0:hi0, lo1:hi1]


def _half(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, ceil_mode=True)``: on even sizes as four strided slices summed in the pool's order
    (the same values, several times faster on CPU than the pooling kernel)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        return F.avg_pool2d(x, 2, ceil_mode=True)
    out = x[..., 0::2, 0::2] + x[..., 0::2, 1::2]
    out += x[..., 1::2, 0::2]
    out += x[..., 1::2, 1::2]
    return out.div_(4)


def mirror_fill(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill where ``known`` (``(B, 1, H, W)``, > 0.5 = known) is not with the known pixels beside the hole,
    mirrored across its edge: along each row, a hole pixel takes the pixel as far beyond the nearer end of
    its run (left or right) as it lies inside, the two mirrors cross-faded over ``MIRROR_SEAM`` px where
    they meet; pixels whose mirror on both sides is out of the image or in another hole take the same along
    their column; the rest a smooth fill (:func:`pyramid_fill`, on the crop :func:`context_box`).

    A textured placeholder: a street, a wall, a floor or a pattern continues through the hole with its own
    grain and brightness, where a smooth fill averages them into a flat patch (on a night street with lit
    signs, a grey silhouette where the person stood). Where the two mirrors meet in a wide hole a seam
    still shows; chosen over patch-based synthesis for being a few array lookups. ``image``
    ``(B, C, H, W)``."""
    out = image.detach().cpu().numpy().copy()  # numpy's flat gathers are several times faster here
    for i, k in enumerate((known[:, 0] > 0.5).cpu().numpy()):
        if k.all() or not k.any():
            continue
        flat = out[i].reshape(out.shape[1], -1)  # a view: (C, H * W)
        w = k.shape[1]
        # Along rows, then along the columns of what is left, then smooth.
        y, x, left, right, wt = _mirror_sources(k)
        r = y * w
        _blend_into(flat, r + x, r + left, r + right, wt)
        rest = ~k
        rest[y, x] = False
        if not rest.any():
            continue
        columns = np.flatnonzero(rest.any(0))
        c, y, up, down, wt = _mirror_sources(np.ascontiguousarray(k[:, columns].T))
        c = columns[c]
        keep = rest[y, c]
        c, y, up, down, wt = c[keep], y[keep], up[keep], down[keep], wt[keep]
        _blend_into(flat, y * w + c, up * w + c, down * w + c, wt)
        rest[y, c] = False
        if rest.any():
            # Smoothly, on the crop of its context (usually a few pixels where both mirrors leave the image).
            box = context_box(rest)
            known_now = torch.from_numpy((~rest[box]).astype(np.float32))[None, None]
            filled = pyramid_fill(torch.from_numpy(np.ascontiguousarray(out[i:i + 1, :, box[0], box[1]])), known_now)
            region = out[i][:, box[0], box[1]]
            region[:, rest[box]] = filled[0].numpy()[:, rest[box]]
    return torch.from_numpy(out).to(image)


def _blend_into(flat: np.ndarray, at: np.ndarray, a: np.ndarray, b: np.ndarray, wt: np.ndarray) -> None:
    """``flat[:, at] = (1 - wt) * flat[:, a] + wt * flat[:, b]`` for ``flat`` ``(C, N)``, one channel at a
    time: numpy's 1-D gathers are about 3x faster than the same on the 2-D array (the same values)."""
    for channel in flat:
        channel[at] = (1 - wt) * channel.take(a) + wt * channel.take(b)


MIRROR_SEAM = 3  # px on each side of the middle of a hole run over which its two mirrors cross-fade


def _mirror_sources(known: np.ndarray) -> tuple[np.ndarray, ...]:
    """Along each row of ``known`` ``(H, W)`` bool, the hole pixels that have a known mirror, as flat arrays
    ``(row, column, left, right, weight)``: the columns of their mirrors across the left and the right end
    of their run, and the weight (0..1) of the right one. The nearer end's mirror is taken when it is known,
    the other's otherwise; where both are known, within ``MIRROR_SEAM`` px of the run's middle, the weight
    goes linearly from the left's to the right's. Worked out per run of holes (a row has a few), so the
    cost goes with the hole pixels, not the whole rows."""
    h, w = known.shape
    edges = np.zeros((h, w + 2), np.int8)
    edges[:, 1:-1] = ~known
    # In row-major order each run's start (+1) is followed by its end (-1): they pair up. (int32: half the
    # memory traffic of numpy's int64 indices, and every flat index of an image fits.)
    ry, rx = (a.astype(np.int32) for a in np.nonzero(np.diff(edges, axis=1)))
    row, start, stop = ry[0::2], rx[0::2], rx[1::2]  # the run is [start, stop)
    length = stop - start
    # Per hole pixel: its row, its column and the known pixels that end its run.
    y, left, right = np.repeat(row, length), np.repeat(start - 1, length), np.repeat(stop, length)
    x = np.arange(len(y), dtype=np.int32) - np.repeat(np.cumsum(length, dtype=np.int32) - length - start, length)
    from_left, from_right = 2 * left + 1 - x, 2 * right - 1 - x  # mirrored about the run's two ends
    from_left.clip(0, w - 1, out=from_left)  # (out of the image: told by left / right below)
    from_right.clip(0, w - 1, out=from_right)
    flat, base = known.ravel(), y * w
    ok_left = (2 * left + 1 >= x) & (left >= 0) & flat.take(base + from_left)
    ok_right = (2 * right - 1 - x < w) & (right < w) & flat.take(base + from_right)
    past_middle = (x - left) - (right - x)  # signed distance past the run's middle, in px
    both = 0.5 + past_middle / (4.0 * MIRROR_SEAM + 2)
    weight = np.where(ok_left & ok_right, np.clip(both, 0, 1), np.where(ok_left, 0.0, 1.0)).astype(np.float32)
    ok = ok_left | ok_right
    if ok.all():
        return y, x, from_left, from_right, weight
    return y[ok], x[ok], from_left[ok], from_right[ok], weight[ok]


def telea_fill(image: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
    """cv2's Telea inpainting; ``image`` float (H, W, 3) 0..1, ``hole`` (H, W) bool/0..1."""
    u8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.inpaint(u8, (hole > 0.5).astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return out.astype(np.float32) / 255


def fill_holes(image: torch.Tensor, hole: torch.Tensor, method: str = "pyramid",
               needed: tuple[slice, slice] | None = None) -> torch.Tensor:
    """Fill ``hole`` (``(B, 1, H, W)``, 1 = fill) in ``image`` ``(B, C, H, W)`` with ``method``. ``needed``: see
    :func:`pyramid_fill` (the pixels read; the other holes may stay unfilled)."""
    if method == "pyramid":
        return pyramid_fill(image, 1 - hole, needed)
    if method == "mirror":
        return mirror_fill(image, 1 - hole)
    if method == "telea":
        out = [torch.from_numpy(telea_fill(im.permute(1, 2, 0).cpu().numpy(), h[0].cpu().numpy())).permute(2, 0, 1)
               for im, h in zip(image, hole)]
        return torch.stack(out).to(image)
    raise ValueError(f"method: expected one of {INPAINT_METHODS}, got {method!r}")
