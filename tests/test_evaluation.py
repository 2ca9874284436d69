"""Evaluation: SSIM/PSNR/L1 known answers and agreement with scikit-image, the papers' profiles, LPIPS and
Inception in plain torch (tiny random backbones: no real weights offline), FID, pose accuracy, and the
``evaluate`` entry point end to end."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from posetransfer.core.evaluation import metrics as M
from posetransfer.core.evaluation.evaluate import add_evaluate_arguments, evaluate, evaluate_main, pair_files
from posetransfer.core.evaluation.fid import (activation_statistics, compute_features, fid_from_features,
                                              frechet_distance, load_statistics)
from posetransfer.core.evaluation.inception import INCEPTION_PARAMS, FIDInception, Inception3, load_inception
from posetransfer.core.evaluation.lpips import ALEX_CHANNELS, LPIPS, load_lpips
from posetransfer.core.evaluation.pose_accuracy import pose_accuracy
from posetransfer.core.evaluation.profiles import PROFILES, get_profile, read_raw, used_count
from posetransfer.core.evaluation.weights import MissingWeightsError
from posetransfer.core.pose.keypoints import Person, Pose

skimage_metrics = pytest.importorskip("skimage.metrics")
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
torch.set_num_threads(1)


def _relu_init(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Variance-keeping init so a deep random net does not collapse to constant features."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
    return module.eval()


def tiny_inception() -> FIDInception:
    return FIDInception(_relu_init(Inception3(width=1 / 8)))   # narrower ones can die (all-zero features)


def tiny_lpips() -> LPIPS:
    with torch.random.fork_rng():  # the biases' default init: the same model whatever ran before
        torch.manual_seed(0)
        model = _relu_init(LPIPS(channels=(4, 6, 8, 8, 8)))
    with torch.no_grad():  # after _relu_init, which re-draws every conv: lpips' linear weights are >= 0
        for k in range(5):
            w = getattr(model, f"lin{k}").model[1].weight
            w.copy_(torch.rand(w.shape, generator=torch.Generator().manual_seed(k)))
    return model


def _noisy(img: np.ndarray, seed: int, amount: float = 25.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, amount, img.shape), 0, 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


# ------------------------------------------------------------------------------------------------- SSIM

SSIM_SETTINGS = [dict(gaussian_weights=True, sigma=1.2, use_sample_covariance=False),
                 dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
                 dict(), dict(win_size=11, use_sample_covariance=False)]


@pytest.mark.parametrize("backend", ["scipy", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ssim_equals_skimage_on_random_images(backend, dtype):
    rng = np.random.default_rng(1)
    a = (rng.random((40, 33, 3)) * 255).astype(dtype)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(dtype)
    r = b.max() - b.min()
    for kw in SSIM_SETTINGS:
        ref = skimage_metrics.structural_similarity(a, b, channel_axis=2, data_range=r, **kw)
        got = M.structural_similarity(a, b, channel_axis=2, data_range=r, backend=backend, **kw)
        assert abs(got - ref) <= 1e-6, (kw, got, ref)
    grey_ref = skimage_metrics.structural_similarity(a[..., 0], b[..., 0], data_range=255.0)
    assert abs(M.structural_similarity(a[..., 0], b[..., 0], data_range=255.0, backend=backend) - grey_ref) <= 1e-6


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_ssim_equals_skimage_with_each_profile_on_real_images(name):
    prof = get_profile(name)
    raw_gt = np.ascontiguousarray(read_raw(SAMPLES / "fashion_standing.png")[20:320, 60:260])   # 300x200
    raw_pred = _noisy(raw_gt.astype(np.uint8), 3).astype(np.float32)
    gt, pred = prof.rec_image(raw_gt), prof.rec_image(raw_pred)
    g255, p255 = gt * 255.0, pred * 255.0            # exactly the papers' float32 arrays
    if prof.ssim_float64:                            # skimage < 0.19 compare_ssim computed in float64
        g255, p255 = g255.astype(np.float64), p255.astype(np.float64)
    ref = skimage_metrics.structural_similarity(
        g255, p255, gaussian_weights=True, sigma=prof.ssim_sigma, use_sample_covariance=False, channel_axis=2,
        data_range=(pred * 255.0).max() - (pred * 255.0).min())
    g, p = prof.ssim_image(gt), prof.ssim_image(pred)
    got = M.structural_similarity(g, p, data_range=p.max() - p.min(), **prof.ssim_kwargs())
    assert abs(got - ref) <= 1e-6
    assert 0.2 < got < 0.99
    # PSNR as skimage too
    assert abs(M.psnr(gt, pred, 1) - skimage_metrics.peak_signal_noise_ratio(gt, pred, data_range=1)) <= 1e-9


def test_ssim_known_answers_and_bad_inputs():
    a = np.random.default_rng(0).random((20, 20))
    assert M.structural_similarity(a, a, data_range=1.0) == pytest.approx(1.0, abs=1e-12)
    # a constant offset c on 0-variance images: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    x, y = np.full((9, 9), 0.2), np.full((9, 9), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert M.structural_similarity(x, y, data_range=1.0) == pytest.approx((2 * .2 * .6 + c1) / (.04 + .36 + c1))
    with pytest.raises(ValueError, match="im1 and im2"):
        M.structural_similarity(a, a[:10], data_range=1.0)
    with pytest.raises(ValueError, match="data_range"):
        M.structural_similarity(a, a)
    with pytest.raises(ValueError, match="win_size"):
        M.structural_similarity(a, a, data_range=1.0, win_size=4)
    with pytest.raises(ValueError, match="im1"):
        M.structural_similarity(np.zeros((4, 4)), np.zeros((4, 4)), data_range=1.0)


# ------------------------------------------------------------------------------------------ PSNR, L1, masks

def test_psnr_l1_known_answers():
    gt = np.zeros((2, 2), np.float32)
    pred = gt.copy()
    pred[0, 0] = 0.2                                  # mse = 0.04 / 4 = 0.01 -> 20 dB
    assert M.psnr(gt, pred, 1.0) == pytest.approx(20.0, abs=1e-5)
    assert M.psnr(gt * 255, pred * 255, 255.0) == pytest.approx(20.0, abs=1e-5)
    assert M.psnr(gt, gt) == math.inf
    a = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    b = np.array([[0.5, 0.5], [0.0, 0.25]], np.float32)
    assert M.l1(a, b) == pytest.approx(0.375)         # (0.5 + 0 + 1 + 0) / 4
    assert M.mae_ratio(a, b) == pytest.approx(1.5 / 3.0)  # sum|a-b| / sum(a+b)
    mask = np.array([[1, 1], [0, 0]])
    assert M.masked_l1(a, b, mask) == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert M.masked_psnr(a, b, mask) == pytest.approx(10 * math.log10(1 / 0.125))  # mse (0.25 + 0) / 2
    assert math.isnan(M.masked_l1(a, b, np.zeros((2, 2))))
    rgb = np.stack([a, a, a], axis=2)
    assert M.masked_l1(rgb, np.stack([b, b, b], axis=2), mask) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(a, b, data_range=-1)
    with pytest.raises(ValueError, match="mask"):
        M.masked_l1(a, b, np.ones((3, 3)))
    with pytest.raises(ValueError, match="gt and pred"):
        M.l1(a, b[:1])


# ---------------------------------------------------------------------------------------------- profiles

def test_each_profile_resize_equals_cv2():
    raw = read_raw(SAMPLES / "jumper.png")           # 400x400
    cubic = cv2.resize(raw, (176, 256), interpolation=cv2.INTER_CUBIC)
    default = cv2.resize(raw, (176, 256))            # cv2's default interpolation (bilinear)
    pc, pi, gf = get_profile("pcdms"), get_profile("pidm"), get_profile("gfla")
    np.testing.assert_array_equal(pc.rec_image(raw), cubic / np.float32(255.0))
    np.testing.assert_array_equal(pc.fid_image(raw), cubic / np.float32(255.0))
    np.testing.assert_array_equal(pi.fid_image(raw), default / np.float32(255.0))
    np.testing.assert_array_equal(pi.rec_image(raw), raw / np.float32(255.0))   # PIDM scores SSIM unresized
    np.testing.assert_array_equal(gf.rec_image(raw), raw / np.float32(255.0))
    np.testing.assert_array_equal(gf.fid_image(raw), raw / np.float32(255.0))
    big = pc.with_size(352, 512)
    np.testing.assert_array_equal(big.rec_image(raw), cv2.resize(raw, (352, 512), interpolation=cv2.INTER_CUBIC)
                                  / np.float32(255.0))
    with pytest.raises(ValueError, match="size"):
        gf.with_size(352, 512)
    with pytest.raises(ValueError, match="profile"):
        get_profile("nted")


def test_lpips_input_range_per_profile():
    raw = read_raw(SAMPLES / "jumper.png")
    cubic = cv2.resize(raw, (176, 256), interpolation=cv2.INTER_CUBIC)
    default = cv2.resize(raw, (176, 256))
    np.testing.assert_array_equal(get_profile("pcdms").lpips_image(raw), cubic / np.float32(255.0))   # [0,1], sic
    np.testing.assert_array_equal(get_profile("pidm").lpips_image(raw), default / np.float32(127.5) - 1)
    np.testing.assert_array_equal(get_profile("gfla").lpips_image(raw), raw / np.float32(127.5) - 1)
    # the same pair scores differently under the two conventions
    model = tiny_lpips()
    other = _noisy(raw.astype(np.uint8), 5, 40).astype(np.float32)
    t = [torch.from_numpy(get_profile(n).lpips_image(x)).permute(2, 0, 1)[None] for n in ("pcdms", "pidm")
         for x in (raw, other)]
    with torch.no_grad():
        unit, signed = float(model(t[0], t[1])), float(model(t[2], t[3]))
    assert unit > 0 and signed > 0 and abs(unit - signed) > 1e-4


def test_used_count_full_batches_only():
    assert used_count(130, 128) == 128
    assert used_count(100, 128) == 100               # fewer than a batch: the scripts use them all
    assert used_count(150, 64) == 128
    assert used_count(64, 64) == 64
    assert used_count(0, 64) == 0


# --------------------------------------------------------------------------------------------------- LPIPS

def _reference_lpips(state: dict, lin: dict, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """LPIPS written out with functional ops straight from the two state dicts (the documented formula)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)   # lpips' ScalingLayer constants
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        x = F.relu(F.conv2d(x, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2))
        out.append(x)
        x = F.max_pool2d(x, 3, 2)
        x = F.relu(F.conv2d(x, state["features.3.weight"], state["features.3.bias"], padding=2))
        out.append(x)
        x = F.max_pool2d(x, 3, 2)
        for i in (6, 8, 10):
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
            out.append(x)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x0), taps(x1))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((na - nb) ** 2, lin[f"lin{k}.model.1.weight"]).mean(dim=(2, 3))
    return total.view(-1)


def _alexnet_state(channels, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = channels
    shapes = {0: (c[0], 3, 11, 11), 3: (c[1], c[0], 5, 5), 6: (c[2], c[1], 3, 3), 8: (c[3], c[2], 3, 3),
              10: (c[4], c[3], 3, 3)}
    state = {}
    for i, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    state["classifier.1.weight"] = torch.randn(3, 4, generator=g)   # torchvision's head: ignored
    return state


def test_lpips_loader_maps_torchvision_and_lpips_keys(tmp_path):
    channels = ALEX_CHANNELS
    alex = _alexnet_state(channels)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=torch.Generator().manual_seed(k))
           for k, c in enumerate(channels)}
    torch.save(alex, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(lin, tmp_path / "alex.pth")
    model = load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    assert torch.equal(model.net.features[3].weight, alex["features.3.weight"])
    assert torch.equal(model.lin2.model[1].weight, lin["lin2.model.1.weight"])
    x0 = torch.rand(2, 3, 64, 64) * 2 - 1
    x1 = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        got = model(x0, x1)
        ref = _reference_lpips(alex, lin, x0, x1)
        same = model(x0, x0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.all(got > 0)
    assert torch.count_nonzero(same) == 0             # identical images -> exactly 0
    # strict by key: a missing linear layer, an unknown feature key, a wrong shape
    torch.save({k: v for k, v in lin.items() if k != "lin4.model.1.weight"}, tmp_path / "bad_lin.pth")
    with pytest.raises(ValueError, match="lin4.model.1.weight"):
        load_lpips(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "bad_lin.pth")
    torch.save({**alex, "features.12.weight": torch.zeros(1)}, tmp_path / "bad_alex.pth")
    with pytest.raises(ValueError, match="features.12.weight"):
        load_lpips(tmp_path / "bad_alex.pth", tmp_path / "alex.pth")
    torch.save({**alex, "features.0.bias": torch.zeros(3)}, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match="shape"):
        load_lpips(tmp_path / "bad_shape.pth", tmp_path / "alex.pth")


def test_missing_weight_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError, match="no such file: .*missing_alexnet.pth"):
        load_lpips(tmp_path / "missing_alexnet.pth", tmp_path / "alex.pth")
    torch.save(_alexnet_state(ALEX_CHANNELS), tmp_path / "alexnet.pth")
    with pytest.raises(MissingWeightsError, match="--lpips-weights.*no such file: .*nope"):
        load_lpips(tmp_path / "alexnet.pth", tmp_path / "nope" / "alex.pth")
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth not found.*torch_home"):
        load_lpips()
    with pytest.raises(MissingWeightsError, match="inception_v3_google-0cc3c7bd.pth not found"):
        load_inception()
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        load_inception(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------ Inception, FID

def test_inception_layout_matches_torchvision():
    full = Inception3()
    assert sum(p.numel() for p in full.parameters()) == INCEPTION_PARAMS   # torchvision's published count
    sd = full.state_dict()
    assert tuple(sd["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(sd["AuxLogits.fc.weight"].shape) == (1000, 768)
    assert full.feature_dim == 2048


def test_inception_loader_by_key_and_transform(tmp_path):
    net = _relu_init(Inception3(width=1 / 8), seed=3)
    state = {k: v for k, v in net.state_dict().items()                     # like the 2018 google file:
             if not k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "inception.pth")
    model = load_inception(tmp_path / "inception.pth", width=1 / 8)
    x = torch.rand(2, 3, 40, 30)
    with torch.no_grad():
        got = model(x)
        y = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        y = torch.cat([y[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5, y[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                       y[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
        ref = net.features(y)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.save({**state, "Mixed_5b.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys.*Mixed_5b.extra.weight"):
        load_inception(tmp_path / "extra.pth", width=1 / 8)
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c.branch_pool")}, tmp_path / "miss.pth")
    with pytest.raises(ValueError, match="missing keys.*Mixed_7c.branch_pool"):
        load_inception(tmp_path / "miss.pth", width=1 / 8)


def test_frechet_distance_closed_form():
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    # |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + 1 + 1
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(7.0, abs=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2, method="eigen") == pytest.approx(7.0, abs=1e-10)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sa, sb = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    assert frechet_distance(mu1[:1].repeat(6), sa, mu1[:1].repeat(6), sb, method="sqrtm") == pytest.approx(
        frechet_distance(np.zeros(6), sa, np.zeros(6), sb, method="eigen"), rel=1e-9)
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(2), s1, np.zeros(3), np.eye(3))


def test_fid_self_zero_and_shift_positive_with_tiny_inception():
    model = tiny_inception()
    rng = np.random.default_rng(0)
    base = read_raw(SAMPLES / "fashion_standing.png")[::8, ::8] / np.float32(255.0)   # 44x44
    images = [np.clip(base * rng.uniform(0.6, 1.0) + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
              for _ in range(24)]
    feats = compute_features(images, model, batch_size=8)
    assert feats.shape == (24, model.feature_dim) and feats.dtype == np.float64
    assert np.std(feats, axis=0).mean() > 1e-3                     # the tiny net is not degenerate
    assert abs(fid_from_features(feats, feats)) < 1e-6
    shifted = compute_features([np.clip(im + 0.3, 0, 1) for im in images], model, batch_size=8)
    assert fid_from_features(feats, shifted) > 1e-2
    mu, sigma = activation_statistics(feats)
    assert mu.shape == (model.feature_dim,) and sigma.shape == (model.feature_dim,) * 2


# ------------------------------------------------------------------------------------------ pose accuracy

def _pose(points: dict[int, tuple[float, float]], w=100, h=200) -> Pose:
    return Pose([Person.from_xy([points.get(i) for i in range(18)])], w, h)


def test_target_poses_are_placed_on_padded_images(tmp_path):
    # DeepFashion's annotations are in a 256x176 frame; its 256x256 images carry 40 px of padding a side: x + 40.
    from posetransfer.core.evaluation.evaluate import TargetPoses
    from posetransfer.core.pose.formats import write_gfla_annotations
    ann = tmp_path / "ann.csv"
    write_gfla_annotations(ann, {"a.png": _pose({1: (100, 50), 8: (0, 255)}, 176, 256)})
    padded = TargetPoses(str(ann), annotation_size=(256, 176)).get("a.png", (256, 256))
    assert (padded.width, padded.height) == (256, 256)
    assert padded.people[0].xy[1].tolist() == [140, 50] and padded.people[0].xy[8].tolist() == [40, 255]
    double = TargetPoses(str(ann), annotation_size=(256, 176)).get("a.png", (512, 352))   # same aspect: a scale
    assert double.people[0].xy[1].tolist() == [200, 100]
    as_is = TargetPoses(str(ann)).get("a.png", (256, 256))                    # no frame given: image pixels
    assert as_is.people[0].xy[1].tolist() == [100, 50]
    # OpenPose JSON targets with their own canvas are placed the same way.
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "a.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [0, 0, 0, 100, 50, 1]
                                                                       + [0, 0, 0] * 16}],
                                                          "canvas_width": 176, "canvas_height": 256}))
    from_json = TargetPoses(folder=str(tmp_path / "poses")).get("a.png", (256, 256))
    assert from_json.people[0].xy[1].tolist() == [140, 50]


def test_pose_accuracy_known_answer():
    target = _pose({0: (50, 0), 1: (50, 40), 10: (30, 200), 13: (70, 180)})       # bbox 40 x 200 -> ref 200
    pred = _pose({0: (50, 10), 1: (50, 70), 10: (30, 200)})                        # 10 px, 30 px, 0 px, missing
    acc = pose_accuracy(pred, target, alpha=0.1)                                   # threshold 20 px
    assert (acc.correct, acc.total, acc.detected) == (2, 4, 3)
    assert acc.pck == 0.5 and acc.ref_size == 200
    assert acc.mean_error_px == pytest.approx(40 / 3)
    # the target's canvas is scaled to the generated image's size
    half = pose_accuracy(_pose({0: (25, 5), 1: (25, 35)}, 50, 100), target, image_size=(100, 50))
    assert half.total == 4 and half.correct == 1                                   # 5 px (ok), 15 px vs 10 px
    with pytest.raises(ValueError, match="alpha"):
        pose_accuracy(pred, target, alpha=0)


def test_pose_mask_covers_limbs_and_joints():
    from posetransfer.core.evaluation.evaluate import pose_mask
    m = pose_mask(_pose({1: (10, 10), 2: (20, 10)}, 40, 30), (30, 40), radius=2)
    assert m.dtype == np.uint8 and m.shape == (30, 40)
    assert m[10, 15] == 1 and m[11, 15] == 1 and m[10, 21] == 1     # on the limb, at the joint disc
    assert m[14, 15] == 0 and m[10, 30] == 0 and m.sum() < 100


# ------------------------------------------------------------------------------------------------ evaluate

@pytest.fixture()
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    src = read_raw(SAMPLES / "fashion_standing.png").astype(np.uint8)
    for i in range(5):
        g = cv2.resize(np.roll(src, 12 * i, axis=1), (44, 64), interpolation=cv2.INTER_AREA)
        _write(gt_dir / f"t{i}.png", g)
        _write(pred_dir / f"s{i}_to_t{i}.png", _noisy(g, i, 12))
    return tmp_path


class FakeDetector:
    """Returns the target pose moved 3 px right (so PCK@0.1 is known)."""

    def __init__(self, pose: Pose):
        self.pose = pose
        self.calls = 0

    def detect(self, image):
        assert image.dtype == np.float32 and image.ndim == 3 and image.max() <= 1.0
        self.calls += 1
        return self.pose.map_points(lambda xy: xy + np.array([3.0, 0.0]))


def test_evaluate_end_to_end_writes_csv_and_json(folders):
    out = folders / "out"
    target = _pose({0: (20, 5), 1: (20, 15), 8: (15, 40), 11: (25, 40), 10: (15, 60)}, 44, 64)
    ann = folders / "ann.csv"
    from posetransfer.core.pose.formats import write_gfla_annotations
    write_gfla_annotations(ann, {f"t{i}.png": target for i in range(5)})
    det = FakeDetector(target)
    evaluate(str(folders / "pred"), str(folders / "gt"), profile="pcdms", size=(44, 64), out_dir=str(out),
                       lpips_model=tiny_lpips(), fid_model=tiny_inception(), annotations=str(ann), detector=det,
                       progress=False, batch_size=4)
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    data = json.loads((out / "summary.json").read_text())
    assert len(rows) == 5 and det.calls == 5
    assert [r["gt"] for r in rows] == [f"t{i}.png" for i in range(5)]
    assert data["profile"]["name"] == "pcdms" and data["best_of"] is None and data["count"] == 5
    # the CSV's SSIM is the profile's SSIM of the two files
    prof = get_profile("pcdms").with_size(44, 64)
    gt = prof.rec_image(read_raw(folders / "gt" / "t2.png"))
    pr = prof.rec_image(read_raw(folders / "pred" / "s2_to_t2.png"))
    p255 = pr * np.float32(255.0)
    expect = skimage_metrics.structural_similarity(gt * np.float32(255.0), p255, gaussian_weights=True, sigma=1.2,
                                                   use_sample_covariance=False, channel_axis=2,
                                                   data_range=p255.max() - p255.min())
    assert float(rows[2]["ssim"]) == pytest.approx(expect, abs=1e-6)
    assert float(rows[2]["l1"]) == pytest.approx(float(np.mean(np.abs(gt - pr))), abs=1e-7)
    m = data["metrics"]
    assert m["ssim"] == pytest.approx(np.mean([float(r["ssim"]) for r in rows]))
    assert m["lpips"] > 0 and data["lpips"]["images_used"] == 5
    assert "fid" not in m and m["fid_vs_test_gt"] is not None          # not the papers' FID: kept apart by name
    assert "NOT the published protocol" in data["fid"]["reference_note"]
    assert m["pose_pck"] == 1.0 and m["pose_keypoint_error_px"] == pytest.approx(3.0)   # 3 px < 0.1 * 55
    assert 0 < m["masked_ssim"] <= 1 and "masked_lpips" in m
    stats = load_statistics(out / "fid_reference_statistics.npz")
    assert stats[0].shape == (tiny_inception().feature_dim,)
    # a reference given with --fid-ref (here the saved statistics of the same images) is reported as "fid"
    again = evaluate(str(folders / "pred"), str(folders / "gt"), profile="pcdms", size=(44, 64), lpips=False,
                     fid_model=tiny_inception(), fid_ref=str(out / "fid_reference_statistics.npz"), progress=False,
                     batch_size=4)
    assert again["metrics"]["fid"] == pytest.approx(m["fid_vs_test_gt"], rel=1e-6)
    assert "fid_vs_test_gt" not in again["metrics"] and "reference_note" not in again["fid"]


def test_pidm_masked_lpips_scores_the_images_as_stored(folders):
    # PIDM's calculate_mask_lpips does not resize (its plain LPIPS does, to 176x256): per row, masked LPIPS = LPIPS of
    # the masked [-1, 1] images at their stored 44x64.
    from posetransfer.core.evaluation.evaluate import pose_mask
    from posetransfer.core.pose.formats import write_gfla_annotations
    target = _pose({0: (20, 5), 1: (20, 15), 8: (15, 40), 11: (25, 40), 10: (15, 60)}, 44, 64)
    ann = folders / "ann.csv"
    write_gfla_annotations(ann, {f"t{i}.png": target for i in range(5)})
    model = tiny_lpips()
    evaluate(str(folders / "pred"), str(folders / "gt"), profile="pidm", out_dir=str(folders / "out"),
             lpips_model=model, fid=False, annotations=str(ann), progress=False, batch_size=4)
    rows = list(csv.DictReader(open(folders / "out" / "per_image.csv")))
    mask = pose_mask(target, (64, 44)).astype(np.float32)[:, :, None]

    def signed(path):
        return torch.from_numpy(read_raw(path) / np.float32(127.5) - 1).permute(2, 0, 1)[None]

    m = torch.from_numpy(mask).permute(2, 0, 1)[None]
    with torch.no_grad():
        expect = float(model(signed(folders / "pred" / "s3_to_t3.png") * m, signed(folders / "gt" / "t3.png") * m))
    assert float(rows[3]["masked_lpips"]) == pytest.approx(expect, rel=1e-5)
    assert get_profile("pidm").to_dict()["masked_lpips"] == "as LPIPS, on the images as stored"


def test_evaluate_best_of_n_and_pairs(folders):
    pred, gt = folders / "pred", folders / "gt"
    best = folders / "best"
    for k in range(3):
        (best / f"sample{k}").mkdir(parents=True)
    for i in range(5):
        g = read_raw(gt / f"t{i}.png").astype(np.uint8)
        good = i % 3                                   # the sample equal to the ground truth
        for k in range(3):
            _write(best / f"sample{k}" / f"s{i}_to_t{i}.png", g if k == good else _noisy(g, 10 * i + k, 30))
    pairs = folders / "pairs.csv"
    pairs.write_text("from,to\n" + "".join(f"s{i}.jpg,t{i}.jpg\n" for i in range(5)))
    seen = []
    summary = evaluate(str(best), str(gt), pairs=str(pairs), profile="gfla", best_of=3, lpips=False, fid=False,
                       progress=lambda stage, done, total: seen.append((stage, done, total)),
                       out_dir=str(folders / "o"))
    assert seen[-1] == ("score", 5, 5)
    assert [r["best_of_index"] for r in summary["rows"]] == [i % 3 for i in range(5)]
    assert summary["metrics"]["ssim"] == pytest.approx(1.0)
    assert summary["best_of"]["n"] == 3 and "SSIM" in summary["best_of"]["selected_by"]
    # pcdms: the samples are ranked as its test script ranks them (uint8, PIL-bicubic ground truth, skimage's
    # default covariance, data_range 255), the chosen one scored with the profile's SSIM.
    from posetransfer.core.evaluation.evaluate import pcdms_selection_ssim
    g8 = read_raw(gt / "t1.png").astype(np.uint8)
    p8 = read_raw(best / "sample0" / "s1_to_t1.png").astype(np.uint8)
    big = cv2.resize(p8, (88, 128), interpolation=cv2.INTER_NEAREST)
    g_big = np.asarray(Image.fromarray(g8).resize((88, 128), Image.BICUBIC))
    assert pcdms_selection_ssim(read_raw(gt / "t1.png"), big.astype(np.float32)) == pytest.approx(
        skimage_metrics.structural_similarity(g_big, big, gaussian_weights=True, sigma=1.2, channel_axis=2),
        abs=1e-9)
    rows = evaluate(str(best), str(gt), pairs=str(pairs), profile="pcdms", size=(44, 64), best_of=3, lpips=False,
                    fid=False, progress=False)["rows"]
    assert [r["best_of_index"] for r in rows] == [i % 3 for i in range(5)] and rows[0]["ssim"] == pytest.approx(1)
    assert float(rows[1]["best_of_ssims"].split()[0]) == pytest.approx(
        pcdms_selection_ssim(read_raw(gt / "t1.png"), p8.astype(np.float32)), abs=1e-6)
    with pytest.raises(ValueError, match="expected 2 sample sub-folders"):
        pair_files(str(best), str(gt), best_of=2)
    (pred / "zz_to_missing.png").write_bytes((pred / "s0_to_t0.png").read_bytes())
    with pytest.raises(ValueError, match="zz_to_missing.png: no ground truth"):
        pair_files(str(pred), str(gt))


def test_evaluate_cli_entry(folders, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(folders / "torch_home"))
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    out = folders / "cli_out"
    args = parser.parse_args(["--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--profile", "pidm",
                              "--no-lpips", "--no-fid", "--out", str(out), "--quiet"])
    assert evaluate_main(args) == 0
    data = json.loads((out / "summary.json").read_text())
    assert data["profile"]["name"] == "pidm" and data["count"] == 5
    assert "lpips" not in data["metrics"] and "fid" not in data["metrics"]
    assert "ssim" in capsys.readouterr().out
    args = parser.parse_args(["--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--no-fid",
                              "--lpips-weights", str(folders / "missing_alex.pth"), "--out", str(out), "--quiet"])
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth not found"):
        evaluate_main(args)
    args = parser.parse_args(["--pred", str(folders / "nope"), "--gt", str(folders / "gt"), "--no-lpips",
                              "--no-fid", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="--pred"):
        evaluate_main(args)


def test_posetransfer_evaluate_command(folders, capsys, monkeypatch):
    from posetransfer.cli import main

    monkeypatch.setenv("TORCH_HOME", str(folders / "torch_home"))
    out = folders / "main_out"
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--profile", "pcdms",
                 "--no-lpips", "--no-fid", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["profile"]["name"] == "pcdms"
    # A missing weight file is one error line and exit code 2, never a download.
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--no-fid",
                 "--lpips-weights", str(folders / "missing_alex.pth"), "--out", str(out), "--quiet"]) == 2
    assert "alexnet-owt-7be5be79.pth not found" in capsys.readouterr().err
