"""Every method from Python (posetransfer.transfer) and the command line (transfer --method ..., generate) on tiny
models written here, through the same core entries as the nodes; generate -> evaluate end to end on a tiny dataset;
the official PCDMs dtypes (fp16 UNet beside fp32 pose encoder / image projection) on the CPU; one scheduler
vocabulary for PCDMs and RePose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import comfy_doubles
from comfy_doubles import SAMPLES

import posetransfer
from posetransfer.cli import main
from posetransfer.core.images import load_image, save_image
from posetransfer.core.pcdms import save_pcdms_safetensors
from posetransfer.core.pcdms import transfer as pcdms_transfer
from posetransfer.core.pose.formats import (read_openpose_json, write_gfla_annotations, write_openpose_json,
                                            write_pairs_csv, write_pcdms_pose_txt)
from posetransfer.core.pose.geometry import resize
from posetransfer.core.transfer import load_models

H, W = 64, 48  # tiny dataset images
FAST = ["--steps", "2", "--resolution", "64"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny model files as a user would have them: PCDMs checkpoints, transformers CLIP / DINOv2 folders, a diffusers
    VAE folder, a RePose model folder, a HigherHRNet file, trained-flow-model folders; and photos with poses."""
    import transformers
    from diffusers import AutoencoderKL

    from posetransfer.core.flow_models import (PART_FLOW_TINY_CONFIG, TINY_FLOW_NET_CONFIG, TINY_REFINER_CONFIG,
                                               PartFlowNet, SingleTransformFlowNet, SingleTransformRefiner)
    from posetransfer.core.flow_models.model_files import export_model

    root = tmp_path_factory.mktemp("entry")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for i, kind in enumerate(("prior", "inpaint", "refine", "simplified")):
            save_pcdms_safetensors(comfy_doubles.tiny_pcdms(kind, i + 1), root / f"{kind}.safetensors")
        transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=224,
            patch_size=56, projection_dim=32)).save_pretrained(root / "clip")
        transformers.Dinov2Model(transformers.Dinov2Config(
            hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=56,
            patch_size=14)).save_pretrained(root / "dino")
        AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                      block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                      sample_size=64).save_pretrained(root / "vae")
        export_model("single", {"flow_net": SingleTransformFlowNet(**TINY_FLOW_NET_CONFIG),
                                "refiner": SingleTransformRefiner(**TINY_REFINER_CONFIG)}, root / "single")
        export_model("parts", {"model": PartFlowNet(**PART_FLOW_TINY_CONFIG)}, root / "structure")
    comfy_doubles.prepare_repose_files(root)
    # two photos of H x W with their poses (the samples, squashed: the poses follow)
    data = root / "data"
    data.mkdir()
    poses = {}
    for name in ("fashion_standing", "model_red_background"):
        import cv2

        img = load_image(SAMPLES / f"{name}.png")
        pose = read_openpose_json(SAMPLES / f"{name}.pose.json", default_size=img.shape[:2])[0]
        save_image(data / f"{name}.png", cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA))
        poses[f"{name}.png"] = resize(None, pose, W, H)[1]
        write_openpose_json(data / f"{name}.json", poses[f"{name}.png"])
    pairs = [("fashion_standing.png", "model_red_background.png"), ("model_red_background.png", "fashion_standing.png")]
    write_gfla_annotations(data / "annotations.csv", poses)
    write_pairs_csv(data / "pairs.csv", pairs)
    (data / "pairs.json").write_text(json.dumps([{"source_image": s, "target_image": t} for s, t in pairs]))
    (data / "poses").mkdir()
    for name, pose in poses.items():
        write_pcdms_pose_txt(data / "poses" / name.replace(".png", ".txt"), pose)
    return root


def paths(files, method):
    f = {"pcdms": dict(prior=files / "prior.safetensors", inpaint=files / "inpaint.safetensors",
                       refine=files / "refine.safetensors", clip=files / "clip", dino=files / "dino",
                       vae=files / "vae"),
         "pcdms-simplified": dict(model=files / "simplified.safetensors", dino=files / "dino", vae=files / "vae"),
         "repose": dict(model=files / comfy_doubles.REPOSE_MODEL_DIR, vae=files / "vae"),
         "single": dict(model=files / "single"), "structure": dict(model=files / "structure"), "parts": {}}
    return {k: str(v) for k, v in f[method].items()}


def cli_flags(files, method):
    flags = {"model": "--model", "prior": "--prior", "inpaint": "--inpaint", "refine": "--refine", "clip": "--clip",
             "dino": "--dino", "vae": "--vae"}
    if method == "pcdms-simplified":
        flags["model"] = "--simplified"
    if method == "repose":
        flags["model"] = "--repose"
    out = []
    for k, v in paths(files, method).items():
        out += [flags[k], v]
    return out


def settings(method):
    if method in ("pcdms", "pcdms-simplified"):
        return dict(steps=2, resolution=64)
    if method == "repose":
        return dict(steps=2, resolution=32)
    return {}


def cli_settings(method):
    return [x for k, v in settings(method).items() for x in (f"--{k}", str(v))]


def source_and_target(files):
    data = files / "data"
    return data / "fashion_standing.png", data / "fashion_standing.json", data / "model_red_background.json"


# --------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("method", ["parts", "single", "structure", "pcdms", "pcdms-simplified", "repose"])
def test_every_method_from_python_and_the_cli_gives_the_same_image(files, tmp_path, method):
    """posetransfer.transfer(image, source_pose, target_pose, method=...) and 'posetransfer transfer --method ...'
    give the same picture (the CLI writes the Python result as 8-bit PNG), at the target pose's canvas."""
    src, src_pose, tgt_pose = source_and_target(files)
    images = posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), method=method, seed=3,
                                   **paths(files, method), **settings(method))
    assert len(images) == 1 and images[0].shape == (H, W, 3) and images[0].dtype == np.float32
    assert np.isfinite(images[0]).all() and 0 <= images[0].min() and images[0].max() <= 1
    out = tmp_path / "out.png"
    argv = ["transfer", "--method", method, "--source", str(src), "--source-pose", str(src_pose), "--target-pose",
            str(tgt_pose), "--out", str(out)] + cli_flags(files, method)
    if method not in ("parts", "single", "structure"):
        argv += ["--seed", "3"] + cli_settings(method)
    assert main(argv) == 0
    written = load_image(out)
    assert np.abs(written - np.round(images[0] * 255) / 255).max() <= 1 / 255 + 1e-6


def test_pcdms_one_liner_is_the_core_entry_the_nodes_run(files):
    """The Python one-liner for pcdms-simplified equals core.pcdms.transfer.inpaint (what the PCDMs Inpaint node runs)
    on the same loaded parts and seed; and seeds matter."""
    src, src_pose, tgt_pose = source_and_target(files)
    models = load_models("pcdms-simplified", **paths(files, "pcdms-simplified"))
    a = posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), method="pcdms-simplified", models=models,
                              seed=5, steps=2, resolution=64)[0]
    image = torch.from_numpy(load_image(src))[None]
    sp, tp = read_openpose_json(src_pose), read_openpose_json(tgt_pose)
    p = models.parts
    b = pcdms_transfer.inpaint(p["inpaint"], p["vae"], p["dino"], image, sp, tp, steps=2, resolution=64,
                               seed=None, generator=torch.Generator().manual_seed(5)).images[0].numpy()
    np.testing.assert_array_equal(a, b)
    c = posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), method="pcdms-simplified", models=models,
                              seed=6, steps=2, resolution=64)[0]
    assert np.abs(a - c).max() > 1e-3


def test_samples_and_pose_guidance(files):
    """--samples N gives N different images per target (target-major); pose guidance changes RePose's result and
    leaves it unchanged at scale 0."""
    src, src_pose, tgt_pose = source_and_target(files)
    kw = dict(method="repose", **paths(files, "repose"), **settings("repose"))
    two = posetransfer.transfer(str(src), None, str(tgt_pose), samples=2, **kw)
    assert len(two) == 2 and np.abs(two[0] - two[1]).max() > 1e-3
    one = posetransfer.transfer(str(src), None, str(tgt_pose), **kw)
    np.testing.assert_array_equal(one[0], two[0])  # sample 0 = the single run (seed, then seed + 1, ...)
    hrnet = str(files / comfy_doubles.HRNET_FILE)
    guided = posetransfer.transfer(str(src), None, str(tgt_pose), pose_guidance=hrnet, guidance_scale=50.0,
                                   guidance_threshold=-1.0, **kw)
    assert np.abs(guided[0] - one[0]).max() > 1e-4
    off = posetransfer.transfer(str(src), None, str(tgt_pose), pose_guidance=hrnet, guidance_scale=0.0,
                                 guidance_threshold=-1.0, **kw)
    np.testing.assert_array_equal(off[0], one[0])


@pytest.mark.parametrize("argv_extra, message", [
    (["--method", "repose"], "--repose: --method repose needs --repose, --vae"),
    (["--method", "pcdms", "--inpaint", "missing.pt"], "--inpaint: no such file or folder: missing.pt"),
    (["--method", "structure"], "--model: method 'structure' needs a trained"),
    (["--method", "repose", "--official"], "--official: only PCDMs"),
])
def test_cli_errors_are_one_line(files, tmp_path, capsys, argv_extra, message):
    src, src_pose, tgt_pose = source_and_target(files)
    argv = ["transfer", "--source", str(src), "--source-pose", str(src_pose), "--target-pose", str(tgt_pose),
            "--out", str(tmp_path / "o.png")] + argv_extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("posetransfer: error: ") and message in err[0]


# ------------------------------------------------------------------------------------ generate + evaluate
def test_generate_then_evaluate_end_to_end_resumable(files, tmp_path, capsys):
    """generate writes S_to_T.png per pair (N sample folders with --samples N); a run stopped after one pair and
    resumed skips it and writes what an uninterrupted run writes; evaluate --best-of N scores the result."""
    data = files / "data"
    base = ["generate", "--method", "pcdms-simplified", "--pairs", str(data / "pairs.csv"), "--images", str(data),
            "--annotations", str(data / "annotations.csv"), "--annotation-size", f"{H}x{W}", "--samples", "2",
            "--quiet"] + cli_flags(files, "pcdms-simplified") + cli_settings("pcdms-simplified")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(base + ["--out", str(full)]) == 0
    names = ["fashion_standing_to_model_red_background.png", "model_red_background_to_fashion_standing.png"]
    for k in ("sample_00", "sample_01"):
        assert sorted(p.name for p in (full / k).iterdir()) == names
    assert np.abs(load_image(full / "sample_00" / names[0]) - load_image(full / "sample_01" / names[0])).max() > 0
    assert main(base + ["--out", str(part), "--limit", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--out", str(part)]) == 0
    assert "1 pair(s) written, 1 already there, of 2" in capsys.readouterr().out
    for k in ("sample_00", "sample_01"):
        for n in names:
            assert (part / k / n).read_bytes() == (full / k / n).read_bytes()
    out = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(full), "--gt", str(data), "--pairs", str(data / "pairs.csv"),
                 "--profile", "pcdms", "--best-of", "2", "--no-lpips", "--no-fid", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 2 and summary["best_of"]["n"] == 2
    assert 0 < summary["metrics"]["ssim"] <= 1


def test_generate_pcdms_json_layout_with_repose(files, tmp_path):
    """The PCDMs layout (pairs JSON + pose .txt folder) with another method; output names match the ground truth."""
    data = files / "data"
    out = tmp_path / "gen"
    assert main(["generate", "--method", "repose", "--pairs", str(data / "pairs.json"), "--images", str(data),
                 "--poses", str(data / "poses"), "--out", str(out), "--quiet"]
                + cli_flags(files, "repose") + cli_settings("repose")) == 0
    images = sorted(out.iterdir())
    assert [p.name for p in images] == ["fashion_standing_to_model_red_background.png",
                                        "model_red_background_to_fashion_standing.png"]
    assert load_image(images[0]).shape == (H, W, 3)
    assert main(["evaluate", "--pred", str(out), "--gt", str(data), "--profile", "pcdms", "--no-lpips", "--no-fid",
                 "--quiet", "--out", str(tmp_path / "eval")]) == 0


# ------------------------------------------------------------------------------------------ official set-up
def test_official_dtypes_run_on_the_cpu(files):
    """--official: the released fp16 set-up (stage-2 UNet and VAE fp16, pose encoder and image projection fp32;
    stage-3 UNet fp32) runs -- it used to fail with 'mat1 and mat2 must have the same dtype' -- and gives the fp32
    picture up to fp16 rounding."""
    src, src_pose, tgt_pose = source_and_target(files)
    official = load_models("pcdms", official=True, **paths(files, "pcdms"))
    inpaint = official.parts["inpaint"]
    assert (inpaint.unet.dtype, next(inpaint.pose_proj.parameters()).dtype,
            next(inpaint.image_proj_model_p.parameters()).dtype) == (torch.float16, torch.float32, torch.float32)
    assert official.parts["refine"].unet.dtype == torch.float32 and official.parts["vae"].dtype == torch.float16
    kw = dict(method="pcdms", steps=2, seed=1, layout="squash", resolution=64, official=False)  # 512: minutes in fp16
    half = posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), models=official, **kw)[0]
    full = posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), **paths(files, "pcdms"), **kw)[0]
    assert half.shape == (H, W, 3) and np.isfinite(half).all()
    assert np.abs(half - full).mean() < 0.02  # the same computation in fp16
    assert np.abs(half - full).max() > 0  # ... not a silent fp32 run
    with pytest.raises(ValueError, match="official: the official code squashes to a 512 frame"):
        posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), models=official, method="pcdms", layout="pad")


# ------------------------------------------------------------------------------------------------ schedulers
def test_one_scheduler_vocabulary_for_pcdms_and_repose():
    from posetransfer.core.pcdms.schedulers import make_scheduler as pcdms_scheduler
    from posetransfer.core.repose.transfer import make_scheduler as repose_scheduler
    from posetransfer.core.schedulers import SCHEDULER_NAMES, canonical_scheduler_name

    assert SCHEDULER_NAMES == ("ddpm", "ddim", "dpmpp_2m", "euler", "uni_pc", "uni_pc_bh2")
    assert canonical_scheduler_name("unipc") == "uni_pc_bh2" and canonical_scheduler_name("dpmsolver++") == "dpmpp_2m"
    for make, betas in ((pcdms_scheduler, "scaled_linear"), (repose_scheduler, "linear")):
        for name in SCHEDULER_NAMES:
            s = make(name)
            assert s.config.beta_schedule == betas and s.config.num_train_timesteps == 1000
        assert make("uni_pc").config.solver_type == "bh1" and make("uni_pc_bh2").config.solver_type == "bh2"
        assert make("dpmpp_2m").config.algorithm_type == "dpmsolver++" and make("dpmpp_2m").config.solver_order == 2
        assert make("unipc").config == make("uni_pc_bh2").config
    assert repose_scheduler("ddpm").config.variance_type == "learned_range"  # RePose's learned variance
    assert repose_scheduler("default").config == repose_scheduler("ddpm").config
    assert pcdms_scheduler("uni_pc_bh2").config.final_sigmas_type == "sigma_min"  # diffusers 0.24, as official
    with pytest.raises(ValueError, match="scheduler: expected one of default, ddpm"):
        repose_scheduler("lms")


def test_official_selects_the_released_set_up(files, monkeypatch):
    """official=True (--official): the simplified model and its encoders in fp16, the 512 squash frame, the official
    random draws (torch's global RNG seeded with the seed); the 512 run itself is too slow for fp16 on a CPU, so the
    core call is recorded instead of run."""
    import types

    src, src_pose, tgt_pose = source_and_target(files)
    seen = {}

    def record(image, sources, targets, models, **kw):
        seen.update(kw, generator=torch.rand(1))  # the first draw of the global RNG after the seeding
        return types.SimpleNamespace(images=torch.zeros(1, H, W, 3))

    monkeypatch.setattr(pcdms_transfer, "transfer", record)
    models = load_models("pcdms-simplified", official=True, **paths(files, "pcdms-simplified"))
    assert {p.dtype for p in models.parts["inpaint"].parameters()} == {torch.float16}
    assert models.parts["dino"].dtype == torch.float16 and models.parts["vae"].dtype == torch.float16
    posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), method="pcdms-simplified", models=models, seed=7)
    assert (seen["layout"], seen["resolution"], seen["official_rng"]) == ("squash", 512, True)
    torch.manual_seed(7)
    assert torch.equal(seen["generator"], torch.rand(1))
    posetransfer.transfer(str(src), str(src_pose), str(tgt_pose), method="pcdms-simplified", models=models,
                          official=False, seed=7)
    assert (seen["layout"], seen["resolution"], seen["official_rng"]) == ("pad", 512, False)
