"""Guided nodes inside ComfyUI's ``torch.inference_mode()``: ComfyUI runs every node (loaders included) under it,
so the node inputs, the VAE's weights and a pose estimator's weights can all be inference tensors, which autograd
cannot save for backward. The guided PCDMs and RePose nodes must give the same result there as outside it, and
the guidance must still act. Tiny models, CPU."""

import contextlib
import json

import pytest
import torch

import comfy_doubles
from comfy_doubles import PCDMS_FILES, SAMPLES, TinyClipVision, TinyDinoVision, TinyVAE
from test_pcdms_nodes import FAST, _one_thread, models_dir  # noqa: F401  (fixtures)

from posetransfer.core.images import load_image
from posetransfer.core.repose.pose_estimator import TinyPoseEstimator
from posetransfer.nodes import pcdms_nodes as pn, repose_nodes
from posetransfer.nodes.adapters import PoseGuidanceFactory


def _mode(inference: bool):
    return torch.inference_mode() if inference else contextlib.nullcontext()


def _pose(name):
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def pcdms_inputs(inference: bool, scale: float = 1.0) -> dict:
    """Everything a guided PCDMs run takes, made as ComfyUI makes it (in inference mode when ``inference``)."""
    with _mode(inference):
        pn._CACHE.clear()  # load the models anew, in this mode
        load = pn.PoseTransferPCDMsLoader().load
        models = {kind: load(PCDMS_FILES[kind])[0] for kind in ("inpaint", "refine", "simplified")}
        torch.manual_seed(0)
        guidance = PoseGuidanceFactory(TinyPoseEstimator(num_joints=3, width=4), scale=scale, threshold=-1.0)
        encoders = pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", TinyClipVision(0), TinyDinoVision())[0]
        image = torch.from_numpy(load_image(SAMPLES / "fashion_standing.png"))[None].clone()
        out = dict(models=models, guidance=guidance, encoders=encoders, vae=TinyVAE(), image=image,
                   source_pose=_pose("fashion_standing.pose.json"), target_pose=_pose("jumper.pose.json"))
    assert image.is_inference() == inference and next(out["vae"].vae.parameters()).is_inference() == inference
    assert next(guidance.estimator.parameters()).is_inference() == inference
    return out


def run_pcdms(x: dict, inference: bool, guided: bool = True) -> dict:
    guidance = x["guidance"] if guided else None
    args = dict(FAST, seed=1, cfg=2.0, scheduler="default", layout="pad", guidance=guidance)
    with _mode(inference):
        coarse = pn.PoseTransferPCDMsInpaint().generate(x["models"]["inpaint"], x["encoders"], x["vae"], x["image"],
                                                        x["source_pose"], x["target_pose"], **args)[0]
        refined = pn.PoseTransferPCDMsRefine().refine(x["models"]["refine"], x["encoders"], x["vae"], coarse,
                                                      x["image"], **args)[0]
        simple = pn.PoseTransferPCDMsInpaint().generate(x["models"]["simplified"], x["encoders"], x["vae"],
                                                        x["image"], x["source_pose"], x["target_pose"], **args)[0]
    return {"inpaint": coarse, "refine": refined, "simplified": simple}


def test_pcdms_guided_nodes_in_inference_mode(models_dir):
    plain = run_pcdms(pcdms_inputs(False), inference=False)
    comfy = run_pcdms(pcdms_inputs(True), inference=True)
    unguided = run_pcdms(pcdms_inputs(False), inference=False, guided=False)
    for stage in plain:
        torch.testing.assert_close(comfy[stage], plain[stage], rtol=0, atol=1e-6, msg=stage)
        assert (plain[stage] - unguided[stage]).abs().max() > 1e-4, f"{stage}: the guidance did not act"


# ------------------------------------------------------------------------------------------------ RePose
@pytest.fixture
def repose_dir(tmp_path_factory, monkeypatch):
    import sys

    for name in ("comfy", "comfy.model_management", "comfy.utils", "comfy.model_patcher", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    folder = comfy_doubles.prepare_repose_files(tmp_path_factory.mktemp("repose_models"))
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(folder))
    return folder


def run_repose(inference: bool, scale: float) -> torch.Tensor:
    """The whole RePose graph made and run as in ComfyUI (every node, loaders included, in inference mode when
    ``inference``)."""
    with _mode(inference):
        repose_nodes._CACHE.clear()
        (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
        (guidance,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=scale,
                                                                  threshold=-1.0)
        vae = TinyVAE()
        g = torch.Generator().manual_seed(0)
        source = torch.rand(1, 48, 40, 3, generator=g)
        pose = _pose("jumper.pose.json")
        feats, _ = repose_nodes.PoseTransferPoseAlign().align(model, vae, source, pose, resolution=32)
        (image,) = repose_nodes.PoseTransferRePoseSampler().sample(model, feats, vae, pose, seed=1, steps=2, w_c=2.0,
                                                                   scheduler="ddim", guidance=guidance)
    assert source.is_inference() == inference
    return image


def test_repose_guided_sampler_in_inference_mode(repose_dir):
    plain = run_repose(False, 50.0)
    comfy = run_repose(True, 50.0)
    torch.testing.assert_close(comfy, plain, rtol=0, atol=1e-6)
    assert (plain - run_repose(False, 0.0)).abs().max() > 1e-4  # the guidance acted


def test_estimator_offloaded_in_inference_mode_still_differentiates(repose_dir):
    """ComfyUI may offload our estimator under inference mode (its weights then become inference tensors); the
    next guided run makes them plain again instead of failing in backward."""
    plain = run_repose(False, 50.0)
    (guidance,) = repose_nodes.PoseTransferPoseGuidance().make(comfy_doubles.HRNET_FILE, scale=50.0, threshold=-1.0)
    with torch.inference_mode():
        guidance.estimator.to(torch.float64).to(torch.float32)  # what an offload under inference mode does
    assert next(guidance.estimator.parameters()).is_inference()
    (model,) = repose_nodes.PoseTransferRePoseLoader().load(comfy_doubles.REPOSE_MODEL_DIR)
    vae = TinyVAE()
    source = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    pose = _pose("jumper.pose.json")
    with torch.inference_mode():
        feats, _ = repose_nodes.PoseTransferPoseAlign().align(model, vae, source, pose, resolution=32)
        (image,) = repose_nodes.PoseTransferRePoseSampler().sample(model, feats, vae, pose, seed=1, steps=2, w_c=2.0,
                                                                   scheduler="ddim", guidance=guidance)
    torch.testing.assert_close(image, plain, rtol=0, atol=1e-6)
    assert not next(guidance.estimator.parameters()).is_inference()
