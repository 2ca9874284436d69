"""RePose nodes end to end on tiny models (loader -> PoseAlign -> PoseGuidance -> sampler), the RePose model
files, and training/train_repose.py: a short CPU run lowers the loss and a resumed run continues exactly."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import comfy_doubles
from comfy_doubles import SAMPLES
from posetransfer.core.repose import TINY_POSE_ALIGN_CONFIG, TINY_UNET_CONFIG, PoseAlign, PoseGuidance, RePoseDenoiser
from posetransfer.core.repose.model_files import MARKER, is_repose_model, load_repose_model, save_repose_model
from posetransfer.core.pose.formats import load_pose_keypoint
from posetransfer.core.repose import transfer as repose_transfer
from posetransfer.nodes import adapters, bridge, checks, repose_nodes
from posetransfer.training import train_repose


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return comfy_doubles.prepare_repose_files(tmp_path_factory.mktemp("repose_models"))


@pytest.fixture
def comfy_free(models_dir, monkeypatch):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(models_dir))
    repose_nodes._CACHE.clear()
    yield models_dir
    bridge.set_interrupt_callback(None)


def target_pose(name="jumper.pose.json"):
    return json.loads((SAMPLES / name).read_text())


def source_image():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 48, 40, 3, generator=g)


def align_and_sample(vae, guidance=None, seed=1, scheduler="ddpm", steps=2):
    (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
    feats, preview = repose_nodes.PoseTransferPoseAlign().align(model, vae, source_image(), target_pose(),
                                                                resolution=32)
    (image,) = repose_nodes.PoseTransferRePoseSampler().sample(model, feats, vae, target_pose(), seed=seed,
                                                               steps=steps, w_c=2.0, scheduler=scheduler,
                                                               guidance=guidance)
    return feats, preview, image


def test_nodes_end_to_end(comfy_free, monkeypatch):
    vae = comfy_doubles.TinyVAE()
    assert comfy_doubles.REPOSE_MODEL_DIR in repose_nodes.PoseTransferRePoseLoader.INPUT_TYPES()["required"][
        "model_name"][0]
    bars = []

    class Bar(bridge.ProgressBar):
        def __init__(self, total):
            super().__init__(total)
            bars.append(self)

    monkeypatch.setattr(repose_nodes.bridge, "ProgressBar", Bar)
    feats, preview, image = align_and_sample(vae)
    pose = checks.poses(target_pose(), "target_pose", person=True)[0]
    canvas = (pose.height, pose.width)
    assert preview.shape == (1, *canvas, 3) and image.shape == (1, *canvas, 3)
    for x in (preview, image):
        assert x.dtype == torch.float32 and torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1
    assert feats.aligned.features.shape == (1, 4, 4, 4) and feats.size == (32, 32)
    assert [(b.current, b.total) for b in bars] == [(2, 2)]
    # Seeds: reproducible, and another seed differs.
    assert torch.equal(align_and_sample(vae)[2], image)
    assert not torch.allclose(align_and_sample(vae, seed=2)[2], image)
    # The other schedulers run.
    for name in ("ddim", "dpmpp_2m", "euler", "unipc"):
        out = align_and_sample(vae, scheduler=name)[2]
        assert out.shape == image.shape and torch.isfinite(out).all()


def test_sampler_sends_step_previews(comfy_free, monkeypatch):
    seen, sent = comfy_doubles.record_previews(monkeypatch, bridge)
    align_and_sample(comfy_doubles.TinyVAE(), steps=3)
    # the clean-latent estimate of each step, on the 4x4 latent grid of the 32 px frame
    assert [tuple(x.shape) for x in seen] == [(1, 4, 4, 4)] * 3 and sent == [("JPEG", 1), ("JPEG", 2), ("JPEG", 3)]
    assert all(torch.isfinite(x).all() for x in seen)


def test_keypoint_heatmap_target(comfy_free):
    # The target keypoints drawn as COCO-17 Gaussians on the working frame: the nose at (20, 12) of a 40x48 canvas
    # lands at (9.75, 5.75) of a 20x24 frame (pixel centres scale), so its channel peaks at pixel (10, 6).
    pose = load_pose_keypoint(json.dumps({"people": [{"pose_keypoints_2d": [20, 12, 1] + [0, 0, 0] * 17}],
                                          "canvas_width": 40, "canvas_height": 48}))
    hm = repose_transfer.keypoint_target(pose, (48 // 2, 40 // 2)).heatmaps
    assert hm.shape == (1, 17, 24, 20) and hm[0, 1:].max() == 0                 # nose only (COCO-17 channel 0)
    assert divmod(int(hm[0, 0].argmax()), 20) == (6, 10)
    assert hm[0, 0].max() == pytest.approx(np.exp(-2 * 0.25 ** 2 / (2 * repose_transfer.KEYPOINT_SIGMA ** 2)), rel=1e-5)
    (kp,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0,
                                                        target="keypoints")
    assert kp.target == "keypoints" and kp.make().compare == "heatmaps"
    vae = comfy_doubles.TinyVAE()
    plain = align_and_sample(vae)[2]
    (sk,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0)
    by_skeleton, by_keypoints = align_and_sample(vae, guidance=sk)[2], align_and_sample(vae, guidance=kp)[2]
    assert torch.isfinite(by_keypoints).all()
    assert (by_keypoints - plain).abs().max() > 1e-4 and (by_keypoints - by_skeleton).abs().max() > 1e-4
    with pytest.raises(ValueError, match="target: expected one of"):
        repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, target="photo")


def test_sampler_warns_when_a_guidance_trained_model_samples_otherwise(comfy_free, monkeypatch, caplog):
    (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
    vae = comfy_doubles.TinyVAE()
    with caplog.at_level("WARNING", logger=repose_nodes.log.name):
        align_and_sample(vae)
    assert not caplog.records                                      # a model trained without guidance: nothing
    monkeypatch.setitem(model.info, "trained_with_pose_guidance", {"scale": 1.0, "threshold": 0.1})
    (same,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=1.0)
    with caplog.at_level("WARNING", logger=repose_nodes.log.name):
        align_and_sample(vae, guidance=same)
        assert not caplog.records
        align_and_sample(vae)
    assert "was trained with pose guidance" in caplog.text and "without it" in caplog.text


def test_guidance_node_steers_and_is_a_pose_guidance_factory(comfy_free):
    vae = comfy_doubles.TinyVAE()
    names = repose_nodes.PoseTransferPoseGuidance.INPUT_TYPES()["required"]["estimator_name"][0]
    assert comfy_doubles.HRNET_FILE in names
    (guidance,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0,
                                                              threshold=-1.0)
    made = guidance.make(torch.rand(1, 3, 32, 32))
    assert isinstance(made, PoseGuidance) and made.has_target and made.scale == 50.0 and made.threshold == -1.0
    plain = align_and_sample(vae)[2]
    guided = align_and_sample(vae, guidance=guidance)[2]
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-4
    (off,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=0.0)
    assert torch.equal(align_and_sample(vae, guidance=off)[2], plain)
    # decode_scale < 1: the guidance decodes a downsized latent -- it still steers, differently from the exact one.
    (half,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0,
                                                          decode_scale=0.5)
    assert half.decode_scale == 0.5 and guidance.decode_scale == 1.0
    cheap = align_and_sample(vae, guidance=half)[2]
    assert torch.isfinite(cheap).all() and (cheap - plain).abs().max() > 1e-4 and (cheap - guided).abs().max() > 1e-4
    with pytest.raises(ValueError, match="decode_scale"):
        repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, decode_scale=0.0)
    with pytest.raises(ValueError, match="mask_from"):
        repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, mask_from="nowhere")
    # start / end percent: the 2-step DDPM run has timesteps 500 and 0. 0..0.4 (t >= 599.4) guides neither step: the
    # plain image; 0..0.5 (t >= 499.5) guides the first step (which steps exactly: tests/test_repose.py).
    (early,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0,
                                                           start_percent=0.0, end_percent=0.5)
    assert early.make().timestep_range == (499.5, 999.0) and guidance.make().timestep_range is None
    first = align_and_sample(vae, guidance=early)[2]
    assert (first - plain).abs().max() > 1e-2
    (none,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0,
                                                          start_percent=0.0, end_percent=0.4)
    assert torch.equal(align_and_sample(vae, guidance=none)[2], plain)
    with pytest.raises(ValueError, match="start_percent"):
        repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, start_percent=0.7, end_percent=0.3)
    with pytest.raises(ValueError, match="estimator_name"):
        repose_nodes.PoseTransferPoseGuidance().make(repose_nodes.NO_MODEL)


def test_interrupt_and_bad_inputs(comfy_free):
    vae = comfy_doubles.TinyVAE()
    (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
    feats, _ = repose_nodes.PoseTransferPoseAlign().align(model, vae, source_image(), target_pose(), resolution=32)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("interrupted by the user")

    bridge.set_interrupt_callback(interrupt)
    with pytest.raises(RuntimeError, match="interrupted"):
        repose_nodes.PoseTransferRePoseSampler().sample(model, feats, vae, target_pose(), steps=5)
    assert len(calls) == 3                                                 # stopped after the second step
    bridge.set_interrupt_callback(None)
    with pytest.raises(ValueError, match="model_name"):
        repose_nodes.PoseTransferRePoseLoader().load(repose_nodes.NO_MODEL)
    with pytest.raises(ValueError, match="repose_features"):
        repose_nodes.PoseTransferRePoseSampler().sample(model, "nope", vae, target_pose())
    with pytest.raises(ValueError, match="frame"):
        repose_nodes.PoseTransferRePoseSampler().sample(model, feats, vae, [target_pose()] * 2, steps=1)
    with pytest.raises(ValueError, match="source_image"):
        repose_nodes.PoseTransferPoseAlign().align(model, vae, torch.rand(3, 8, 8, 3), [target_pose()] * 2,
                                                   resolution=32)


def test_nodes_hand_their_models_to_comfy(comfy_free, monkeypatch):
    vae = comfy_doubles.TinyVAE()
    (guidance,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0)
    expected = align_and_sample(vae, guidance=guidance)[2]
    fake = comfy_doubles.FakeModelManager(monkeypatch)
    moves = comfy_doubles.spy_module_moves(monkeypatch)
    (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
    align, denoise = model.managed_pose_align, model.managed_denoiser
    loads = []
    for _ in range(2):
        fake.loads.clear()
        # A new GUIDANCE object (as when its settings change) still wraps the one cached estimator.
        (guidance,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0,
                                                                  threshold=-1.0)
        torch.testing.assert_close(align_and_sample(vae, guidance=guidance)[2], expected, rtol=0, atol=0)
        loads.append([models for models, _, _ in fake.loads])
        assert all(kw == {"force_full_load": True} and not inference for _, kw, inference in fake.loads)
    assert len(fake.patchers) == 3  # PoseAlign, denoiser, estimator: one ModelPatcher each, kept across runs
    assert loads[0] == loads[1]
    estimator = guidance.managed.patcher
    assert loads[0][0] == [align.patcher]                      # PoseAlign alone (then kept after VAE encodes)
    assert [denoise.patcher, estimator] in loads[0]            # the sampler: denoiser with the estimator
    assert all(models[0] in (align.patcher, denoise.patcher) for models in loads[0])
    # PoseAlign is asked for again after each VAE encode of its loop (loading the VAE may unload it).
    assert sum(models == [align.patcher] for models in loads[0]) > 2
    ours = {id(x) for x in [*model.denoiser.modules(), *model.pose_align.modules(), *guidance.estimator.modules()]}
    assert not [mod for mod, _, _ in moves if id(mod) in ours or isinstance(mod, bridge._Holder)]


def test_model_files_round_trip(tmp_path):
    torch.manual_seed(0)
    den, pa = RePoseDenoiser(unet_config=TINY_UNET_CONFIG), PoseAlign(**TINY_POSE_ALIGN_CONFIG)
    save_repose_model(tmp_path / "run" / "model", den, pa, {"step": 7})
    assert (tmp_path / "run" / "model" / MARKER).is_file()
    for path in (tmp_path / "run" / "model", tmp_path / "run", tmp_path / "run" / "model" / MARKER):
        assert is_repose_model(path)
    den2, pa2, info = load_repose_model(tmp_path / "run")
    assert info["step"] == 7 and info["kind"] == "repose" and not den2.training
    for a, b in ((den, den2), (pa, pa2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not is_repose_model(tmp_path)
    (tmp_path / "run" / "model" / MARKER).write_text(json.dumps({"kind": "flow"}))
    with pytest.raises(ValueError, match="not a RePose model"):
        load_repose_model(tmp_path / "run")


# ------------------------------------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def gfla(tmp_path_factory):
    from test_train_flow import make_gfla

    root = tmp_path_factory.mktemp("repose_deepfashion")
    make_gfla(root, people=2, views=2, seed=1)                            # 4 pairs: one batch of 4
    return root


def args_for(root, out, steps, *extra):
    return ["--model-config", "tiny", "--vae", "tiny", "--data", str(root), "--dataset", "deepfashion",
            "--resolution", "16x12", "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", "4",
            "--lr", "1e-3", "--seed", "0", "--cpu", "--log-every", "1000", *extra]


def test_training_lowers_the_loss_and_resume_continues(gfla, tmp_path):
    straight = train_repose.train(train_repose.parse_args(args_for(gfla, tmp_path / "a", 20, "--checkpoint-every",
                                                                   "10")))
    print("probe", straight["probe"])
    assert straight["step"] == 20 and len(straight["history"]) == 20
    assert straight["probe"][20] < 0.9 * straight["probe"][0]
    assert load_repose_model(straight["model_dir"])[2]["step"] == 20
    assert (tmp_path / "a" / "checkpoints" / "checkpoint-10" / "model" / MARKER).is_file()
    # Resume: 10 steps, then on to 20 from the saved step; the steps 11..20 match the straight run.
    first = train_repose.train(train_repose.parse_args(args_for(gfla, tmp_path / "b", 10, "--checkpoint-every",
                                                                "10")))
    assert first["step"] == 10
    resumed = train_repose.train(train_repose.parse_args(args_for(gfla, tmp_path / "b", 20, "--checkpoint-every",
                                                                  "10", "--resume", "latest")))
    assert [r["step"] for r in resumed["history"]] == list(range(11, 21))
    for a, b in zip(straight["history"][10:], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    log = [json.loads(line) for line in (tmp_path / "b" / train_repose.LOG_JSONL).read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 21))


def test_training_with_pose_guidance_and_errors(gfla, tmp_path, capsys):
    result = train_repose.train(train_repose.parse_args(args_for(gfla, tmp_path / "g", 2, "--pose-guidance",
                                                                 "tiny", "--checkpoint-every", "0")))
    assert result["step"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result["history"])
    # the model records it: eq 15 in the loss means the model expects that guidance at sampling
    info = load_repose_model(result["model_dir"])[2]
    assert info["trained_with_pose_guidance"] == {"scale": 1.0, "threshold": 0.1, "estimator": "tiny"}
    assert train_repose.main(args_for(gfla, tmp_path / "e", 1, "--resolution", "15x12")) == 2
    assert "multiples" in capsys.readouterr().err


class Upsample(torch.nn.Module):
    """The Stable Diffusion / ComfyUI decoder's upsampler: nearest 2x, then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.with_conv, self.scale_factor = True, 2.0
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=self.scale_factor, mode="nearest"))


def test_comfy_decoder_upsamplers_are_fused_exactly():
    """The guidance decode through ComfyUI's decoder copy fuses its LDM-style upsamplers (same values and input
    gradient as the stock modules), but not a conv that ComfyUI patches (weight casting / LoRA functions)."""
    from posetransfer.core.repose.sampler import fused_upsamplers

    torch.manual_seed(0)
    net = torch.nn.Sequential(Upsample(4), torch.nn.SiLU(), Upsample(4)).double()
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64, requires_grad=True)
    want = net(x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    calls = []
    with fused_upsamplers(net, adapters._upsampler_conv):
        assert all("forward" in vars(m) for m in net if isinstance(m, Upsample))
        original = torch.nn.functional.interpolate
        torch.nn.functional.interpolate = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            got = net(x)
        finally:
            torch.nn.functional.interpolate = original
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    assert calls == []                                         # no nearest upsampling ran: the fused path did
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)
    assert not any("forward" in vars(m) for m in net)          # restored
    net[0].conv.weight_function = [lambda w: w]                # a ComfyUI-patched conv keeps its own forward
    assert adapters._upsampler_conv(net[0]) is None and adapters._upsampler_conv(net[2]) is not None
