"""Single spatial transformation (core.flow_models.single_transform, .losses, .train_single): correlation and
gamma against brute force, chunked == naive, eq 7 at s_f, forward at tiny size, a 30-step training run,
save/load, the FlowWarp adapter."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posetransfer.core.flow import affine_to_flow, base_coords, resize_flow, warp
from posetransfer.core.flow_models.losses import (
    MultiScalePerceptualLoss, PoseConditionedDiscriminator, VGG19Features, adversarial_discriminator_loss,
    adversarial_generator_loss, affine_preserving_loss, invert_affine, make_affine_task, random_upright_affine,
    vgg19_layer_index, vgg19_min_size)
from posetransfer.core.flow_models.single_transform import (
    TINY_FLOW_NET_CONFIG, TINY_REFINER_CONFIG, SingleTransformEstimator, SingleTransformFlowNet,
    SingleTransformRefiner, guided_correlation, guided_correlation_naive, pose_to_heatmaps,
    soft_mutual_nn_filter)
from posetransfer.core.flow_models.train_single import (
    SingleTrainConfig, SingleTransformModels, make_optimizers, train_step)
from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp
from posetransfer.core.pose.keypoints import Person, Pose

S = TINY_FLOW_NET_CONFIG["sample_size"]
# A stick figure on a 32 x 32 canvas (COCO-18 order).
FIGURE = np.array([[16, 5], [16, 9], [13, 9], [12, 13], [12, 17], [19, 9], [20, 13], [20, 17], [14, 17], [14, 22],
                   [14, 27], [18, 17], [18, 22], [18, 27], [15, 4], [17, 4], [14, 5], [18, 5]], float)


def figure(offset=(0.0, 0.0), scale=1.0, width=S, height=S) -> Pose:
    xy = (FIGURE - 16) * scale + 16 + np.asarray(offset)
    return Pose([Person.from_xy([tuple(p) for p in xy])], width, height)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: one thread is fastest and immune to other load on the machine
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ correlation

def brute_force(z_s, z_t):
    """Eq 1, eq 9, Q = gamma C, eq 2 with explicit loops over (i, j, v, u); returns (C, gamma, Q) as 4-D arrays."""
    zs, zt = z_s[0].double().numpy(), z_t[0].double().numpy()
    m, h, w = zs.shape
    c = np.zeros((h, w, h, w))
    for i in range(h):
        for j in range(w):
            for v in range(h):
                for u in range(w):
                    c[i, j, v, u] = sum(zs[r, i, j] * zt[r, v, u] for r in range(m))        # eq 1
    gamma = np.zeros_like(c)
    for i in range(h):
        for j in range(w):
            for v in range(h):
                for u in range(w):
                    gamma[i, j, v, u] = (c[i, j, v, u] / c[:, :, v, u].max()) * (c[i, j, v, u] / c[i, j].max())
    q = gamma * c
    for v in range(h):
        for u in range(w):
            q[:, :, v, u] /= math.sqrt((q[:, :, v, u] ** 2).sum())                           # eq 2
    return c, gamma, q


def test_correlation_and_gamma_equal_brute_force():
    torch.manual_seed(0)
    z_s, z_t = torch.rand(1, 3, 3, 4), torch.rand(1, 3, 3, 4)
    c, gamma, q = brute_force(z_s, z_t)
    n = 12
    corr = torch.bmm(z_s.flatten(2).transpose(1, 2), z_t.flatten(2))
    np.testing.assert_allclose(corr[0].numpy(), c.reshape(n, n), atol=1e-6)
    np.testing.assert_allclose(soft_mutual_nn_filter(corr)[0].numpy(), gamma.reshape(n, n), atol=1e-6)
    # Rasterised layout: channel i * w1 + j = source (i, j), pixel (v, u) = target.
    expected = q.reshape(n, 3, 4)
    np.testing.assert_allclose(guided_correlation_naive(z_s, z_t)[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(guided_correlation(z_s, z_t, chunk_size=5)[0].numpy(), expected, atol=1e-6)
    # gamma keeps mutual best matches at 1 and is below 1 elsewhere.
    assert gamma.max() <= 1 + 1e-12


@pytest.mark.parametrize("chunk", [4, 7, 64, 89])
def test_chunked_equals_naive_values_and_gradients(chunk):
    torch.manual_seed(1)
    z_s = torch.rand(2, 5, 10, 9, dtype=torch.float64, requires_grad=True)
    z_t = torch.rand(2, 5, 10, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 90, 10, 9, dtype=torch.float64)
    naive = guided_correlation_naive(z_s, z_t)
    chunked = guided_correlation(z_s, z_t, chunk_size=chunk)
    assert chunked.shape == (2, 90, 10, 9)
    assert (chunked - naive).abs().max() < 1e-5
    g_naive = torch.autograd.grad((naive * weight).sum(), (z_s, z_t))
    g_chunk = torch.autograd.grad((chunked * weight).sum(), (z_s, z_t))
    for a, b in zip(g_naive, g_chunk):
        assert (a - b).abs().max() < 1e-8
    with torch.no_grad():
        f32 = guided_correlation(z_s.float(), z_t.float(), chunk_size=chunk)
    assert (f32 - naive.float()).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ models

def tiny_net(**kw) -> SingleTransformFlowNet:
    torch.manual_seed(0)
    return SingleTransformFlowNet(**{**TINY_FLOW_NET_CONFIG, **kw})


class FixedGrid(torch.nn.Module):
    """A stand-in flow head that outputs a fixed normalised grid (B, 2, h1, w1)."""

    def __init__(self, grid):
        super().__init__()
        self.grid = grid

    def forward(self, q):
        return self.grid.expand(q.shape[0], -1, -1, -1)


def identity_grid(h):
    x = (2 * torch.arange(h, dtype=torch.float32) + 1) / h - 1
    return torch.stack(torch.meshgrid(x, x, indexing="xy"))[None]    # channel 0 = x, 1 = y


def test_flow_net_forward_tiny_and_flow_convention():
    net = tiny_net().eval()
    poses = torch.stack([pose_to_heatmaps(figure(), S, 2.0), pose_to_heatmaps(figure((3, -2)), S, 2.0)])
    image = torch.rand(2, 3, S, S)
    out = net(poses, poses.flip(0), image)
    assert out.flow.shape == (2, 2, S, S) and out.flow_lowres.shape == (2, 2, 8, 8)
    assert out.grid_lowres.shape == (2, 8, 8, 2) and out.warped.shape == (2, 3, S, S)
    assert torch.isfinite(out.flow).all()
    # Encoder features: every channel's 8 x 8 map has unit l2 norm (appendix A).
    z = net.encoder(poses)
    assert torch.allclose(z.flatten(2).norm(dim=2), torch.ones(2, 8), atol=1e-5)
    # The head's output is read as normalised source positions: identity -> zero flow, a shift of 0.25 in
    # normalised x -> 0.25 * 32 / 2 = 4 source pixels; the warped image follows.
    net.flow_head = FixedGrid(identity_grid(8))
    out = net(poses, poses, image)
    assert out.flow.abs().max() < 1e-4 and torch.allclose(out.warped, image, atol=1e-5)
    net.flow_head = FixedGrid(identity_grid(8) + torch.tensor([0.25, 0.0]).view(1, 2, 1, 1))
    out = net(poses, poses, image)
    assert torch.allclose(out.flow[:, 0], torch.full((2, S, S), 4.0), atol=1e-4)
    assert torch.allclose(out.flow_lowres[:, 0], torch.full((2, 8, 8), 1.0), atol=1e-5)
    assert torch.allclose(out.warped[..., :-4], image[..., 4:], atol=1e-5)
    with pytest.raises(ValueError, match="sample_size"):
        net(poses[:, :, :16, :16], poses[:, :, :16, :16])


def test_chunked_model_equals_naive_model():
    net = tiny_net().eval()
    poses = torch.stack([pose_to_heatmaps(figure(), S, 2.0), pose_to_heatmaps(figure((2, 1), 1.1), S, 2.0)])
    with torch.no_grad():
        a = net(poses, poses.flip(0)).flow
        net.chunk_size = None
        b = net(poses, poses.flip(0)).flow
    assert (a - b).abs().max() < 1e-4


def test_refiner_forward_tiny():
    torch.manual_seed(0)
    ref = SingleTransformRefiner(**TINY_REFINER_CONFIG)
    y = ref(torch.rand(2, 3, S, S), torch.randn(2, 2, S, S))
    assert y.shape == (2, 3, S, S) and 0 <= y.min() and y.max() <= 1
    assert ref.encoder(torch.rand(1, 3, S, S)).shape == (1, 16, 8, 8)   # paper: 256 x 64 x 64 for 256 x 256


# ---------------------------------------------------------------------------------------------- losses

def test_affine_preserving_loss_is_zero_at_s_f():
    g = torch.Generator().manual_seed(0)
    target = torch.stack([pose_to_heatmaps(figure(), S, 3.0)] * 3)
    matrices = random_upright_affine(3, (S, S), generator=g)
    p_st, s_f = make_affine_task(target, matrices)
    assert affine_preserving_loss(s_f, s_f) == 0
    # s_f on the correlation grid (what the model's flow_lowres is compared with) is the exact resize.
    low = resize_flow(s_f, (8, 8))
    assert affine_preserving_loss(low, s_f) < 1e-5
    assert torch.allclose(low, affine_to_flow(invert_affine(_scale_affine(matrices, 0.25)), (8, 8)), atol=1e-4)
    # s_f brings p_st back onto p_t (up to bilinear blur; away from the borders, where p_st had no content).
    back = warp(p_st, s_f, padding_mode="zeros")
    err = (back - target)[..., 6:-6, 6:-6].abs().amax(dim=(1, 2, 3))
    moved = (p_st - target)[..., 6:-6, 6:-6].abs().amax(dim=(1, 2, 3))
    print("max error after s_f", err, "before", moved)
    assert (err < 0.1).all() and (err < 0.2 * moved).all()
    # The loss is the mean absolute difference in pixels of the flow's grid.
    assert torch.isclose(affine_preserving_loss(s_f + torch.tensor([1.0, -3.0]).view(1, 2, 1, 1), s_f),
                         torch.tensor(2.0))


def _scale_affine(m, s):
    """The same map in the coordinates of a grid scaled by s (pixel centres: x' = (x + 0.5) s - 0.5)."""
    t = torch.tensor([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])
    full = torch.cat([m, torch.tensor([[[0, 0, 1.0]]]).expand(m.shape[0], 1, 3)], 1)
    return (t @ full @ torch.linalg.inv(t))[:, :2]


def test_random_affines_keep_skeletons_upright():
    m = random_upright_affine(500, (256, 256), generator=torch.Generator().manual_seed(3))
    vertical = m[:, :, :2] @ torch.tensor([0.0, 1.0])
    tilt = torch.rad2deg(torch.atan2(vertical[:, 0].abs(), vertical[:, 1]))
    assert tilt.max() < 17 and tilt.mean() > 1
    eye = torch.cat([m, torch.tensor([[[0, 0, 1.0]]]).expand(500, 1, 3)], 1) @ \
        torch.cat([invert_affine(m), torch.tensor([[[0, 0, 1.0]]]).expand(500, 1, 3)], 1)
    assert torch.allclose(eye, torch.eye(3).expand(500, 3, 3), atol=1e-4)


def test_vgg19_layout_and_torchvision_state_dict(tmp_path):
    assert [vgg19_layer_index(n) for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")] == \
        [1, 6, 11, 20, 29]
    assert vgg19_layer_index("relu5_2") == 31 and vgg19_layer_index("pool2") == 9
    torch.manual_seed(0)
    sd = {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64),
          "features.2.weight": torch.randn(64, 64, 3, 3), "features.2.bias": torch.randn(64),
          "classifier.0.weight": torch.randn(2, 2)}
    torch.save(sd, tmp_path / "vgg19.pth")
    net = VGG19Features.from_torchvision_file(tmp_path / "vgg19.pth", layers=("relu1_1", "relu1_2"))
    assert torch.equal(net.features[2].weight, sd["features.2.weight"])
    x = torch.rand(1, 3, 8, 8)
    feats = net(x)
    ref = F.relu(F.conv2d((x - net.mean) / net.std, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    assert torch.allclose(feats["relu1_1"], ref, atol=1e-5) and feats["relu1_2"].shape == (1, 64, 8, 8)
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="missing"):
        VGG19Features(("relu2_1",)).load_torchvision_state_dict(sd)


def test_perceptual_loss_rejects_scales_too_small_for_its_layers():
    # relu N_1 sits behind N - 1 2x2 max-pools; a pool layer counts its own.
    assert [vgg19_min_size(n) for n in ("relu1_1", "relu1_2", "pool1", "relu2_1", "conv4_4", "relu5_1", "pool5")] \
        == [1, 1, 2, 2, 8, 16, 32]
    per = MultiScalePerceptualLoss(VGG19Features(("relu1_1", "relu5_1"), width_divisor=16))  # the extractor's layers
    per.check_input_size(128, 128)                       # 16x16 at 1/8: enough; 1/8 of 128x96 is 16x12:
    with pytest.raises(ValueError, match=r"scale 0.125 a 128x96 image is 16x12, smaller than the 16 px that relu5_1"):
        per(torch.rand(1, 3, 128, 96), torch.rand(1, 3, 128, 96))
    shallow = MultiScalePerceptualLoss(VGG19Features(("relu1_1", "relu2_1"), width_divisor=16), layers=("relu2_1",))
    shallow.check_input_size(16, 16)                     # 2x2 at 1/8: enough for relu2_1
    with pytest.raises(ValueError, match="relu2_1"):
        shallow.check_input_size(8, 8)


def test_perceptual_and_adversarial_losses():
    torch.manual_seed(0)
    per = MultiScalePerceptualLoss(VGG19Features(("relu1_1", "relu2_1"), width_divisor=16))
    a, b = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    assert per(a, a) == 0 and per(a, b) > 0
    d = PoseConditionedDiscriminator(channels=(8, 16))
    pose = torch.rand(2, 18, S, S)
    g_loss = adversarial_generator_loss(d, a, pose)
    d_loss = adversarial_discriminator_loss(d, a, b, pose)
    assert 0 <= g_loss <= 1 and 0 <= d_loss <= 2     # eq 6 with D a probability
    assert adversarial_generator_loss(d, a, pose, "lsgan") >= 0


# -------------------------------------------------------------------------------------------- training

def synthetic_batch(n=4, seed=0):
    """Pairs where the target is the source translated with its pose (the flow to find is that translation)."""
    rng = np.random.default_rng(seed)
    batch = {k: [] for k in ("source_image", "target_image", "source_pose", "target_pose")}
    for i in range(n):
        o, d = rng.uniform(-3, 3, 2), rng.uniform(-4, 4, 2)
        tex = F.interpolate(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)), size=(S, S),
                            mode="bilinear", align_corners=False)
        shift = torch.tensor(-d, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, S, S)
        batch["source_image"].append(tex[0])
        batch["target_image"].append(warp(tex, shift)[0])
        batch["source_pose"].append(pose_to_heatmaps(figure(o), S, 2.0))
        batch["target_pose"].append(pose_to_heatmaps(figure(o + d), S, 2.0))
    return {k: torch.stack(v) for k, v in batch.items()}


def tiny_models():
    torch.manual_seed(0)
    return SingleTransformModels(SingleTransformFlowNet(**TINY_FLOW_NET_CONFIG),
                                 SingleTransformRefiner(**TINY_REFINER_CONFIG),
                                 PoseConditionedDiscriminator(channels=(8, 16))).train()


def test_thirty_training_steps_lower_both_task_losses():
    batch = synthetic_batch()
    models = tiny_models()
    # lambda2 = 1 instead of the paper's 0.001: the two tasks share one Adam state, and with 0.001 the affine
    # task barely moves W in 15 steps; here both tasks' progress must show.
    config = SingleTrainConfig(lr=1e-3, discriminator_lr=1e-3, lambda2=1.0)
    opt = make_optimizers(models, config)
    per = MultiScalePerceptualLoss(VGG19Features(("relu1_1", "relu2_1"), width_divisor=16))
    g = torch.Generator().manual_seed(0)
    logs = [train_step(models, opt, per, batch, step, config, generator=g) for step in range(30)]
    affine = [log["affine"] for log in logs if log["task"] == 1]
    recon = [log["loss"] for log in logs if log["task"] == 2]
    assert len(affine) == len(recon) == 15 and all("generative" in log for log in logs if log["task"] == 2)
    print("affine", [round(v, 3) for v in affine], "reconstruction", [round(v, 3) for v in recon])
    assert np.mean(affine[-3:]) < 0.7 * np.mean(affine[:3])
    assert np.mean(recon[-3:]) < 0.8 * np.mean(recon[:3])


def test_two_phase_schedule():
    batch = synthetic_batch(2)
    models = tiny_models()
    config = SingleTrainConfig(schedule="two_phase", phase1_steps=2)
    opt = make_optimizers(models, config)
    per = MultiScalePerceptualLoss(VGG19Features(("relu1_1",), width_divisor=16), scales=(1.0, 0.5))
    logs = [train_step(models, opt, per, batch, step, config) for step in range(4)]
    assert [log["phase"] for log in logs] == [1, 1, 2, 2]
    assert "generative" not in logs[1] and "generative" in logs[3] and "discriminator" in logs[3]
    lrs = {g["name"]: g["lr"] for g in opt.generator.param_groups}
    assert lrs == {"flow_net": 1e-8, "refiner_encoder": 1e-8, "refiner_decoder": 1e-4}


# --------------------------------------------------------------------------------------- save / adapter

def test_save_load_gives_identical_outputs(tmp_path):
    models = tiny_models()
    batch = synthetic_batch(2)
    models.flow_net.train()(batch["source_pose"], batch["target_pose"])   # move BatchNorm statistics
    models.train(False)
    with torch.no_grad():
        out = models.flow_net(batch["source_pose"], batch["target_pose"], batch["source_image"])
        y = models.refiner(batch["source_image"], out.flow)
        d = models.discriminator(y, batch["target_pose"])
    models.flow_net.save_pretrained(tmp_path / "ckpt" / "flow_net")
    models.refiner.save_pretrained(tmp_path / "ckpt" / "refiner")
    models.discriminator.save_pretrained(tmp_path / "ckpt" / "discriminator")
    assert (tmp_path / "ckpt" / "flow_net" / "diffusion_pytorch_model.safetensors").is_file()
    net = SingleTransformFlowNet.from_pretrained(tmp_path / "ckpt" / "flow_net").eval()
    ref = SingleTransformRefiner.from_pretrained(tmp_path / "ckpt" / "refiner").eval()
    dis = PoseConditionedDiscriminator.from_pretrained(tmp_path / "ckpt" / "discriminator").eval()
    assert tuple(net.config.encoder_channels) == tuple(models.flow_net.config.encoder_channels)
    with torch.no_grad():
        out2 = net(batch["source_pose"], batch["target_pose"], batch["source_image"])
        y2 = ref(batch["source_image"], out2.flow)
        assert torch.equal(out.flow, out2.flow) and torch.equal(out.warped, out2.warped)
        assert torch.equal(y, y2) and torch.equal(d, dis(y2, batch["target_pose"]))
    est = SingleTransformEstimator.from_pretrained(tmp_path / "ckpt")
    assert est.refiner is not None
    flow, vis = est.estimate(batch["source_image"][:1], figure(), figure((2, 0)))
    assert flow.shape == (1, 2, S, S) and vis.shape == (1, 1, S, S)


def test_estimator_maps_model_square_to_canvases():
    net = tiny_net().eval()
    net.flow_head = FixedGrid(identity_grid(8))     # identity on the model's square
    est = SingleTransformEstimator(net)
    # Source 64 x 128 (h x w), target 32 x 64: both fill the square's width, so the identity on the square is
    # "same relative position": target x -> source (x + 0.5) * 2 - 0.5.
    src_pose, tgt_pose = figure(width=128, height=64), figure(width=64, height=32)
    flow, vis = est.estimate(torch.rand(1, 3, 64, 128), src_pose, tgt_pose)
    assert flow.shape == (1, 2, 32, 64) and vis.shape == (1, 1, 32, 64)
    xy = base_coords(32, 64)
    expected = (xy + 0.5) * 2 - 0.5 - xy
    assert (flow - expected).abs().max() < 1e-3 and vis.min() == 1
    # FlowWarp with method="single" takes the flow from the estimator (the target pose as given: no retarget).
    image = np.random.default_rng(0).random((64, 128, 3)).astype(np.float32)
    res = flow_warp([image], [src_pose], [tgt_pose], FlowWarpOptions(method="single", retarget=False, segmentation="skeleton"),
                    estimator=est)[0]
    assert res.image.shape == (3, 32, 64) and torch.allclose(res.flow, flow[0])
