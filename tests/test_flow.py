import math

import numpy as np
import pytest
import torch

from posetransfer.core import flow as fl


def _image(h=12, w=16, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, c, h, w, generator=g)


def test_zero_flow_is_identity():
    img = _image()
    out = fl.warp(img, torch.zeros(1, 2, 12, 16))
    assert torch.allclose(out, img, atol=1e-6)


def test_integer_shift_reads_the_right_pixel():
    img = _image()
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0] = 3  # read 3 px to the right
    flow[:, 1] = -2  # and 2 px up
    out = fl.warp(img, flow, padding_mode="zeros")
    assert torch.allclose(out[..., 2:, :13], img[..., :10, 3:], atol=1e-6)
    inside = fl.inside_mask(flow)
    assert inside[0, 0, 2:, :13].all() and not inside[0, 0, :2].any() and not inside[0, 0, :, 13:].any()


def test_half_pixel_shift_is_mean_of_neighbours():
    img = _image()
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0] = 0.5
    out = fl.warp(img, flow)
    assert torch.allclose(out[..., :, :15], (img[..., :, :15] + img[..., :, 1:]) / 2, atol=1e-6)


def test_grid_and_coords_round_trip_and_match_grid_sample_convention():
    flow = torch.randn(2, 2, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.allclose(fl.grid_to_flow(fl.flow_to_grid(flow)), flow, atol=1e-4)
    assert torch.allclose(fl.coords_to_flow(fl.flow_to_coords(flow)), flow, atol=1e-5)
    # Pixel centre 0 of a width-4 source is grid -0.75 under align_corners=False.
    grid = fl.coords_to_grid(torch.zeros(1, 2, 1, 1), (4, 4))
    assert torch.allclose(grid, torch.full((1, 1, 1, 2), -0.75))


def test_source_of_other_size():
    src = _image(6, 8)
    # Target 3x4 reading every second pixel (even coordinates) of the source.
    coords = fl.base_coords(3, 4) * 2
    out = fl.warp(src, fl.coords_to_flow(coords))
    assert torch.allclose(out, src[..., ::2, ::2], atol=1e-6)


def test_affine_to_flow_translation_and_rotation():
    m = np.array([[1.0, 0, 2], [0, 1, -1]])
    flow = fl.affine_to_flow(m, (4, 5))
    assert torch.allclose(flow[0, 0], torch.full((4, 5), 2.0))
    assert torch.allclose(flow[0, 1], torch.full((4, 5), -1.0))
    a = math.radians(90)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]])
    coords = fl.flow_to_coords(fl.affine_to_flow(rot, (3, 3)))
    # Target pixel (x=2, y=1) reads source (x=-1, y=2).
    assert torch.allclose(coords[0, :, 1, 2], torch.tensor([-1.0, 2.0]), atol=1e-5)


def test_compose_equals_sequential_warps_for_translations():
    img = _image(10, 10)
    a = torch.zeros(1, 2, 10, 10)
    a[:, 0] = 1
    b = torch.zeros(1, 2, 10, 10)
    b[:, 1] = 2
    ab = fl.compose(a, b)
    assert torch.allclose(ab[:, 0], torch.ones(1, 10, 10)) and torch.allclose(ab[:, 1], torch.full((1, 10, 10), 2.0))
    seq = fl.warp(fl.warp(img, a, padding_mode="zeros"), b, padding_mode="zeros")
    direct = fl.warp(img, ab, padding_mode="zeros")
    assert torch.allclose(seq[..., :8, :9], direct[..., :8, :9], atol=1e-6)


def test_compose_of_affines_is_the_product_affine():
    size = (16, 16)
    m1 = np.array([[0.9, 0.1, 1.0], [-0.1, 0.9, 0.5]])  # applied first to the image
    m2 = np.array([[1.0, 0.0, 0.5], [0.0, 1.1, -1.0]])
    f = fl.compose(fl.affine_to_flow(m1, size), fl.affine_to_flow(m2, size))
    # Output p reads q = m2 p, then m1 q: the product affine m1 @ m2.
    h1 = np.vstack([m1, [0, 0, 1]])
    h2 = np.vstack([m2, [0, 0, 1]])
    expect = fl.affine_to_flow((h1 @ h2)[:2], size)
    inner = (slice(None), slice(None), slice(2, 12), slice(2, 12))  # away from border clamping
    assert torch.allclose(f[inner], expect[inner], atol=1e-4)


def test_resize_flow_scales_vectors():
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 2.0
    big = fl.resize_flow(flow, (16, 16))
    assert big.shape == (1, 2, 16, 16)
    assert torch.allclose(big[:, 0], torch.full((1, 16, 16), 4.0), atol=1e-5)
    assert torch.allclose(big[:, 1], torch.zeros(1, 16, 16), atol=1e-5)
    # An affine flow stays the same affine map in the new pixel units.
    m = np.array([[1.0, 0.2, 3.0], [-0.1, 1.0, 1.0]])
    small = fl.affine_to_flow(m, (8, 8))
    up = fl.resize_flow(small, (16, 16))
    c = fl.flow_to_coords(up)[0, :, 5, 7]  # target pixel x=7, y=5 at 2x is x=3.25, y=2.25 at 1x
    x1, y1 = 3.25, 2.25
    sx, sy = m[0, 0] * x1 + m[0, 1] * y1 + m[0, 2], m[1, 0] * x1 + m[1, 1] * y1 + m[1, 2]
    assert torch.allclose(c, torch.tensor([(sx + 0.5) * 2 - 0.5, (sy + 0.5) * 2 - 0.5], dtype=torch.float32), atol=1e-4)


def test_flow_to_color():
    flow = torch.zeros(1, 2, 2, 2)
    flow[0, 0, 0, 0] = 1.0
    rgb = fl.flow_to_color(flow)
    assert rgb.shape == (1, 3, 2, 2)
    assert torch.allclose(rgb[0, :, 1, 1], torch.ones(3))  # zero flow -> white
    assert rgb[0, :, 0, 0].min() < 0.01  # full magnitude -> saturated


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="flow"):
        fl.warp(_image(), torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match="source"):
        fl.warp(torch.zeros(3, 12, 16), torch.zeros(1, 2, 12, 16))
    with pytest.raises(ValueError, match="matrix"):
        fl.affine_to_flow(np.eye(3), (4, 4))
