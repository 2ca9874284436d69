"""pyramid_fill's fast paths (strided 2x2 averages, the 0/1-mask finish) give the general path's values."""

import torch
import torch.nn.functional as F

from posetransfer.core.warp import hole_fill as inpaint
from posetransfer.core.warp.hole_fill import pyramid_fill


def _reference_fill(image, known):
    """pyramid_fill written plainly: avg_pool2d levels and the soft blend at every level."""
    known = known.clamp(0, 1)
    levels = [(image * known, known)]
    while min(levels[-1][1].shape[-2:]) > 1 and (levels[-1][1] < 1e-3).any():
        s, k = levels[-1]
        levels.append((F.avg_pool2d(s, 2, ceil_mode=True), F.avg_pool2d(k, 2, ceil_mode=True)))
    s, k = levels[-1]
    filled = s / k.clamp_min(1e-6)
    filled = torch.where(k > 1e-6, filled, filled.mean(dim=(-2, -1), keepdim=True))
    for s, k in reversed(levels[:-1]):
        up = F.interpolate(filled, size=s.shape[-2:], mode="bilinear", align_corners=False)
        w = k.clamp(max=1)
        filled = w * (s / k.clamp_min(1e-6)) + (1 - w) * up
    return known * image + (1 - known) * filled


def test_half_equals_avg_pool_on_even_and_odd_sizes():
    g = torch.Generator().manual_seed(0)
    for h, w in ((64, 44), (11, 16), (7, 5), (1, 2)):
        x = torch.rand(1, 3, h, w, generator=g)
        assert torch.equal(inpaint._half(x), F.avg_pool2d(x, 2, ceil_mode=True)), (h, w)


def test_fill_matches_the_plain_pull_push_for_binary_and_soft_masks():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 96, 70, generator=g)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(70), indexing="ij")
    hole = ((yy - 40) ** 2 + (xx - 30) ** 2 < 20 ** 2).float()[None, None]
    for known in (1 - hole, (1 - hole) * 0.7 + 0.1 * (xx % 3 == 0).float()):
        out = pyramid_fill(image, known)
        ref = _reference_fill(image, known)
        assert (out - ref).abs().max() < 1e-6
    binary = pyramid_fill(image, 1 - hole)
    assert torch.equal(binary[:, :, hole[0, 0] == 0], image[:, :, hole[0, 0] == 0])  # known pixels kept exactly
    inside = binary[:, :, hole[0, 0] > 0]
    assert (inside - image.mean()).abs().max() < 0.25  # holes filled with nearby colours, not left as they were


def test_fill_on_the_box_of_the_holes_gives_the_whole_image_values():
    """Large images fill only the box of the holes at the finest level (hole_fill._upsample_box): the values
    must be those of the whole-image computation, to the bit, wherever the box lies (canvas edges, odd
    sizes, where the coarse level is not half the size, soft weights, a batch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is used on one thread only (see pyramid_fill)
    try:
        _check_box_fills()
    finally:
        torch.set_num_threads(threads)


def _check_box_fills():
    g = torch.Generator().manual_seed(2)
    cases = [((300, 260), (120, 150, 40, 90)), ((300, 260), (0, 30, 0, 25)), ((301, 257), (270, 301, 230, 257)),
             ((512, 352), (200, 203, 10, 340)), ((257, 300), (100, 101, 150, 151))]
    for (h, w), (y0, y1, x0, x1) in cases:
        image = torch.rand(2, 3, h, w, generator=g)
        known = torch.ones(2, 1, h, w)
        known[:, :, y0:y1, x0:x1] = 0
        for k in (known, known * 0.9 + 0.1 * (torch.rand(2, 1, h, w, generator=g) > 0.99).float()):
            box = inpaint._extent(k.amin(dim=-1).flatten(0, -2).amin(0) < 1), \
                inpaint._extent(k.amin(dim=-2).flatten(0, -2).amin(0) < 1)
            assert (box[0][1] - box[0][0]) * (box[1][1] - box[1][0]) <= 0.8 * h * w or k is not known
            assert torch.equal(pyramid_fill(image, k), _reference_fill(image, k)), ((h, w), (y0, y1, x0, x1))


def test_fill_worked_out_only_where_needed_gives_the_same_values_there():
    """``needed`` (the pixels the caller reads, e.g. _composite's flat holes) narrows the finest level on one
    thread: inside it the values are the full fill's to the bit; holes outside are left unfilled."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(3)
        for h, w in ((120, 90), (301, 257)):
            image = torch.rand(1, 3, h, w, generator=g)
            known = torch.ones(1, 1, h, w)
            known[..., 10:h - 20, 5:w - 30] = 0
            needed = (slice(40, 61), slice(17, 50))
            full, part = pyramid_fill(image, known), pyramid_fill(image, known, needed)
            assert torch.equal(part[..., needed[0], needed[1]], full[..., needed[0], needed[1]]), (h, w)
            assert torch.equal(part[..., :5, :], full[..., :5, :])  # known pixels outside kept
            assert bool((part[..., 12, 8] == 0).all()) and bool((full[..., 12, 8] != 0).any())  # not filled there
    finally:
        torch.set_num_threads(threads)


def _reference_mirror(image, known, seam=inpaint.MIRROR_SEAM):
    """mirror_fill written plainly, pixel by pixel: along the row the mirror across the nearer end of the run
    whose mirror is known (both cross-faded within ``seam`` px of the run's middle), else the same along the
    column, else None (left to the smooth fill)."""
    h, w = known.shape
    out = {}

    def mirror(line, i, n, pick):
        lo = i
        while lo >= 0 and not line[lo]:
            lo -= 1
        hi = i
        while hi < n and not line[hi]:
            hi += 1
        a = 2 * lo + 1 - i if lo >= 0 and 0 <= 2 * lo + 1 - i < n and line[2 * lo + 1 - i] else None
        b = 2 * hi - 1 - i if hi < n and 0 <= 2 * hi - 1 - i < n and line[2 * hi - 1 - i] else None
        if a is None and b is None:
            return None
        if b is None:
            return pick(a)
        if a is None:
            return pick(b)
        t = min(max(0.5 + ((i - lo) - (hi - i)) / (4.0 * seam + 2), 0.0), 1.0)  # the right mirror's weight
        return (1 - t) * pick(a) + t * pick(b)

    for y in range(h):
        for x in range(w):
            if known[y, x]:
                continue
            v = mirror(known[y], x, w, lambda c: image[:, y, c])
            out[y, x] = v if v is not None else mirror(known[:, x], y, h, lambda r: image[:, r, x])
    return out


def test_mirror_fill_takes_the_pixels_beside_each_hole_mirrored_across_its_nearer_edge():
    # Hand-computed: a row 0..29 with a hole at columns 8..21 (left end 7, right end 22): its left part takes
    # the mirror 15 - x, its right part 43 - x; at the middle the two cross-fade (MIRROR_SEAM px each side).
    row = torch.arange(30.0).view(1, 1, 1, 30)
    known = torch.ones(1, 1, 1, 30)
    known[..., 8:22] = 0
    got = inpaint.mirror_fill(row, known)[0, 0, 0]
    assert got[:8].tolist() == list(range(8)) and got[22:].tolist() == list(range(22, 30))
    assert got[8:12].tolist() == [7, 6, 5, 4] and got[18:22].tolist() == [25, 24, 23, 22]
    t = 0.5 - 1 / (4 * inpaint.MIRROR_SEAM + 2)  # x = 14, one pixel left of the middle
    assert abs(float(got[14]) - ((1 - t) * (15 - 14) + t * (43 - 14))) < 1e-5
    # Narrow holes: each half from its own side where the other's mirror leaves the image.
    row, known = torch.arange(10.0).view(1, 1, 1, 10), torch.ones(1, 1, 1, 10)
    known[..., 3:7] = 0
    got = inpaint.mirror_fill(row, known)[0, 0, 0].tolist()
    assert got[3] == 2 and got[6] == 7 and 1 < got[4] < 9 and 0 < got[5] < 8
    # Against the plain reference on random holes (rows, columns, and what is left to the smooth fill).
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 23, 31, generator=g)
    known = (torch.rand(1, 1, 23, 31, generator=g) > 0.3).float()
    known[..., 4:9, :] = 0  # whole rows: the columns must fill them
    known[..., 15:, 20:] = 0  # a block reaching two edges
    out = inpaint.mirror_fill(image, known)
    ref = _reference_mirror(image[0], known[0, 0].bool().numpy())
    assert sum(v is not None for v in ref.values()) > 150
    for (y, x), v in ref.items():
        if v is not None:
            assert torch.allclose(out[0, :, y, x], v, atol=1e-6), (y, x)
    assert torch.equal(out[known.expand_as(out) > 0.5], image[known.expand_as(image) > 0.5])
    assert bool(torch.isfinite(out).all())


def test_mirror_fill_keeps_a_backdrops_texture_where_the_pyramid_fill_is_flat():
    """A striped wall with a person-sized hole: the mirror fill carries the stripes' contrast through it
    (their spread within the hole as on the wall), the smooth fill leaves a nearly flat patch."""
    h, w = 96, 80
    stripes = ((torch.arange(w) // 3) % 2).float().view(1, 1, 1, w).expand(1, 3, h, w) * 0.8 + 0.1
    known = torch.ones(1, 1, h, w)
    known[..., 20:80, 30:55] = 0
    hole = known[0, 0] < 0.5
    mirror = inpaint.fill_holes(stripes, 1 - known, "mirror")[0, 0][hole]
    smooth = inpaint.fill_holes(stripes, 1 - known, "pyramid")[0, 0][hole]
    assert abs(float(mirror.std()) - float(stripes[0, 0].std())) < 0.05
    assert float(smooth.std()) < 0.15
    # The stripes' own values, not blends, but for the cross-faded seam down the middle.
    assert float(((mirror - 0.1).abs() < 1e-6).float().mean()) > 0.3
