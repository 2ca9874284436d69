"""Bad input to the nodes: each case gets a ValueError that names the input (never a silent wrong image, never a
crash deep in torch). The checks all run before any model does, so stand-in models are enough: fast."""

from __future__ import annotations

import sys

import pytest
import torch

import comfy_doubles
from comfy_doubles import SAMPLES, TinyClipVision, TinyDinoVision, TinyVAE
from posetransfer.core.flow_models.model_files import FILE_KEY
from posetransfer.core.pose.geometry import resize
from posetransfer.core.pcdms.pipelines import PriorPipeline
from posetransfer.core.pose.formats import dump_pose_keypoint, load_pose_keypoint
from posetransfer.core.repose import transfer as repose_transfer
from posetransfer.core.repose.pose_align import PoseAlignOutput
from posetransfer.nodes import bridge, checks, flow_model_nodes, pcdms_nodes as pn, pose_nodes, repose_nodes as rn
from posetransfer.nodes.flowwarp_nodes import PoseTransferFlowWarp

NAN = float("nan")


def pose(name="jumper", size=None):
    """A sample's POSE_KEYPOINT (a list of one frame), on a size x size canvas when given."""
    p = load_pose_keypoint((SAMPLES / f"{name}.pose.json").read_text())[0]
    return dump_pose_keypoint(resize(None, p, size, size)[1] if size else p)


def no_people(size=32):
    return [{"people": [], "canvas_width": size, "canvas_height": size}]


@pytest.fixture(autouse=True)
def comfy_free(tmp_path, monkeypatch):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(tmp_path))
    rn._CACHE.clear()
    flow_model_nodes._CACHE.clear()
    yield tmp_path
    bridge.set_interrupt_callback(None)


# ------------------------------------------------------------------------------------------ shared checks
def test_image_check_names_the_input_and_converts_rgba_and_grey():
    rgba = torch.rand(2, 5, 4, 4)
    assert torch.equal(checks.image(rgba, "x"), rgba[..., :3])             # alpha dropped (documented)
    grey = checks.image(torch.rand(1, 5, 4, 1), "x")
    assert grey.shape == (1, 5, 4, 3) and torch.equal(grey[..., 0], grey[..., 2])
    for bad, why in ((torch.rand(1, 5, 4), "shape"), (torch.full((1, 5, 4, 3), NAN), "finite"),
                     (torch.rand(1, 5, 4, 2), "channels"), ({"people": []}, "IMAGE"),
                     ((torch.rand(1, 5, 4, 3) * 255).byte(), "float"), (torch.full((1, 2, 2, 3), 3.0), "0..1")):
        with pytest.raises(ValueError, match=f"the_input: .*{why}"):
            checks.image(bad, "the_input")


def test_range_checks():
    assert checks.int_in(64, "resolution", 64, 2048, multiple=8) == 64
    with pytest.raises(ValueError, match=r"resolution: expected a multiple of 8 from 64 to 2048, got 60"):
        checks.int_in(60, "resolution", 64, 2048, multiple=8)
    with pytest.raises(ValueError, match=r"steps: expected an integer from 1, got 0"):
        checks.int_in(0, "steps", 1)
    with pytest.raises(ValueError, match="cfg: expected a number from 0 to 30, got nan"):
        checks.float_in(NAN, "cfg", 0, 30)


# ------------------------------------------------------------------------------------------- FlowWarp
def test_flowwarp_frames_without_the_person_name_the_pose_input():
    image, src, tgt = torch.rand(1, 32, 32, 3), pose("fashion_standing", 32), pose("jumper", 32)
    warp = PoseTransferFlowWarp().warp
    with pytest.raises(ValueError, match=r"target_pose\[0\] \(target_person\): expected at least one person"):
        warp(image, src, no_people(), segmentation="skeleton")
    with pytest.raises(ValueError, match=r"source_pose\[0\] \(source_person\): expected at least one person"):
        warp(image, no_people(), tgt, segmentation="skeleton")
    with pytest.raises(ValueError, match=r"target_pose\[0\] \(target_person\): person index 1 out of range"):
        warp(image, src, tgt * 2, segmentation="skeleton", retarget=False, target_person=1)


def test_flowwarp_image_checks_and_rgba_tooltip():
    src, tgt = pose("fashion_standing", 16), pose("jumper", 16)
    warp = PoseTransferFlowWarp().warp
    with pytest.raises(ValueError, match=r"image: expected an IMAGE of shape \[B, H, W, C\], got shape \(1, 16, 16\)"):
        warp(torch.rand(1, 16, 16), src, tgt)                                 # a MASK in the IMAGE socket
    with pytest.raises(ValueError, match="image: expected finite"):
        warp(torch.full((1, 16, 16, 3), NAN), src, tgt)
    out = warp(torch.rand(1, 16, 16, 4), src, tgt, segmentation="skeleton")[0]  # RGBA: alpha dropped
    assert out.shape == (1, 16, 16, 3)
    assert "alpha" in PoseTransferFlowWarp.INPUT_TYPES()["required"]["image"][1]["tooltip"]


# -------------------------------------------------------------------------------------------- Pose nodes
def test_pose_nodes_pinned_errors():
    with pytest.raises(ValueError, match=r"target_pose\[0\] \(target_person\): expected at least one person"):
        pose_nodes.PoseTransferRetargetPose().retarget(pose("fashion_standing"), no_people())
    with pytest.raises(ValueError, match=r"pose_keypoint\[0\].*keypoint 0 is not finite"):
        pose_nodes.PoseTransferRenderPose().render(
            [{"people": [{"pose_keypoints_2d": [NAN] * 54}], "canvas_width": 8, "canvas_height": 8}])
    with pytest.raises(ValueError, match=r"pose_keypoint\[0\]: canvas 1000000x8 is larger than the 16384 px"):  # not a 30 TB image
        pose_nodes.PoseTransferRenderPose().render([{"people": [], "canvas_width": 1000000, "canvas_height": 8}])
    with pytest.raises(ValueError, match="pose_json: canvas width: expected a positive integer"):
        pose_nodes.PoseTransferLoadPose().load("(none)", '{"people": [], "canvas_width": 0, "canvas_height": 4}')


# ------------------------------------------------------------------------------------------------- RePose
def stub_repose_model():
    return rn.RePoseModel(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))


def test_repose_align_checks_inputs_before_running():
    align, model, vae = rn.PoseTransferPoseAlign().align, stub_repose_model(), TinyVAE()
    tgt = pose("jumper", 32)
    with pytest.raises(ValueError, match="source_image: expected finite"):
        align(model, vae, torch.full((1, 8, 8, 3), NAN), tgt, resolution=32)
    with pytest.raises(ValueError, match=r"source_image: expected an IMAGE \(torch tensor"):
        align(model, vae, tgt, tgt, resolution=32)                            # a pose in the IMAGE socket
    with pytest.raises(ValueError, match=r"target_pose\[0\]: expected at least one person"):
        align(model, vae, torch.rand(1, 8, 8, 3), no_people(), resolution=32)
    with pytest.raises(ValueError, match="resolution: expected an integer from 16 to 2048, got 0"):
        align(model, vae, torch.rand(1, 8, 8, 3), tgt, resolution=0)
    with pytest.raises(ValueError, match="iterations"):
        align(model, vae, torch.rand(1, 8, 8, 3), tgt, resolution=32, iterations=-1)
    assert "alpha" in rn.PoseTransferPoseAlign.INPUT_TYPES()["required"]["source_image"][1]["tooltip"]


def test_repose_sampler_checks_widgets_and_the_target_canvas():
    sample, model, vae = rn.PoseTransferRePoseSampler().sample, stub_repose_model(), TinyVAE()
    aligned = PoseAlignOutput(features=torch.zeros(1, 4, 4, 4), flow=None, image_flow=None, warped_image=None)
    feats = rn.RePoseFeatures(aligned, torch.zeros(1, 3, 32, 32), (32, 32), (32, 32), 1)
    with pytest.raises(ValueError, match="steps: expected an integer from 1 to 1000, got 0"):
        sample(model, feats, vae, pose("jumper", 32), steps=0)
    with pytest.raises(ValueError, match="w_c"):
        sample(model, feats, vae, pose("jumper", 32), steps=1, w_c=NAN)
    with pytest.raises(ValueError, match=r"target_pose: canvas 48x48, but repose_features were computed for 32x32"):
        sample(model, feats, vae, pose("jumper", 48), steps=1)
    with pytest.raises(ValueError, match="repose_model: expected a REPOSE_MODEL"):   # a PCDMs model wired in
        sample(pn.PCDMsModel(torch.nn.Linear(1, 1), "inpaint"), feats, vae, pose("jumper", 32))
    # Same canvas and frame count, another pose than PoseAlign's: refused (it rendered the jumper).
    rendered, _ = repose_transfer.pose_images(load_pose_keypoint(pose("jumper", 32)), (32, 32))
    feats = rn.RePoseFeatures(aligned, torch.zeros(1, 3, 32, 32), (32, 32), (32, 32), 1, rendered)
    with pytest.raises(ValueError, match="target_pose: not the pose that PoseAlign aligned repose_features to"):
        sample(model, feats, vae, pose("fashion_standing", 32), steps=1)


def test_repose_guidance_bad_values_and_corrupt_files(comfy_free):
    make = rn.PoseTransferPoseGuidance().make
    (comfy_free / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"estimator_name: .*junk\.pth: not a readable HigherHRNet checkpoint"):
        make("junk.pth")
    (comfy_free / "cfg.pth").write_bytes(b"not a checkpoint")
    (comfy_free / "cfg.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"estimator_name: .*cfg\.json: expected a JSON dict of HigherHRNet"):
        make("cfg.pth")
    (comfy_free / "cfg.json").write_text('{"no_such_setting": 1}')
    with pytest.raises(ValueError, match=r"cfg\.json: .*no_such_setting"):
        make("cfg.pth")
    for name, value in (("scale", -1.0), ("scale", NAN), ("threshold", 20.0)):
        with pytest.raises(ValueError, match=name):
            make("junk.pth", **{name: value})


def test_repose_loader_corrupt_model_folder(comfy_free):
    folder = comfy_free / "broken"
    for sub in ("denoiser", "pose_align"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text("{broken")
        (folder / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (folder / "posetransfer_repose_model.json").write_text("{}")
    with pytest.raises(ValueError, match="model_name: cannot load RePose model 'broken'"):
        rn.PoseTransferRePoseLoader().load("broken", "float32")


# --------------------------------------------------------------------------------------------- flow model
def test_flow_model_loader_corrupt_files(comfy_free):
    from safetensors.torch import save_file

    (comfy_free / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model_name: cannot load flow model 'junk.safetensors'"):
        flow_model_nodes.PoseTransferFlowModelLoader().load("junk.safetensors")
    save_file({"x": torch.zeros(1)}, str(comfy_free / "empty.safetensors"),
              metadata={FILE_KEY: "single"})
    with pytest.raises(ValueError, match="model_name: .*without its 'flow_net' module"):   # was a KeyError
        flow_model_nodes.PoseTransferFlowModelLoader().load("empty.safetensors")


# -------------------------------------------------------------------------------------------------- PCDMs
@pytest.fixture(scope="module")
def encoders():
    return pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", TinyClipVision(0), TinyDinoVision())[0]


def pcdms(kind):
    return pn.PCDMsModel(torch.nn.Linear(1, 1), kind, f"{kind}.safetensors")


FAST = dict(steps=2, resolution=64)


def test_pcdms_inpaint_checks_images_poses_and_batches(encoders):
    gen, vae = pn.PoseTransferPCDMsInpaint().generate, TinyVAE()
    img, src, tgt = torch.rand(1, 32, 32, 3), pose("fashion_standing", 32), pose("jumper", 32)
    cases = [
        (dict(source_image=torch.full((1, 32, 32, 3), NAN)), "source_image: expected finite"),
        (dict(source_image=torch.rand(1, 32, 32)), r"source_image: expected an IMAGE of shape"),
        (dict(source_image=torch.rand(2, 32, 32, 3), source_pose=src * 2, target_pose=tgt * 3),
         r"source_image: expected 1 or one per target_pose frame \(3\), got 2"),
        (dict(source_pose=src * 2, target_pose=tgt * 2), r"source_pose: expected one frame per source_image \(1\)"),
        (dict(target_pose=no_people()), r"target_pose\[0\]: expected at least one person"),
        (dict(source_pose=no_people()), r"source_pose\[0\]: expected at least one person"),
        (dict(target_pose=tgt + pose("jumper", 48)), r"target_pose\[1\]: canvas 48x48 differs"),
        (dict(prior_embed=pn.PCDMsEmbed(torch.zeros(1, 32)), target_pose=tgt * 3),
         r"prior_embed: expected one embedding per target_pose frame \(3\), got 1"),
        (dict(resolution=60), "resolution: expected a multiple of 8 from 64 to 2048, got 60"),
        (dict(steps=0), "steps"),
        (dict(cfg=-1.0), "cfg"),
        (dict(layout="stretch"), r"layout: expected one of \('pad', 'squash'\)"),
    ]
    for change, message in cases:
        args = dict(source_image=img, source_pose=src, target_pose=tgt, seed=1, **FAST)
        args.update(change)
        with pytest.raises(ValueError, match=message):
            gen(pcdms("inpaint"), encoders, vae, **args)
    tips = pn.PoseTransferPCDMsInpaint.INPUT_TYPES()["required"]
    assert "alpha" in tips["source_image"][1]["tooltip"]


def test_pcdms_prior_needs_two_steps(encoders):
    assert pn.PoseTransferPriorEmbed.INPUT_TYPES()["required"]["steps"][1]["min"] == 2
    with pytest.raises(ValueError, match="steps: expected an integer from 2 to 1000, got 1"):
        pn.PoseTransferPriorEmbed().embed(pcdms("prior"), encoders, torch.rand(1, 32, 32, 3),
                                          pose("fashion_standing", 32), pose("jumper", 32), steps=1, resolution=64)
    prior = comfy_doubles.tiny_pcdms("prior")                 # the core pipeline too (was a ZeroDivisionError)
    with pytest.raises(ValueError, match="steps: expected at least 2"):
        PriorPipeline(prior)(torch.zeros(1, 36), torch.zeros(1, 36), torch.zeros(1, 32), steps=1)


def test_pcdms_refine_batches_and_wrong_models(encoders):
    refine, vae = pn.PoseTransferPCDMsRefine().refine, TinyVAE()
    coarse = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match=r"source_image: expected 1 or one per coarse_image \(1\), got 2"):
        refine(pcdms("refine"), encoders, vae, coarse, torch.rand(2, 32, 32, 3), **FAST)
    with pytest.raises(ValueError, match="coarse_image: expected finite"):
        refine(pcdms("refine"), encoders, vae, coarse * NAN, coarse, **FAST)
    with pytest.raises(ValueError, match="pcdms_model: expected a PCDMS_MODEL"):      # a RePose model wired in
        refine(stub_repose_model(), encoders, vae, coarse, coarse, **FAST)
    with pytest.raises(ValueError, match="guidance: expected GUIDANCE"):
        refine(pcdms("refine"), encoders, vae, coarse, coarse, guidance=encoders, **FAST)


def test_pcdms_loader_corrupt_files(comfy_free):
    (comfy_free / "junk.safetensors").write_bytes(b"garbage")
    (comfy_free / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        pn.PoseTransferPCDMsLoader().load("junk.safetensors")
    with pytest.raises(ValueError, match=r"junk.pt: refused by torch.load\(weights_only=True\)"):
        pn.PoseTransferPCDMsLoader().load("junk.pt")


# ------------------------------------------------------------------- one size limit (issue 12, part 4)
def test_one_size_limit_for_images_masks_and_resizes():
    # Expanded views: the shapes are beyond the limit, but no memory of that size exists.
    from posetransfer.core.pose.geometry import pad
    from posetransfer.core.images import tensor_to_mask
    from posetransfer.core.pose.keypoints import MAX_PIXELS, MAX_SIDE

    assert (MAX_SIDE, MAX_PIXELS) == (16384, 64 * 2**20)
    with pytest.raises(ValueError, match=r"the_image: canvas 16385x4 is larger than the 16384 px per side"):
        checks.image(torch.zeros(1, 1, 1, 3).expand(2, 4, 16385, 3), "the_image")
    with pytest.raises(ValueError, match=r"the_mask: canvas 8193x8193 is larger .* 64 Mpx in all"):
        tensor_to_mask(torch.zeros(1, 1, 1).expand(1, 8193, 8193), "the_mask")
    with pytest.raises(ValueError, match=r"resize: canvas 20000x20000"):
        resize(None, load_pose_keypoint(pose())[0], 20000, 20000)
    with pytest.raises(ValueError, match=r"pad: canvas 16400x400"):
        pad(None, load_pose_keypoint(pose())[0], 16000, 0, 0, 0)
