"""Structure-aware part flow (core.flow_models.part_flow_net / part_flow_losses): blocks, forward, losses,
two-stage training on tiny synthetic data, save/load, and the FlowWarp adapter."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from posetransfer.core.flow import resize_flow
from posetransfer.core.flow_models.part_flow_losses import (
    PartFlowDiscriminator, PartFlowLossWeights, discriminator_loss, generator_adversarial_loss, gram_matrix,
    make_optimizer, part_sampling_correctness_loss, perceptual_loss, sampling_correctness_loss, stage1_step,
    stage2_step, style_loss)
from posetransfer.core.flow_models.part_flow_net import (
    PART_FLOW_TINY_CONFIG, HybridDilatedBlock, PartFlowEstimator, PartFlowNet, PyramidNonLocalBlock,
    collate_pairs, make_pair, sub_pose_masks)
from posetransfer.core.pose.keypoints import Person, Pose
from posetransfer.core.body.parts import SUB_POSES
from posetransfer.core.pose.render import render_part_labels

S = 32  # tiny canvas
BASE = [(16, 5), (16, 9), (12, 9), (10, 14), (9, 18), (20, 9), (22, 14), (23, 18), (13, 18), (13, 24), (13, 30),
        (19, 18), (19, 24), (19, 30), (15, 4), (17, 4), (14, 5), (18, 5)]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; the machine is shared
    yield
    torch.set_num_threads(n)


def tiny_model(seed=0, **over):
    torch.manual_seed(seed)
    return PartFlowNet(**{**PART_FLOW_TINY_CONFIG, **over})


class TinyExtractor(nn.Module):
    """Random stand-in for VGG-19: five stages (pooling between), two convs each, VGG layer names."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 8, 8, 12, 12, 12]
        self.convs = nn.ModuleList()
        for k in range(5):
            a = nn.Conv2d(chans[k], chans[k + 1], 3, padding=1)
            b = nn.Conv2d(chans[k + 1], chans[k + 1], 3, padding=1)
            for conv in (a, b):
                conv.weight.data = torch.randn(conv.weight.shape, generator=g) * math.sqrt(2 / conv.weight[0].numel())
                conv.bias.data.zero_()
            self.convs.append(nn.ModuleList([a, b]))
        self.requires_grad_(False)

    def forward(self, x):
        out, h = {}, x * 2 - 1
        for k, (a, b) in enumerate(self.convs, start=1):
            if k > 1:
                h = F.avg_pool2d(h, 2)
            h = F.relu(a(h))
            out[f"relu{k}_1"] = h
            h = F.relu(b(h))
            out[f"relu{k}_2"] = out[f"relu{k}_4"] = h
        return out


def pose(points) -> Pose:
    return Pose([Person.from_xy(points)], S, S)


def moved(points, rng):
    """The base skeleton shifted, arms and legs swung a little."""
    dx, dy = rng.uniform(-3, 3, 2)
    pts = [(x + dx, y + dy) for x, y in points]

    def swing(p, about, deg):
        a = math.radians(deg)
        x, y = p[0] - about[0], p[1] - about[1]
        return (about[0] + x * math.cos(a) - y * math.sin(a), about[1] + x * math.sin(a) + y * math.cos(a))

    for sh, el, wr in ((2, 3, 4), (5, 6, 7)):
        d = rng.uniform(-35, 35)
        pts[el], pts[wr] = swing(pts[el], pts[sh], d), swing(pts[wr], pts[sh], d)
    for hip, kn, an in ((8, 9, 10), (11, 12, 13)):
        d = rng.uniform(-12, 12)
        pts[kn], pts[an] = swing(pts[kn], pts[hip], d), swing(pts[an], pts[hip], d)
    return pts


def picture(p: Pose, palette: np.ndarray) -> np.ndarray:
    """A 'person' whose body parts are flat colours (palette row = part label) on grey."""
    return palette[render_part_labels(p)]


def synthetic_batch(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        palette = np.concatenate([[[0.5, 0.5, 0.5]], rng.uniform(0, 1, (10, 3))]).astype(np.float32)
        ps, pt = pose(moved(BASE, rng)), pose(moved(BASE, rng))
        pairs.append(make_pair(model, picture(ps, palette), ps, picture(pt, palette), pt))
    return collate_pairs(pairs)


# ----------------------------------------------------------------------------------------------- blocks

def test_hybrid_dilated_block_receptive_field_is_rates_sum():
    torch.manual_seed(0)
    block = HybridDilatedBlock(2, [1, 2], norm="none")
    x = torch.zeros(1, 2, 17, 17, requires_grad=True)
    block(x)[0, :, 8, 8].sum().backward()
    reach = (x.grad.abs().sum(1)[0] > 0).nonzero()
    # 3x3 with rate 1 then rate 2: offsets up to 1 + 2 = 3 (eq 4)
    assert reach[:, 0].min() == 5 and reach[:, 0].max() == 11 and reach[:, 1].min() == 5 and reach[:, 1].max() == 11


def test_pyramid_non_local_block_relations_and_identity_start():
    torch.manual_seed(0)
    pnb = PyramidNonLocalBlock(6, 4, [4, 6])
    x = torch.randn(2, 6, 12, 12)
    y, rel = pnb(x, return_relations=True)
    assert torch.equal(y, x)  # the output convs start at zero (Wang et al.)
    assert [r.shape for r in rel] == [(2, 16, 16), (2, 36, 36)]
    for r in rel:
        assert torch.allclose(r.sum(-1), torch.ones(()), atol=1e-5) and (r >= 0).all()  # softmax rows
    nn.init.normal_(pnb.out[0].weight)
    y = pnb(x)
    assert not torch.equal(y, x) and y.shape == x.shape


def test_forward_shapes_ranges_and_sub_poses():
    model = tiny_model()
    assert model.part_names == list(SUB_POSES) == ["head", "torso", "leg"]
    assert model.config.sub_poses["leg"] == list(SUB_POSES["leg"])
    batch = synthetic_batch(model, n=2)
    assert batch["source_part_masks"].shape == (2, 3, S, S) and batch["source_pose"].shape == (2, 18, S, S)
    out = model(batch["source_image"], batch["source_pose"], batch["target_pose"], batch["source_part_masks"])
    assert out.image.shape == (2, 3, S, S) and 0 <= out.image.min() and out.image.max() <= 1
    assert out.flows.shape == (2, 3, 2, S // 4, S // 4) and out.visibility.shape == (2, 3, 1, S // 4, S // 4)
    assert 0 <= out.visibility.min() and out.visibility.max() <= 1  # eq 1: V in [0, 1]
    # Each part's flow depends only on its own sub-pose: changing a head joint's heatmap leaves the leg flow.
    tp = batch["target_pose"].clone()
    tp[:, 0] = torch.roll(tp[:, 0], 3, dims=-1)
    flows2, _ = model.estimate_flows(batch["source_pose"], tp)
    assert torch.equal(flows2[:, 2], out.flows[:, 2]) and not torch.equal(flows2[:, 0], out.flows[:, 0])
    with pytest.raises(ValueError, match="heatmaps"):
        model.estimate_flows(batch["source_pose"][:, :17], batch["target_pose"][:, :17])


def test_part_crops_are_masked_source_images():
    model = tiny_model()
    batch = synthetic_batch(model, n=1)
    crops = model.crop_parts(batch["source_image"], batch["source_part_masks"])
    m = batch["source_part_masks"]
    for k, crop in enumerate(crops):
        assert torch.equal(crop, (batch["source_image"] * 2 - 1) * m[:, k:k + 1])
    assert m[0, 0].sum() > 0 and m[0, 2].sum() > 0 and m[0, 0].sum() < m[0, 1].sum()  # head < torso+arms


# ----------------------------------------------------------------------------------------------- losses

def test_sampling_correctness_is_zero_for_the_right_flow_and_larger_for_a_wrong_one():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(1, 5, 10, 12, generator=g)
    for form in ("exp", "log"):
        assert sampling_correctness_loss(src, src, torch.zeros(1, 2, 10, 12), form=form).abs() < 1e-5
    tgt = torch.zeros_like(src)
    tgt[..., 2:] = src[..., :-2]  # target = source moved 2 px right: the backward flow reads 2 px left
    flow = torch.zeros(1, 2, 10, 12)
    flow[:, 0] = -2
    mask = torch.zeros(1, 1, 10, 12)
    mask[..., 2:] = 1
    right = sampling_correctness_loss(src, tgt, flow, target_mask=mask)
    wrong = sampling_correctness_loss(src, tgt, torch.zeros_like(flow), target_mask=mask)
    assert right < 1e-5 < wrong
    # The flow may live on a coarser grid: resize_flow brings it to the features' grid.
    assert sampling_correctness_loss(src, tgt, resize_flow(flow, (5, 6)), target_mask=mask) < 0.02


def test_sampling_correctness_source_mask_restricts_the_best_match():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 4, 8, 8, generator=g)
    tgt = src.clone()
    smask = torch.zeros(1, 1, 8, 8)
    smask[..., :4] = 1  # the part lives in the left half of the source
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = -4  # read 4 px to the left: right-half targets sample the part (wrong content, but in-part)
    tmask = torch.zeros(1, 1, 8, 8)
    tmask[..., 4:] = 1
    free = sampling_correctness_loss(src, tgt, flow, tmask)
    restricted = sampling_correctness_loss(src, tgt, flow, tmask, smask)
    assert restricted < free  # the best in-part match is worse than the exact one outside, so the ratio is higher


def test_part_correctness_sums_parts_and_image_losses():
    ext = TinyExtractor()
    model = tiny_model()
    batch = synthetic_batch(model, n=2)
    fs, ft = ext(batch["source_image"]), ext(batch["target_image"])
    flows, _ = model.estimate_flows(batch["source_pose"], batch["target_pose"])
    total, parts = part_sampling_correctness_loss(fs, ft, flows, batch["target_part_masks"],
                                                  batch["source_part_masks"])
    assert len(parts) == 3 and torch.allclose(total, sum(parts))  # eq 9
    assert perceptual_loss(ft, ft) == 0 and style_loss(ft, ft) == 0
    assert perceptual_loss(fs, ft) > 0 and style_loss(fs, ft) > 0
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(gram_matrix(x), torch.einsum("bchw,bdhw->bcd", x, x) / 60)
    with pytest.raises(KeyError, match="relu9_9"):
        perceptual_loss(fs, ft, ["relu9_9"])
    logits = torch.tensor([[2.0, -1.0]])
    d = torch.sigmoid(logits)
    assert torch.allclose(generator_adversarial_loss(logits, "minimax"), torch.log(1 - d).mean())  # eq 12
    assert torch.allclose(generator_adversarial_loss(logits), -torch.log(d).mean())
    assert torch.allclose(discriminator_loss(logits, -logits), -0.5 * (torch.log(d) + torch.log(d)).mean())


def test_shared_vgg19_extractor_plugs_in():
    from posetransfer.core.flow_models.part_flow_losses import PART_FLOW_VGG_LAYERS, generator_losses, part_flow_vgg19

    torch.manual_seed(0)
    ext = part_flow_vgg19(width_divisor=16)  # random and narrow: no weights offline
    assert set(ext(torch.rand(1, 3, S, S))) == set(PART_FLOW_VGG_LAYERS)
    model = tiny_model()
    disc = PartFlowDiscriminator(base_channels=8, max_channels=16, num_layers=3)
    losses = generator_losses(model, synthetic_batch(model, n=1), ext, disc)
    assert all(torch.isfinite(losses[k]) for k in ("loss", "sam", "rec", "adv", "per", "sty"))
    losses["loss"].backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator step leaves D alone
    assert all(p.requires_grad for p in disc.parameters())


# --------------------------------------------------------------------------------------------- training

def test_two_stage_training_lowers_the_loss():
    ext = TinyExtractor()
    model = tiny_model()
    disc = PartFlowDiscriminator(base_channels=8, max_channels=16, num_layers=3)
    batch = synthetic_batch(model, n=4)
    # GFLA's relu3_1/relu4_1 sit at 1/4 and 1/8 of a 256 px image; on 32 px the same role falls to the
    # 1/2 and 1/4 layers (relu4_1 would be 4x4).
    layers = ("relu2_1", "relu3_1")

    def early_late(values):
        return np.mean(values[:3]), np.mean(values[-3:])

    # Stage 1: L_sam (eq 9) on the flow generators alone, 30 steps; nothing else moves.
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("flow_generators")}
    opt1 = make_optimizer(model.flow_generator_parameters())
    assert opt1.defaults["lr"] == 1e-3 and opt1.defaults["betas"] == (0.0, 0.99)
    s1 = [stage1_step(model, batch, opt1, ext, layers=layers) for _ in range(30)]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    sam0, sam1 = early_late([h["sam"] for h in s1])
    assert all(abs(h["sam"] - h["sam_head"] - h["sam_torso"] - h["sam_leg"]) < 1e-5 for h in s1)

    # Stage 2: end to end on eq 10 with the discriminator, 30 steps.
    g_opt, d_opt = make_optimizer(model.parameters()), make_optimizer(disc.parameters())
    w = PartFlowLossWeights()
    hist = [stage2_step(model, disc, batch, g_opt, d_opt, ext, w, correctness_layers=layers) for _ in range(30)]
    loss0, loss1 = early_late([h["loss"] for h in hist])
    obj0, obj1 = early_late([h["loss"] - w.adv * h["adv"] for h in hist])  # L_adv is a game, not minimised
    rec0, rec1 = early_late([h["rec"] for h in hist])
    print(f"stage 1 L_sam {sam0:.3f} -> {sam1:.3f}; stage 2 eq 10 {loss0:.3f} -> {loss1:.3f}, "
          f"without L_adv {obj0:.3f} -> {obj1:.3f}, L_rec {rec0:.4f} -> {rec1:.4f}")
    assert sam1 < 0.75 * sam0
    assert obj1 < 0.8 * obj0 and rec1 < 0.8 * rec0 and loss1 < 0.9 * loss0
    assert all(np.isfinite(h["d_loss"]) for h in hist)


# ------------------------------------------------------------------------------------------- save/load

def test_save_load_gives_identical_outputs(tmp_path):
    model = tiny_model(seed=3).eval()
    for p in model.pnb.out.parameters():  # make the PNB path non-trivial
        nn.init.normal_(p, std=0.1)
    batch = synthetic_batch(model, n=2)
    args = (batch["source_image"], batch["source_pose"], batch["target_pose"], batch["source_part_masks"])
    with torch.no_grad():
        ref = model(*args)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists()
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    loaded = PartFlowNet.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.sub_poses == model.config.sub_poses and loaded.config.image_size == [S, S]
    assert loaded.part_names == model.part_names == ["head", "torso", "leg"]  # JSON sorts keys; order kept
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        out = loaded(*args)
    # Identical weights; outputs equal up to float rounding (BLAS reductions may depend on memory alignment).
    for a, b in zip(ref.to_tuple(), out.to_tuple()):
        assert (a - b).abs().max() <= 1e-6

    torch.manual_seed(0)
    disc = PartFlowDiscriminator(base_channels=8, max_channels=16, num_layers=3).eval()
    with torch.no_grad():
        d_ref = disc(batch["target_image"])
    disc.save_pretrained(tmp_path / "d")
    d2 = PartFlowDiscriminator.from_pretrained(tmp_path / "d").eval()
    assert all(torch.equal(v, d2.state_dict()[k]) for k, v in disc.state_dict().items())
    with torch.no_grad():
        assert (d2(batch["target_image"]) - d_ref).abs().max() <= 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(image_size=[30, 32])
    with pytest.raises(ValueError, match="unknown parts"):
        tiny_model(sub_poses={"a": [0, 1]}, sub_pose_parts={"a": ["tail"]})
    with pytest.raises(ValueError, match="flow_num_downsample"):
        tiny_model(flow_num_downsample=1)
    custom = tiny_model(sub_poses={"upper": list(range(8)) + [14, 15, 16, 17], "lower": list(range(8, 14))},
                        sub_pose_parts={"upper": ["head", "torso"], "lower": ["right_thigh", "left_thigh"]})
    assert custom.part_names == ["upper", "lower"] and len(custom.flow_generators) == 2


# ---------------------------------------------------------------------------------------- FlowWarp adapter

def test_estimator_combines_part_flows_on_the_target_canvas():
    model = tiny_model()
    est = PartFlowEstimator(model)
    rng = np.random.default_rng(5)
    # Source 48x40 photo, target canvas 40x64: both differ from the model's 32x32.
    sp = pose(moved(BASE, rng)).map_points(lambda xy: xy * [40 / S, 48 / S], width=40, height=48)
    tp = pose(moved(BASE, rng)).map_points(lambda xy: xy * [64 / S, 40 / S], width=64, height=40)
    flow, vis = est.estimate(torch.rand(1, 3, 48, 40), sp, tp)
    assert flow.shape == (1, 2, 40, 64) and vis.shape == (1, 1, 40, 64)
    assert set(torch.unique(vis).tolist()) <= {0.0, 1.0}
    masks = torch.from_numpy(sub_pose_masks(tp, model.sub_pose_parts, model.config.part_mask_radius_scale))
    outside = masks.sum(0) == 0
    assert outside.any() and (vis[0, 0][outside] == 0).all()
    # Outside the person: the canvas-to-canvas scaling (target pixel -> same relative source position).
    scaling = resize_flow(torch.zeros(1, 2, 8, 8), (40, 64), source_scale=(48 / 8, 40 / 8))
    assert torch.allclose(flow[0][:, outside], scaling[0][:, outside])
    # Where only one part covers the target, the flow is that part's flow.
    with torch.no_grad():
        sh, _ = model.pose_inputs(sp.map_points(lambda xy: (xy + 0.5) * [S / 40, S / 48] - 0.5, width=S, height=S))
        th, _ = model.pose_inputs(tp.map_points(lambda xy: (xy + 0.5) * [S / 64, S / 40] - 0.5, width=S, height=S))
        flows, _ = model.estimate_flows(sh[None], th[None])
    leg = resize_flow(flows[:, 2], (40, 64), source_scale=(48 / 8, 40 / 8))
    only_leg = (masks[2] > 0) & (masks[0] == 0) & (masks[1] == 0)
    assert only_leg.any() and torch.allclose(flow[0][:, only_leg], leg[0][:, only_leg], atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        est.estimate(torch.rand(1, 3, 32, 40), sp, tp)


def test_estimator_runs_inside_flowwarp():
    from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp

    rng = np.random.default_rng(2)
    palette = np.concatenate([[[0.5, 0.5, 0.5]], rng.uniform(0, 1, (10, 3))]).astype(np.float32)
    sp, tp = pose(moved(BASE, rng)), pose(moved(BASE, rng))
    r = flow_warp([picture(sp, palette)], [sp], [tp], FlowWarpOptions(method="structure", retarget=False, segmentation="skeleton"),
                  estimator=PartFlowEstimator(tiny_model()))[0]
    assert r.image.shape == (3, S, S) and r.flow.shape == (2, S, S) and r.visibility.shape == (S, S)
    assert torch.isfinite(r.image).all()
