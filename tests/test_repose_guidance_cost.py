"""The cost-saving rewrites of the PoseGuidance path compute what the plain path computes: the decoder's upsamplers
as one transposed convolution (VaeCodec ``fused_upsample``), the decoded image and the guidance gradient through it,
the backward skipped for an empty ``W_h`` (exactly zero gradient); and the opt-in half-resolution decode measured on
the pixel-space toy with an exact estimator (benchmarks/RESULTS_repose.md quotes its numbers)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from posetransfer.core.repose import (TINY_VAE_CONFIG, PoseEstimate, PoseEstimator, PoseGuidance, PoseTarget,
                                      TinyPoseEstimator, VaeCodec, denoise_loop, percent_timestep_range)
from posetransfer.core.repose import sampler as sampler_module
from posetransfer.core.repose.sampler import nearest_up_conv3x3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_up_conv(x, w, b):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)


@pytest.mark.parametrize("shape,bias", [((2, 5, 7, 4), True), ((1, 3, 1, 1), False), ((1, 16, 6, 9), True)])
def test_nearest_up_conv3x3_equals_upsample_then_conv_with_gradients(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    ref = reference_up_conv(x, w, b)
    out = nearest_up_conv3x3(x, w, b)
    assert out.shape == ref.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    assert torch.allclose(out, ref, atol=1e-12, rtol=1e-12)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    params = [x, w] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(out, params, up), torch.autograd.grad(ref, params, up)):
        assert torch.allclose(a, r, atol=1e-11, rtol=1e-11)


def tiny_vae(seed=0, **kw):
    torch.manual_seed(seed)
    return AutoencoderKL(**dict(TINY_VAE_CONFIG, **kw))


def test_vae_codec_fused_decode_equals_the_stock_decoder_and_restores_the_modules(monkeypatch):
    vae = tiny_vae(0, up_block_types=["UpDecoderBlock2D"] * 3, down_block_types=["DownEncoderBlock2D"] * 3,
                   block_out_channels=[8, 16, 16])                          # two upsamplers
    fused, stock = VaeCodec(vae), VaeCodec(vae, fused_upsample=False)
    calls = []
    real = sampler_module.nearest_up_conv3x3
    monkeypatch.setattr(sampler_module, "nearest_up_conv3x3", lambda *a: calls.append(1) or real(*a))
    z = torch.randn(2, 4, 5, 3)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    a, b = fused.decode(za), stock.decode(zb)
    assert len(calls) == 2                                                   # both upsamplers took the fused path
    assert a.shape == b.shape == (2, 3, 20, 12)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    up = torch.randn_like(a)
    (ga,), (gb,) = torch.autograd.grad(a, za, up), torch.autograd.grad(b, zb, up)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)
    # The patch lasts only for the call; the VAE decodes as before outside it, and its state dict is unchanged.
    assert not any("forward" in vars(m) for m in vae.modules())
    with torch.no_grad():
        assert torch.allclose(vae.decode(z / fused.scaling_factor).sample, a.detach(), atol=1e-5, rtol=1e-4)
    assert set(vae.state_dict()) == set(tiny_vae(0, up_block_types=["UpDecoderBlock2D"] * 3,
                                                 down_block_types=["DownEncoderBlock2D"] * 3,
                                                 block_out_channels=[8, 16, 16]).state_dict())


def test_guidance_gradient_through_the_fused_decoder_equals_the_stock_one():
    torch.manual_seed(1)
    est = TinyPoseEstimator(num_joints=3, width=6).eval()
    vae = tiny_vae(1)
    target = torch.rand(1, 3, 16, 12)
    x_t, eps = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    abar = torch.tensor([0.3, 0.8])
    guide = PoseGuidance(est, target, threshold=-1.0)
    ga = guide.gradient(x_t, 500, eps, abar, VaeCodec(vae).decode)
    gb = guide.gradient(x_t, 500, eps, abar, VaeCodec(vae, fused_upsample=False).decode)
    assert ga.abs().max() > 0
    assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-4)


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise AssertionError("the backward ran")


class ExactEstimator(PoseEstimator):
    num_joints = 2

    def forward(self, image):
        return PoseEstimate(image[:, :2], image[:, :2])


def test_empty_weight_skips_the_backward_and_gives_the_exact_zero_gradient():
    target = torch.rand(1, 2, 6, 5)
    x_t, eps = torch.rand(1, 3, 6, 5), torch.randn(1, 3, 6, 5)
    empty = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0), threshold=1e9)
    grad = empty.gradient(x_t, 10, eps, 0.5, _NoBackward.apply)
    assert torch.equal(grad, torch.zeros_like(x_t))
    full = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0), threshold=-1.0)
    with pytest.raises(AssertionError, match="the backward ran"):
        full.gradient(x_t, 10, eps, 0.5, _NoBackward.apply)
    # and the skipped gradient is what autograd gives with W_h = 0
    y0 = ((x_t - 0.5 ** 0.5 * eps) / 0.5 ** 0.5).requires_grad_()
    (ref,) = torch.autograd.grad(empty.energy(y0).sum(), y0)
    assert torch.equal(ref, grad)


def blob_image(points, size=16, sigma=1.5):
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    img = torch.zeros(1, 3, size, size)
    for k, (x, y) in enumerate(points):
        img[0, k] = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img


def toy_pose_errors(decode_scale, seeds=range(6), size=16, s2=0.25, timestep_range=None):
    """The pixel-space toy of tests/test_repose.py (exact Gaussian denoiser whose mean leaks the source pose, exact
    estimator); ``decode_scale`` < 1 mimics guidance_decode_scale: the estimator sees the Tweedie estimate resized by
    that factor (bilinear), None = unguided; ``timestep_range`` limits the guided steps.
    -> (mean keypoint error in px, mean heatmap squared error)."""
    target = blob_image([(4, 4), (11, 12)], size)
    m = 0.5 * blob_image([(9, 5), (5, 11)], size) + 0.5 * target

    def keypoints(x):
        flat = x[0, :2].flatten(1).argmax(1)
        return torch.stack([flat % size, flat // size], 1).float()

    def decode(z):
        if decode_scale == 1.0:
            return z
        return F.interpolate(z, scale_factor=decode_scale, mode="bilinear", align_corners=False)

    errors, heat = [], []
    for seed in seeds:
        sched = DDIMScheduler(beta_schedule="linear", clip_sample=False)
        sched.set_timesteps(25)

        def predict(x, t):
            a = sched.alphas_cumprod[int(t)]
            x0 = m + a.sqrt() * s2 / (a * s2 + 1 - a) * (x - a.sqrt() * m)
            return (x - a.sqrt() * x0) / (1 - a).sqrt(), None, None

        guide = None if decode_scale is None else PoseGuidance(
            ExactEstimator(), target=PoseTarget(target[:, :2], target[:, :2]), image_range=(0.0, 1.0),
            timestep_range=timestep_range)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
        out = denoise_loop(predict, x, sched, guidance_scale=1.0, pose_guidance=guide, decode=decode)
        errors.append((keypoints(out) - keypoints(target)).norm(dim=1).mean().item())
        heat.append((out[:, :2] - target[:, :2]).square().sum().item())
    return float(np.mean(errors)), float(np.mean(heat))


def test_half_resolution_decode_is_an_approximation_measured_on_the_toy():
    results = {s: toy_pose_errors(s) for s in (None, 1.0, 0.5)}
    print("toy (keypoint error px, heatmap sq. error): unguided %s, exact decode %s, half decode %s"
          % tuple(tuple(round(v, 3) for v in results[s]) for s in (None, 1.0, 0.5)))
    unguided, exact, half = results[None], results[1.0], results[0.5]
    assert exact[0] < 0.5 * unguided[0] and exact[1] < unguided[1]
    assert half[1] < unguided[1]                # still guides, but it is not the exact gradient


def test_guiding_only_the_first_half_of_the_steps_keeps_most_of_the_pose_correction():
    # start_percent 0, end_percent 0.5 (t >= 499.5: 13 of the 25 DDIM steps): measured 0.62 px vs 0.25 px (every
    # step) and 4.59 px unguided over 12 seeds (benchmarks/RESULTS_repose.md).
    unguided, exact = toy_pose_errors(None), toy_pose_errors(1.0)
    early = toy_pose_errors(1.0, timestep_range=percent_timestep_range(0.0, 0.5))
    assert exact[0] < early[0] < 0.25 * unguided[0]
