"""Composite Where Real: real pixels bit-identical to FlowWarp's, generated pixels inside the mask, VAE crops
placed back where the encoder cut them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posetransfer.core.warp.composite import composite_where_real, feather_inside, fit_generated
from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp
from posetransfer.core.images import load_image
from posetransfer.core.pose.formats import read_openpose_json
from posetransfer.nodes.composite_nodes import PoseTransferCompositeReal

from comfy_doubles import SAMPLES


def _random(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_hard_mask_known_answer():
    warped, generated = _random((1, 6, 7, 3), 0), _random((1, 6, 7, 3), 1)
    mask = torch.zeros((1, 6, 7))
    mask[0, 2:4, 3:6] = 1
    out = composite_where_real(warped, generated, mask)
    expected = warped.clone()
    expected[0, 2:4, 3:6] = generated[0, 2:4, 3:6]
    assert torch.equal(out, expected)


def test_feather_ramps_inside_the_hole_only():
    mask = torch.zeros((1, 1, 9))
    mask[0, 0, 3:] = 1  # real: x 0..2; to generate: x 3..8
    weight = feather_inside(mask, 4)[0, 0]
    assert torch.equal(weight[:3], torch.zeros(3))  # real pixels: weight exactly 0
    assert torch.allclose(weight[3:], torch.tensor([0.25, 0.5, 0.75, 1, 1, 1]))  # distance / feather
    assert torch.equal(feather_inside(mask, 0), mask)


def test_soft_mask_is_never_exceeded():
    mask = torch.linspace(0, 1, 20).reshape(1, 4, 5)
    assert (feather_inside(mask, 3) <= mask).all()


def test_vae_crop_is_put_back_centred():
    warped = _random((1, 13, 21, 3), 2)  # 13 % 8 = 5 rows cut: offset 2; 21 % 8 = 5 columns: offset 2
    generated = _random((1, 8, 16, 3), 3)
    picture, covered = fit_generated(generated, 13, 21)
    assert torch.equal(picture[:, 2:10, 2:18], generated)
    assert covered.sum() == 8 * 16 and covered[0, 2:10, 2:18].all()
    out = composite_where_real(warped, generated, torch.ones((1, 13, 21)))
    assert torch.equal(out[:, 2:10, 2:18], generated)
    assert torch.equal(out[:, :2], warped[:, :2])  # not covered: the warped image (its own fill) stays


def test_other_sizes_are_resized():
    generated = torch.full((1, 4, 4, 3), 0.3)
    picture, covered = fit_generated(generated, 200, 100)
    assert picture.shape == (1, 200, 100, 3) and torch.allclose(picture, torch.full_like(picture, 0.3))
    assert covered.all()


def test_real_pixels_of_flowwarp_stay_bit_identical():
    """The known answer of the issue: FlowWarp's output, a different 'inpainted' picture (as a VAE would return
    it: 8-multiple, changed everywhere), composited with FlowWarp's generate_mask: every pixel the mask marks
    real is FlowWarp's, bit for bit; every fully-generated pixel is the inpainted one."""
    photo = torch.from_numpy(load_image(SAMPLES / "fashion_standing.png"))
    source = read_openpose_json(SAMPLES / "fashion_standing.pose.json")
    target = read_openpose_json(SAMPLES / "jumper.pose.json")
    result = flow_warp([photo], source[:1], target[:1], FlowWarpOptions(retarget=True))[0]
    warped = result.image.permute(1, 2, 0)[None].float()
    generate = (1 - result.visibility)[None].float()
    h, w = warped.shape[1:3]
    assert (generate == 0).any() and (generate == 1).any(), "the sample must have real and generated pixels"
    inpainted = 1 - warped[:, (h % 8) // 2:(h % 8) // 2 + h // 8 * 8, (w % 8) // 2:(w % 8) // 2 + w // 8 * 8]
    out, = PoseTransferCompositeReal().composite(warped, inpainted, generate, feather=6)
    real = generate[0] == 0
    assert torch.equal(out[0][real], warped[0][real])
    deep = feather_inside(generate, 6)[0] == 1
    picture, covered = fit_generated(inpainted, h, w)
    deep &= covered[0] > 0
    assert deep.any()
    assert torch.equal(out[0][deep], picture[0][deep])


def test_node_checks_its_inputs():
    node = PoseTransferCompositeReal()
    img = torch.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="generate_mask: expected the warped image's size"):
        node.composite(img, img, torch.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="feather"):
        node.composite(img, img, torch.zeros((1, 8, 8)), feather=-1)
    with pytest.raises(ValueError, match="generated_image"):
        node.composite(torch.zeros((2, 8, 8, 3)), torch.zeros((3, 8, 8, 3)), torch.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="warped_image"):
        node.composite(np.zeros((1, 8, 8, 3)), img, torch.zeros((1, 8, 8)))


def test_batches_broadcast():
    warped = _random((3, 5, 5, 3), 4)
    generated = _random((1, 5, 5, 3), 5)
    mask = torch.zeros((1, 5, 5))
    mask[0, 0, 0] = 1
    out = composite_where_real(warped, generated, mask)
    assert out.shape == (3, 5, 5, 3)
    assert torch.equal(out[:, 0, 0], generated[:, 0, 0].expand(3, 3))
    assert torch.equal(out[:, 1:], warped[:, 1:])
