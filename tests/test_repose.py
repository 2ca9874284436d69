"""RePoseDM (core.repose): local attention / correlation against dense masked references, the recurrent flow
accumulation (eq 7-9) through core.flow.compose, eq 11 / 13 / 15 / 16 numerics, the hybrid loss (eq 4), a 30-step
training run, the sampler end to end, guidance lowering the pose error on a toy with an exact estimator, and the
HigherHRNet state-dict layout."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from diffusers import AutoencoderKL, DDIMScheduler

from posetransfer.core.flow import affine_to_flow, compose, resize_flow, warp
from posetransfer.core.pose.keypoints import Person, Pose
from posetransfer.core.repose import (
    HIGHER_HRNET_W32_CONFIG, TINY_POSE_ALIGN_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG, HigherHRNet,
    HigherHRNetEstimator, MapFormerLayer, PoseAlign, PoseEstimate, PoseEstimator, PoseGuidance, PoseTarget,
    RePoseDenoiser, RePoseSampler, RePoseTrainConfig, SamplingInterrupted, TinyPoseEstimator, VaeCodec,
    accumulate_flows, as_pose_estimator, denoise_loop, guided_eps, hybrid_loss, load_higher_hrnet,
    local_attention, local_attention_reference, local_correlation, local_correlation_reference, make_ema,
    make_optimizer, percent_timestep_range, pose_heatmaps_coco17, repose_noise_scheduler, training_step,
    tweedie_x0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: one thread is fastest and immune to other load on the machine
    yield
    torch.set_num_threads(threads)


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE_CONFIG)


# ------------------------------------------------------------------------------------- local attention (eq 5)

@pytest.mark.parametrize("window", [1, 3, 5, 21])
def test_local_attention_equals_dense_masked_reference(window):
    g = torch.Generator().manual_seed(window)
    q, k = torch.randn(2, 2, 6, 7, 9, generator=g), torch.randn(2, 2, 6, 7, 9, generator=g)
    v = torch.randn(2, 2, 5, 7, 9, generator=g)
    out = local_attention(q, k, v, window)
    ref = local_attention_reference(q, k, v, window)
    assert out.shape == (2, 2, 5, 7, 9)
    assert (out - ref).abs().max() < 1e-5
    # Gradients agree too (the module is trained through them).
    qs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    qr = [t.clone().requires_grad_(True) for t in (q, k, v)]
    local_attention(*qs, window).square().sum().backward()
    local_attention_reference(*qr, window).square().sum().backward()
    for a, b in zip(qs, qr):
        assert (a.grad - b.grad).abs().max() < 1e-4


def test_local_attention_rejects_even_windows_and_never_builds_the_dense_matrix():
    x = torch.randn(1, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="odd"):
        local_attention(x, x, x, 4)
    # 256 x 256 positions: a dense attention matrix would be 65536^2 floats (16 GiB); the windowed op needs
    # 9 x 65536 logits.
    big = torch.randn(1, 1, 2, 256, 256)
    out = local_attention(big, big, big, 3)
    assert out.shape == big.shape and torch.isfinite(out).all()


def test_mapformer_local_window_covering_the_map_equals_global_attention():
    torch.manual_seed(0)
    glob = MapFormerLayer(8, num_heads=2, window=0, ffn_mult=2)
    loc = MapFormerLayer(8, num_heads=2, window=11, ffn_mult=2)
    loc.load_state_dict(glob.state_dict())
    x, ctx = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    assert (glob(x) - loc(x)).abs().max() < 1e-5                        # self-attention, diffusers' SDPA path
    assert (glob(x, ctx) - loc(x, ctx)).abs().max() < 1e-5              # cross-attention
    small = MapFormerLayer(8, num_heads=2, window=3, ffn_mult=2)
    small.load_state_dict(glob.state_dict())
    assert (glob(x) - small(x)).abs().max() > 1e-3                      # a real window is local


# ----------------------------------------------------------------------------------- local correlation (eq 6)

@pytest.mark.parametrize("radius", [0, 1, 3])
def test_local_correlation_equals_dense_reference(radius):
    g = torch.Generator().manual_seed(radius)
    ft, fs = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    out = local_correlation(ft, fs, radius)
    assert out.shape == (2, (2 * radius + 1) ** 2, 6, 7)
    assert (out - local_correlation_reference(ft, fs, radius)).abs().max() < 1e-5
    assert out.min() >= 0                                               # ReLU
    # Channel (dy + R)(2R + 1) + (dx + R) at (y, x) is F_T(y, x) . F_S(y + dy, x + dx), by hand.
    if radius:
        dy, dx, y, x = 1, -1, 2, 3
        by_hand = torch.relu((ft[0, :, y, x] * fs[0, :, y + dy, x + dx]).sum())
        assert torch.isclose(out[0, (dy + radius) * (2 * radius + 1) + dx + radius, y, x], by_hand, atol=1e-6)


# --------------------------------------------------------------------------------- recurrent accumulation (eq 7-9)

def test_accumulated_flow_is_the_composition_of_the_increments():
    size = (40, 36)
    a = affine_to_flow(torch.tensor([[1.0, 0.1, 1.5], [-0.05, 0.95, -2.0]]), size)
    b = affine_to_flow(torch.tensor([[0.9, 0.0, 0.5], [0.1, 1.0, 1.0]]), size)
    c = affine_to_flow(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.1, 0.5]]), size)
    total = accumulate_flows([a, b, c])
    # warp by a, then b, then c == the affine map T_a o T_b o T_c (target -> source coordinates).
    m = lambda t: torch.cat([t, torch.tensor([[0.0, 0.0, 1.0]])])
    ma = m(torch.tensor([[1.0, 0.1, 1.5], [-0.05, 0.95, -2.0]]))
    mb = m(torch.tensor([[0.9, 0.0, 0.5], [0.1, 1.0, 1.0]]))
    mc = m(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.1, 0.5]]))
    expect = affine_to_flow((ma @ mb @ mc)[:2], size)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))      # away from the border clamp
    assert (total - expect)[inner].abs().max() < 1e-4
    # Pure translations add.
    t1, t2 = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    t1[:, 0], t2[:, 1] = 1.0, -2.0
    assert torch.allclose(accumulate_flows([t1, t2])[..., 3:5, 3:5], t1[..., 3:5, 3:5] + t2[..., 3:5, 3:5])


def test_pose_align_recurrence_uses_compose_and_reencodes_every_iteration():
    torch.manual_seed(0)
    model = PoseAlign(**TINY_POSE_ALIGN_CONFIG)
    n_iter = model.config.num_iterations
    g = torch.Generator().manual_seed(1)
    increments = [torch.randn(1, 2, 8, 6, generator=g) * 0.7 for _ in range(n_iter + 1)]
    calls = {"encode": 0, "levels": []}

    def fake_increment(n, pose_features, source_latents):
        calls["levels"].append(model.level(n))
        return increments[n]

    model.increment = fake_increment
    vae = tiny_vae()
    codec = VaeCodec(vae)

    def encode(img):
        calls["encode"] += 1
        return codec.encode(img)

    source = torch.rand(1, 3, 16, 12) * 2 - 1
    out = model(source, torch.randn(1, 4, 8, 6), encode, return_intermediates=True)
    expect = accumulate_flows(increments)
    assert torch.allclose(out.flow, expect, atol=1e-6)
    for n, f in enumerate(out.flows):                                   # F^n = F^{n-1} o dF^n (eq 7)
        assert torch.allclose(f, accumulate_flows(increments[:n + 1]), atol=1e-6)
    assert torch.allclose(out.image_flow, resize_flow(expect, (16, 12)), atol=1e-6)
    assert torch.allclose(out.warped_image, warp(source, out.image_flow), atol=1e-6)     # W(I_S; F^N)
    assert torch.allclose(out.features, codec.encode(out.warped_image), atol=1e-5)      # eq 9
    assert calls["encode"] == n_iter + 2                                # F_S, F_S^0..F_S^{N-1}, F_S^N
    assert calls["levels"] == [min(n, 2) for n in range(n_iter + 1)]   # global -> local schedule
    assert len(out.warped_images) == n_iter + 1


def test_pose_align_starts_as_identity_trains_end_to_end_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = PoseAlign(**TINY_POSE_ALIGN_CONFIG)
    codec = VaeCodec(tiny_vae())
    source = torch.rand(2, 3, 16, 12) * 2 - 1
    pose_latents = torch.randn(2, 4, 8, 6)
    out = model(source, pose_latents, codec.encode, codec.decode)
    assert out.flow.abs().max() == 0                                    # zero-initialised heads
    assert torch.allclose(out.features, codec.encode(source), atol=1e-6)
    assert out.decoded.shape == source.shape
    out.features.square().mean().backward()
    head = model.aggregators[0].head.weight.grad
    assert head is not None and head.abs().sum() > 0                    # the loss reaches the flow through warp
    # Latent-space variant and save / load.
    with torch.no_grad():
        model.aggregators[1].head.bias.fill_(0.3)
    model.save_pretrained(tmp_path / "pa")
    again = PoseAlign.from_pretrained(tmp_path / "pa")
    assert again.config.window_sizes == [0, 5, 3]
    with torch.no_grad():
        a = model(source, pose_latents, codec.encode).features
        b = again(source, pose_latents, codec.encode).features
    assert torch.allclose(a, b, atol=1e-6)
    lat = PoseAlign(**dict(TINY_POSE_ALIGN_CONFIG, reencode=False))
    assert lat(source, pose_latents, codec.encode).features.shape == (2, 4, 8, 6)


# ------------------------------------------------------------------------------------------ guidance (eq 11-16)

class ExactEstimator(PoseEstimator):
    """Images whose first channels ARE the joint heatmaps: heatmaps = features = those channels."""

    num_joints = 2

    def forward(self, image):
        return PoseEstimate(image[:, :2], image[:, :2])


def test_eq11_gradient_equals_autograd_of_a_hand_built_reference():
    torch.manual_seed(0)
    est = TinyPoseEstimator(num_joints=3, width=6).eval()
    vae = tiny_vae(1)
    codec = VaeCodec(vae)
    target_img = torch.rand(1, 3, 16, 12)
    x_t, eps = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    abar = torch.tensor([0.3, 0.8])

    # Hand-built: y0 = (y_t - sqrt(1 - a) eps) / sqrt(a); P~ = D(y0) in 0..1; G = sum_x W(x) |f(P~) - f(P)|^2
    # with f = the backbone (conv1, ReLU, conv2, ReLU) and W = [sum of the joint heatmaps > threshold].
    y0 = ((x_t - (1 - abar).sqrt()[:, None, None, None] * eps) / abar.sqrt()[:, None, None, None]).requires_grad_()
    img = (vae.decode(y0 / vae.config.scaling_factor).sample + 1) / 2
    feat = est.conv2(est.conv1(img * 2 - 1).relu()).relu()
    hm = torch.sigmoid(est.head(feat))
    with torch.no_grad():
        ref_feat = est.conv2(est.conv1(target_img * 2 - 1).relu()).relu()
    threshold = float(hm.detach().sum(1).median())                     # a mask with both values
    mask = (hm.detach().sum(1, keepdim=True) > threshold).float()
    assert 0.2 < mask.mean() < 0.8
    G = (mask * (feat - ref_feat).pow(2).sum(1, keepdim=True)).sum()
    (ref,) = torch.autograd.grad(G, y0)

    g = PoseGuidance(est, target_img, threshold=threshold)
    grad = g.gradient(x_t, 500, eps, abar, codec.decode)
    assert grad.shape == x_t.shape and ref.abs().max() > 0
    assert torch.allclose(grad, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(g.energy(codec.decode(y0.detach())).sum(), G.detach(), rtol=1e-5)   # eq 11 itself


def test_eq11_gradient_is_analytic_for_an_exact_estimator():
    # P_phi = identity on the first 2 channels, decode = identity, image range 0..1:
    # G = sum W (y0 - P)^2  =>  grad = 2 W (y0 - P), W = [sum_k y0_k > 0.1].
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 6, 5, generator=g) * 0.2
    target = torch.rand(1, 2, 6, 5, generator=g)
    guide = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0))
    abar = 0.5
    eps = torch.randn(1, 3, 6, 5, generator=g)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    grad = guide.gradient(x_t, 10, eps, abar, lambda z: z)
    w = (x0[:, :2].sum(1, keepdim=True) > 0.1).float()
    expect = torch.zeros_like(x0)
    expect[:, :2] = 2 * w * (x0[:, :2] - target)
    assert 0 < w.mean() < 1
    assert torch.allclose(grad, expect, atol=1e-5)
    for mode, wm in (("target", target.sum(1, keepdim=True) > 0.1),
                     ("union", (target.sum(1, keepdim=True) > 0.1) | (w > 0))):
        gm = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0),
                          mask_from=mode).gradient(x_t, 10, eps, abar, lambda z: z)
        assert torch.allclose(gm[:, :2], 2 * wm.float() * (x0[:, :2] - target), atol=1e-5)


def test_eq15_and_eq16_numerics_on_a_toy():
    eps = torch.tensor([[[[0.5, -1.0]]]])
    grad = torch.tensor([[[[2.0, 1.0]]]])
    # eq 15 with a = 0.36: eps + sqrt(0.64) grad = eps + 0.8 grad.
    assert torch.allclose(guided_eps(eps, grad, 0.36), torch.tensor([[[[2.1, -0.2]]]]))
    assert torch.allclose(guided_eps(eps, grad, 0.36, scale=0.5), torch.tensor([[[[1.3, -0.6]]]]))
    # eq 13: Tweedie.
    x_t = torch.tensor([[[[1.0, 2.0]]]])
    assert torch.allclose(tweedie_x0(x_t, eps, 0.36), (x_t - 0.8 * eps) / 0.6)

    # The guidance object on a toy: G = sum W (y0 - P)^2 with decode = identity.
    target = torch.full((1, 2, 1, 2), 0.2)
    guide = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0), scale=0.5)
    x_t = torch.tensor([[[[0.9, 0.7]], [[0.1, 0.4]], [[0.0, 0.0]]]])
    eps = torch.tensor([[[[0.3, -0.2]], [[0.1, 0.5]], [[0.0, 0.0]]]])
    a = 0.64
    y0 = (x_t - 0.6 * eps) / 0.8
    grad = torch.zeros_like(y0)
    grad[:, :2] = 2 * (y0[:, :2] - 0.2)                                  # all positions above threshold
    out = guide(x_t, 100, eps, a, lambda z: z)
    assert torch.allclose(out, eps + 0.5 * 0.6 * grad, atol=1e-6)        # eq 15
    # The guided Tweedie estimate moves downhill: y0~ = y0 - (1 - a)/sqrt(a) eta grad lowers G.
    y0_new = tweedie_x0(x_t, out, a)
    assert torch.allclose(y0_new, y0 - (0.36 / 0.8) * 0.5 * grad, atol=1e-6)
    assert guide.energy(y0_new) < guide.energy(y0)
    # eq 16: eps_u + w_c ((eps_c - eps_u) + eta sqrt(1 - a) grad), gradient at the CFG estimate.
    eps_u = eps * 0.5
    cfg = eps_u + 2.0 * (eps - eps_u)
    y0c = (x_t - 0.6 * cfg) / 0.8
    gc = torch.zeros_like(y0c)
    gc[:, :2] = 2 * (y0c[:, :2] - 0.2)
    got = guide.guide_cfg(eps_u, eps, 2.0, x_t, 100, a, lambda z: z)
    assert torch.allclose(got, eps_u + 2.0 * ((eps - eps_u) + 0.5 * 0.6 * gc), atol=1e-6)
    # Inactive outside the timestep range.
    ranged = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), timestep_range=(0, 50))
    assert torch.equal(ranged(x_t, 100, eps, a, lambda z: z), eps)


def test_percent_range_guides_exactly_the_steps_inside_it():
    # ComfyUI's percents: p -> timestep (1 - p) * 999; 0..1 is every step.
    assert percent_timestep_range(0.0, 1.0) is None
    assert percent_timestep_range(0.0, 0.5) == (499.5, 999.0)
    assert percent_timestep_range(0.25, 1.0) == (0.0, 749.25)
    assert percent_timestep_range(0.2, 0.6, num_train_timesteps=11) == (4.0, 8.0)
    for bad in ((0.6, 0.4), (-0.1, 0.5), (0.0, 1.5)):
        with pytest.raises(ValueError, match="start_percent / end_percent"):
            percent_timestep_range(*bad)
    # In a DDIM run (timesteps 900, 800, ..., 0) the first half guides t = 900 .. 500: five decodes, and the
    # steps after them run unguided -- the result differs from both the unguided and the fully guided run.
    target = torch.zeros(1, 2, 6, 6)
    target[:, 0, 1, 1] = target[:, 1, 4, 4] = 1.0

    def run(timestep_range, guided=True):
        sched = DDIMScheduler(beta_schedule="linear", clip_sample=False)
        sched.set_timesteps(10)
        seen = []

        def decode(z):
            seen.append(z.shape)
            return z

        guide = PoseGuidance(ExactEstimator(), target=PoseTarget(target, target), image_range=(0.0, 1.0),
                             threshold=-1.0, timestep_range=timestep_range) if guided else None
        x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
        def predict(x_in, t):  # the exact denoiser of data ~ N(0, 0.25 I)
            a = sched.alphas_cumprod[int(t)]
            return (1 - a).sqrt() / (0.25 * a + 1 - a) * x_in, None, None

        out = denoise_loop(predict, x, sched, guidance_scale=1.0, pose_guidance=guide, decode=decode)
        return out, len(seen), [int(t) for t in sched.timesteps]

    half, decodes, timesteps = run(percent_timestep_range(0.0, 0.5))
    assert timesteps == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0] and decodes == 5
    full, all_decodes, _ = run(None)
    plain, none, _ = run(None, guided=False)
    assert all_decodes == 10 and none == 0
    assert (half - plain).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3
    assert run(percent_timestep_range(0.0, 0.05))[1] == 0          # t >= 949.05: no step of this run


def blob_image(points, size=16, sigma=1.5):
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    img = torch.zeros(1, 3, size, size)
    for k, (x, y) in enumerate(points):
        img[0, k] = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img


def test_guidance_lowers_pose_error_with_an_exact_estimator():
    # Pixel-space toy: data ~ N(m, s^2 I) where the mean m leaks the source pose (half source joints, half target
    # joints); the exact Gaussian denoiser is the "model". The estimator is exact (heatmaps = the image's channels).
    size, s2 = 16, 0.25
    target = blob_image([(4, 4), (11, 12)], size)
    source = blob_image([(9, 5), (5, 11)], size)
    m = 0.5 * source + 0.5 * target

    def keypoints(x):
        flat = x[0, :2].flatten(1).argmax(1)
        return torch.stack([flat % size, flat // size], 1).float()

    def run(guided, seed):
        sched = DDIMScheduler(beta_schedule="linear", clip_sample=False)
        sched.set_timesteps(25)

        def predict(x, t):
            a = sched.alphas_cumprod[int(t)]
            x0 = m + a.sqrt() * s2 / (a * s2 + 1 - a) * (x - a.sqrt() * m)      # exact posterior mean
            return (x - a.sqrt() * x0) / (1 - a).sqrt(), None, None

        guide = PoseGuidance(ExactEstimator(), target=PoseTarget(target[:, :2], target[:, :2]),
                             image_range=(0.0, 1.0)) if guided else None
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
        return denoise_loop(predict, x, sched, guidance_scale=1.0, pose_guidance=guide, decode=lambda z: z)

    kp_target = keypoints(target)
    errors = {False: [], True: []}
    heat = {False: [], True: []}
    for seed in range(3):
        for guided in (False, True):
            out = run(guided, seed)
            errors[guided].append((keypoints(out) - kp_target).norm(dim=1).mean().item())
            heat[guided].append((out[:, :2] - target[:, :2]).square().sum().item())
    print("keypoint error", np.mean(errors[False]), "->", np.mean(errors[True]),
          "heatmap error", np.mean(heat[False]), "->", np.mean(heat[True]))
    assert np.mean(errors[True]) < 0.5 * np.mean(errors[False])
    assert np.mean(heat[True]) < np.mean(heat[False])


def test_pose_estimator_adapters_and_coco17_heatmaps():
    class Pair(nn.Module):
        def forward(self, x):
            return x[:, :2], x.mean(1, keepdim=True)

    class Dict(nn.Module):
        def forward(self, x):
            return {"heatmaps": x[:, :1], "features": x}

    x = torch.rand(1, 3, 8, 8)
    e = as_pose_estimator(Pair())
    est = e(x)
    assert est.heatmaps.shape == (1, 2, 8, 8) and e.num_joints == 2
    assert as_pose_estimator(Dict())(x).features.shape == (1, 3, 8, 8)
    single = as_pose_estimator(nn.Identity(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(x)
    assert torch.allclose(single.heatmaps, x * 2 - 1)
    with pytest.raises(TypeError):
        as_pose_estimator(lambda x: x)
    xy = [(10 + j, 5 + 2 * j) for j in range(18)]
    hm = pose_heatmaps_coco17(Pose([Person.from_xy(xy)], 32, 48))
    assert hm.shape == (1, 17, 48, 32)
    peaks = hm[0].flatten(1).argmax(1)
    # COCO-17: 0 nose, 1 left eye (OpenPose 15), 6 right shoulder (OpenPose 2), 16 right ankle (OpenPose 10).
    for coco, op in ((0, 0), (1, 15), (6, 2), (16, 10)):
        assert int(peaks[coco] % 32) == xy[op][0] and int(peaks[coco] // 32) == xy[op][1]


# --------------------------------------------------------------------------------------- HigherHRNet layout

def test_higher_hrnet_w32_has_the_official_state_dict_layout():
    net = HigherHRNet(**HIGHER_HRNET_W32_CONFIG)
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 28_645_331        # HigherHRNet-W32: 28.6 M
    shapes = {
        "conv1.weight": (64, 3, 3, 3), "bn2.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.3.conv3.weight": (256, 64, 1, 1),
        "transition1.0.0.weight": (32, 256, 3, 3), "transition1.1.0.0.weight": (64, 256, 3, 3),
        "transition2.2.0.0.weight": (128, 64, 3, 3), "transition3.3.0.0.weight": (256, 128, 3, 3),
        "stage2.0.branches.1.3.conv2.weight": (64, 64, 3, 3), "stage2.0.fuse_layers.0.1.0.weight": (32, 64, 1, 1),
        "stage2.0.fuse_layers.1.0.0.0.weight": (64, 32, 3, 3), "stage3.3.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3),
        "stage3.3.fuse_layers.2.0.0.1.num_batches_tracked": (), "stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),
        "final_layers.0.weight": (34, 32, 1, 1), "final_layers.1.bias": (17,),
        "deconv_layers.0.0.0.weight": (66, 32, 4, 4), "deconv_layers.0.4.0.bn2.running_var": (32,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("stage4.2.fuse_layers.1") for k in sd)  # last module: highest resolution only
    assert not any(k.startswith("transition2.0") or k.startswith("transition2.1") for k in sd)
    assert "stage4.0.fuse_layers.3.2.0.0.weight" in sd


def test_higher_hrnet_checkpoint_loads_with_weights_only(tmp_path):
    cfg = dict(HIGHER_HRNET_W32_CONFIG, stem_channels=8, stage_channels=(4, 8, 8, 8), stage_modules=(1, 1, 1),
               blocks_per_branch=1, layer1_blocks=1, deconv_channels=(4,), deconv_basic_blocks=1)
    torch.manual_seed(0)
    net = HigherHRNet(**cfg).eval()
    sd = {("module." + k): v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "hrnet.pth")
    est = load_higher_hrnet(tmp_path / "hrnet.pth", cfg)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = est(x)
        outputs, feats = net((x - est.mean) / est.std, return_features=True)
    assert out.heatmaps.shape == (1, 17, 32, 32) and out.features.shape == (1, 4, 16, 16)
    up = torch.nn.functional.interpolate(outputs[0][:, :17], size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out.heatmaps, (up + outputs[1]) / 2, atol=1e-6)   # official test-time average
    assert torch.allclose(out.features, feats)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_higher_hrnet(tmp_path / "bad.pth", cfg)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_higher_hrnet(tmp_path / "hrnet.pth", dict(cfg, stage_channels=(4, 8, 8, 16)))
    assert isinstance(est, HigherHRNetEstimator) and est.num_joints == 17


# -------------------------------------------------------------------------------------- denoiser and training

def tiny_denoiser(seed=0):
    torch.manual_seed(seed)
    return RePoseDenoiser(unet_config=TINY_UNET_CONFIG)


def test_hybrid_loss_matches_diffusers_variance_and_vanishes_at_the_true_posterior():
    sched = repose_noise_scheduler()
    g = torch.Generator().manual_seed(0)
    y0, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([0, 10, 700])
    y_t = sched.add_noise(y0, noise, t)
    # Exact eps and v = -1 (the posterior variance): the KL terms (t >= 1) are zero, mse is zero.
    out = torch.cat([noise, -torch.ones_like(noise)], 1)
    losses = hybrid_loss(out[1:], noise[1:], y_t[1:], y0[1:], t[1:], sched)
    assert losses["mse"] < 1e-10 and abs(losses["vlb"]) < 1e-6
    # The learned-range log variance is diffusers' own (DDPMScheduler._get_variance) for t >= 1.
    v = torch.rand(1, 4, 4, 4, generator=g) * 2 - 1
    ours = None
    for tt in (10, 700):
        expect = sched._get_variance(tt, predicted_variance=v)
        frac = (v + 1) / 2
        post = sched.betas[tt] * (1 - sched.alphas_cumprod[tt - 1]) / (1 - sched.alphas_cumprod[tt])
        ours = frac * torch.log(sched.betas[tt]) + (1 - frac) * torch.log(post)
        assert torch.allclose(ours, expect, atol=1e-3)   # diffusers takes beta_t = 1 - a_t / a_{t-1} in fp32
    # A wrong variance costs; lambda scales the vlb term into the loss as lambda * T * L_t.
    bad = torch.cat([noise, torch.ones_like(noise)], 1)
    l1 = hybrid_loss(bad[1:], noise[1:], y_t[1:], y0[1:], t[1:], sched, vlb_weight=0.001)
    l2 = hybrid_loss(bad[1:], noise[1:], y_t[1:], y0[1:], t[1:], sched, vlb_weight=0.002)
    assert l1["vlb"] > 0 and torch.isclose(l2["loss"] - l1["loss"], l1["vlb"], rtol=1e-4)
    # t = 0: the decoder term is the Gaussian NLL of y_0 (in bits / dim).
    l0 = hybrid_loss(bad[:1], noise[:1], y_t[:1], y0[:1], t[:1], sched)
    assert torch.isfinite(l0["loss"]) and torch.isfinite(l0["vlb"])


def test_denoiser_null_condition_and_round_trip(tmp_path):
    den = tiny_denoiser()
    with torch.no_grad():
        den.null_pose.fill_(0.5)
    x = torch.randn(2, 4, 8, 6)
    p1, p2 = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    f1, f2 = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    with torch.no_grad():
        a = den(x, 10, p1, f1, drop_condition=torch.tensor([True, False])).sample
        b = den(x, 10, p2, f2, drop_condition=torch.tensor([True, False])).sample
    assert a.shape == (2, 8, 8, 6)                                       # eps + learned variance
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1], atol=1e-3)
    den.save_pretrained(tmp_path / "den")
    again = RePoseDenoiser.from_pretrained(tmp_path / "den")
    with torch.no_grad():
        assert torch.allclose(again(x, 10, p1, f1).sample, den(x, 10, p1, f1).sample, atol=1e-5)


def test_thirty_training_steps_lower_the_loss():
    den = tiny_denoiser()
    torch.manual_seed(1)
    align = PoseAlign(**dict(TINY_POSE_ALIGN_CONFIG, num_iterations=1))
    codec = VaeCodec(tiny_vae())
    sched = repose_noise_scheduler()
    g = torch.Generator().manual_seed(0)
    batch = {"target_latents": codec.encode(torch.rand(4, 3, 16, 12, generator=g) * 2 - 1),
             "pose_latents": codec.encode(torch.rand(4, 3, 16, 12, generator=g) * 2 - 1),
             "source_image": torch.rand(4, 3, 16, 12, generator=g) * 2 - 1}
    cfg = RePoseTrainConfig()                                            # the paper's AdamW 1e-4
    opt = make_optimizer([den, align], cfg)
    ema = make_ema([den, align], cfg.ema_decay)
    eval_t = torch.tensor([50, 250, 500, 900])
    eval_noise = torch.randn(4, 4, 8, 6, generator=g)
    no_drop = torch.zeros(4, dtype=torch.bool)

    def evaluate():
        with torch.no_grad():
            return training_step(den, batch, scheduler=sched, pose_align=align, encode=codec.encode, config=cfg,
                                 timesteps=eval_t, noise=eval_noise, drop=no_drop)

    before = evaluate()
    logs = [training_step(den, batch, scheduler=sched, optimizer=opt, pose_align=align, encode=codec.encode,
                          ema=ema, config=cfg, generator=g) for _ in range(30)]
    after = evaluate()
    print("loss", before, "->", after)
    assert all(np.isfinite(log["loss"]) for log in logs)
    assert after["loss"] < 0.93 * before["loss"]                         # 1.196 -> 1.035 here
    assert ema.optimization_step == 30


# ----------------------------------------------------------------------------------------------- sampler

def test_sampler_end_to_end_at_tiny_size():
    den = tiny_denoiser()
    torch.manual_seed(2)
    align = PoseAlign(**TINY_POSE_ALIGN_CONFIG)
    with torch.no_grad():
        for agg in align.aggregators:
            agg.head.weight.normal_(0, 0.05)
    sampler = RePoseSampler(den, align, tiny_vae())
    src, pose = torch.rand(1, 3, 16, 12), torch.rand(1, 3, 16, 12)
    seen = []
    out = sampler(src, pose, num_inference_steps=4, seed=3, callback=lambda s: seen.append((s.index, s.total)))
    assert out.images.shape == (1, 3, 16, 12) and 0 <= out.images.min() and out.images.max() <= 1
    assert out.warped_preview.shape == (1, 3, 16, 12) and out.flow.shape == (1, 2, 16, 12)
    assert seen == [(i, 4) for i in range(4)]
    same = sampler(src, pose, num_inference_steps=4, seed=3)
    other = sampler(src, pose, num_inference_steps=4, seed=4)
    assert torch.equal(out.images, same.images) and not torch.allclose(out.images, other.images)
    guidance = PoseGuidance(TinyPoseEstimator(), threshold=-1.0)        # W_h = 1: the random estimator steers
    guided = sampler(src, pose, num_inference_steps=4, seed=3, pose_guidance=guidance)
    assert not torch.allclose(guided.images, out.images)
    assert not guidance.has_target                                      # the call's pose was used, not stored
    fixed = RePoseSampler(RePoseDenoiser(unet_config=TINY_UNET_CONFIG, learn_sigma=False), align, tiny_vae())
    assert fixed(src, pose, num_inference_steps=2, seed=3).images.shape == (1, 3, 16, 12)
    ddim = sampler(src, pose, num_inference_steps=3, seed=3, guidance_scale=1.0, output_type="latent",
                   scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False))
    assert ddim.images is None and ddim.latents.shape == (1, 4, 8, 6)
    with pytest.raises(SamplingInterrupted):
        sampler(src, pose, num_inference_steps=4, seed=3, callback=lambda s: s.index < 1)
