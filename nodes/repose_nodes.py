"""RePoseDM nodes: model loader, PoseAlign (aligned source features + warped-source preview), PoseGuidance (a
pose estimator as GUIDANCE) and the RePose sampler. Declarations, input conversions and bridge calls over
:mod:`..core.repose.transfer` (frames, pose images, keypoint targets, schedulers: the entry the command line and
Python call too).

A ComfyUI VAE becomes the core's codec through :class:`.adapters.ComfyVaeCodec`. Guidance differentiates through
the VAE decoder (ComfyUI's ``first_stage_model``) and runs outside ComfyUI's inference mode.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

import torch

from ..core.repose import transfer as repose
from ..core.repose.denoiser import RePoseDenoiser
from ..core.repose.guidance import percent_timestep_range
from ..core.repose.model_files import MARKER, load_repose_model
from ..core.repose.pose_align import PoseAlign
from ..core.repose.pose_estimator import load_pose_estimator
from ..core.repose.transfer import GUIDANCE_TARGETS, AlignedSource
from . import bridge
from .adapters import GUIDANCE_TYPE, ComfyVaeCodec, PoseGuidanceFactory
from .checks import IMAGE_NOTE, float_in, image, int_in, poses
from .loaded_models import NO_MODEL, LoadCache, chosen_model, dtype_input, model_input, resolve_dtype
from .sampler_inputs import scheduler_input, scheduler_name, seed_input

log = logging.getLogger(__name__)

CATEGORY = "posetransfer/repose"
MODEL_TYPE = "REPOSE_MODEL"
FEATURES_TYPE = "REPOSE_FEATURES"
MASK_FROM = ("generated", "target", "union")
ESTIMATOR_EXTS = (".pth", ".pt")

_CACHE = LoadCache(4)  # (path stamp, "model" | "estimator", options) -> loaded object


# ---------------------------------------------------------------------------------------------- objects
@dataclass
class RePoseModel:
    """REPOSE_MODEL: the denoiser and PoseAlign of one saved RePose model."""

    denoiser: RePoseDenoiser
    pose_align: PoseAlign
    name: str = ""
    info: dict = field(default_factory=dict)
    # Each handed to ComfyUI's model management on its own: PoseAlign and the sampler run at different times.
    managed_denoiser: bridge.ManagedModel | None = field(default=None, repr=False)
    managed_pose_align: bridge.ManagedModel | None = field(default=None, repr=False)

    def __post_init__(self):
        self.managed_denoiser = self.managed_denoiser or bridge.managed(self.denoiser)
        self.managed_pose_align = self.managed_pose_align or bridge.managed(self.pose_align)


RePoseFeatures = AlignedSource  # REPOSE_FEATURES: PoseAlign's output for the sampler (core.repose.transfer)


def _require_model(repose_model) -> RePoseModel:
    if not isinstance(repose_model, RePoseModel):
        raise ValueError(f"repose_model: expected a REPOSE_MODEL from the RePose loader, got "
                         f"{type(repose_model).__name__}")
    return repose_model


# ---------------------------------------------------------------------------------------------- loader
def list_repose_models() -> list[str]:
    """RePose model folders (relative, ``/``-separated; a marker file inside) in the posetransfer model folder."""
    names = bridge.list_model_files({".json"})
    return sorted({posixpath.dirname(n) or "." for n in names if posixpath.basename(n) == MARKER})


class PoseTransferRePoseLoader:
    """Load a RePose model (denoiser + PoseAlign) saved by train_repose."""

    DESCRIPTION = ("Load a RePoseDM model from models/posetransfer: a folder written by 'training/train_repose.py' "
                   "(its OUT/model folder: denoiser/ + pose_align/ + posetransfer_repose_model.json), copied or "
                   "linked there. Connect it to RePose PoseAlign and RePose Sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("repose_model",)
    OUTPUT_TOOLTIPS = ("The RePose denoiser and PoseAlign; connect to RePose PoseAlign and RePose Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": model_input(list_repose_models(), "A RePose model folder in models/posetransfer (the "
                                                            "OUT/model folder of a train_repose run)."),
            "dtype": dtype_input(),
        }}

    def load(self, model_name, dtype="auto"):
        chosen_model(model_name, "model_name", "no RePose model found in the posetransfer model folder; train one "
                                               "with training/train_repose.py, copy its OUT/model folder there and "
                                               "refresh")
        torch_dtype = resolve_dtype(dtype)
        try:
            marker = bridge.model_file_path(MARKER if model_name == "." else f"{model_name}/{MARKER}")
        except FileNotFoundError:
            raise FileNotFoundError(f"RePose model {model_name!r} not found in the posetransfer model folder(s); "
                                    f"expected a folder with {MARKER}") from None
        path = os.path.dirname(marker)

        def load():
            denoiser, pose_align, info = load_repose_model(path, device="cpu", dtype=torch_dtype)
            return RePoseModel(denoiser, pose_align, model_name, info)

        # unreadable / corrupt config or weights (diffusers: OSError) -> ValueError naming the model
        return (_CACHE.load(path, ("model", str(torch_dtype)), load,
                            f"model_name: cannot load RePose model {model_name!r}"),)


# ------------------------------------------------------------------------------------------- PoseAlign
class PoseTransferPoseAlign:
    """RePose PoseAlign: align the source photo's latent features to the target pose (run once per pose)."""

    DESCRIPTION = ("RePoseDM's recurrent pose alignment: warps the source photo towards the target pose in N "
                   "refinement steps (global, then ever more local attention) and re-encodes it; the aligned "
                   "features condition RePose Sampler. The preview shows the warped source photo. The target pose "
                   "is rendered on a frame 'resolution' pixels high (the pose canvas' aspect ratio); the source "
                   "photo is resized to that frame.")
    CATEGORY = CATEGORY
    FUNCTION = "align"
    RETURN_TYPES = (FEATURES_TYPE, "IMAGE")
    RETURN_NAMES = ("repose_features", "warped_source")
    OUTPUT_TOOLTIPS = ("Aligned source features; connect to RePose Sampler's repose_features.",
                       "The source photo warped to the target pose (preview), at the target pose's canvas size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repose_model": (MODEL_TYPE, {"tooltip": "The RePose model (its PoseAlign is used)."}),
            "vae": ("VAE", {"tooltip": "The VAE the model was trained with (the SD 1.x / 2.x VAE for the paper "
                                       "setting)."}),
            "source_image": ("IMAGE", {"tooltip": "The photo of the person (1 image, or one per target pose)."
                                                    + IMAGE_NOTE}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose(s) to move the person into; one result per "
                                                         "frame."}),
            "resolution": ("INT", {"default": 256, "min": 16, "max": 2048, "step": 8,
                                   "tooltip": "Height of the working frame in pixels (rounded to the VAE factor); "
                                              "use the resolution the model was trained at (e.g. 256 for "
                                              "256x176 DeepFashion)."}),
            "iterations": ("INT", {"default": 0, "min": 0, "max": 20,
                                   "tooltip": "Recurrent refinement steps N; 0 uses the model's own (paper: 5)."}),
        }}

    def align(self, repose_model, vae, source_image, target_pose, resolution=256, iterations=0):
        model = _require_model(repose_model)
        resolution, iterations = int_in(resolution, "resolution", 16, 2048), int_in(iterations, "iterations", 0, 20)
        codec = ComfyVaeCodec(vae, keep=(model.managed_pose_align,))
        targets = poses(target_pose, "target_pose", person=True)
        source = image(source_image, "source_image")
        bridge.check_interrupt()
        with bridge.on_device(model.managed_pose_align) as device, torch.no_grad():
            feats = repose.align(model.pose_align, codec, source, targets, resolution=resolution,
                                 iterations=iterations or None, device=device)
        preview = repose.to_canvas((feats.aligned.warped_image + 1) / 2, feats.canvas)
        return (feats, preview)


# -------------------------------------------------------------------------------------------- guidance
def list_estimators() -> list[str]:
    return bridge.list_model_files(set(ESTIMATOR_EXTS))


class PoseTransferPoseGuidance:
    """RePose PoseGuidance: a pose estimator that steers sampling towards the target pose (eq 11-16)."""

    DESCRIPTION = ("Pose gradient guidance (RePoseDM eq 11-16): at every step the current clean-image estimate is "
                   "decoded, a HigherHRNet pose estimator compares it with the target pose, and the gradient of "
                   "that pose error steers the noise prediction. Load the official HigherHRNet checkpoint "
                   "(pose_higher_hrnet_w32_512.pth, or W48) from models/posetransfer. Each guided step costs one VAE "
                   "decode and one estimator pass, forward and backward (about 3x an unguided step); "
                   "start_percent / end_percent limit which steps are guided. As the paper writes eq 11, the "
                   "estimator's features of the generated image are compared with those of the rendered target "
                   "skeleton (a photo against a stick figure; see core/repose/guidance.py).")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (GUIDANCE_TYPE,)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The pose guidance; connect to RePose Sampler's guidance input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "estimator_name": model_input(list_estimators(), "A HigherHRNet checkpoint (.pth) in models/posetransfer "
                                                             "(W32 or W48; a NAME.json beside it may give another "
                                                             "HigherHRNet config)."),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                "tooltip": "eta: strength of the guidance (1 = the paper's eq 15; 0 turns it "
                                           "off)."}),
            "threshold": ("FLOAT", {"default": 0.1, "min": -1.0, "max": 10.0, "step": 0.01,
                                    "tooltip": "Joint-heatmap threshold of the weight W_h: only where the summed "
                                               "heatmaps exceed it is the pose compared (paper: 0.1)."}),
            "mask_from": (list(MASK_FROM), {
                "default": "generated",
                "tooltip": "Whose heatmaps make W_h: the generated image's (paper), the target's, or both."}),
        }, "optional": {
            "decode_scale": ("FLOAT", {
                "default": 1.0, "min": 0.25, "max": 1.0, "step": 0.05,
                "tooltip": "1 = exact (the paper). Below 1 the guidance decodes the clean-latent estimate shrunk by "
                           "this factor: cheaper steps, weaker guidance (measured at 256x176: 0.75 makes a guided "
                           "step 2.1x an unguided one instead of 3.0x; 0.5 guides much less)."}),
            "start_percent": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Guide from this point of sampling on (0 = the first, noisiest step). Steps outside "
                           "start..end cost no more than unguided ones."}),
            "end_percent": ("FLOAT", {
                "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Guide up to this point of sampling (1 = the last step). 0..1 = every step (the "
                           "paper)."}),
            "target": (list(GUIDANCE_TARGETS), {
                "default": "skeleton",
                "tooltip": "What the generated image is compared with. skeleton (the paper's eq 11): the "
                           "estimator's features of the rendered target skeleton -- a stick figure, not a photo, "
                           "so the comparison is never exact. keypoints: the estimator's joint heatmaps against "
                           "heatmaps drawn at the target keypoints (RePose Sampler only)."}),
        }}

    def make(self, estimator_name, scale=1.0, threshold=0.1, mask_from="generated", decode_scale=1.0,
             start_percent=0.0, end_percent=1.0, target="skeleton"):
        chosen_model(estimator_name, "estimator_name", "no pose estimator (.pth) in the posetransfer model folder; "
                                                       "put the HigherHRNet checkpoint there and refresh")
        if mask_from not in MASK_FROM:
            raise ValueError(f"mask_from: expected one of {MASK_FROM}, got {mask_from!r}")
        if target not in GUIDANCE_TARGETS:
            raise ValueError(f"target: expected one of {GUIDANCE_TARGETS}, got {target!r}")
        scale, threshold = float_in(scale, "scale", 0.0, 100.0), float_in(threshold, "threshold", -1.0, 10.0)
        if not 0 < float(decode_scale) <= 1:
            raise ValueError(f"decode_scale: expected a factor in (0, 1] (1 = exact), got {decode_scale!r}")
        timestep_range = percent_timestep_range(start_percent, end_percent)  # T = 1000: RePose and PCDMs
        path = bridge.model_file_path(estimator_name)

        # the managed wrapper is cached, so the estimator keeps one ComfyUI ModelPatcher
        managed = _CACHE.load(path, ("estimator",), lambda: bridge.managed(load_pose_estimator(path)),
                              "estimator_name", errors=(ValueError,))
        factory = PoseGuidanceFactory(managed.module, float(scale), float(threshold), mask_from, estimator_name,
                                      managed, float(decode_scale), timestep_range, target)
        factory.make()  # validates the settings now rather than at sampling time
        return (factory,)


class PoseTransferRePoseSampler:
    """RePose Sampler: generate the person in the target pose from the aligned features."""

    DESCRIPTION = ("RePoseDM sampling: denoises from noise, conditioned on the target pose (encoded skeleton) and "
                   "the aligned source features of RePose PoseAlign, with classifier-free guidance w_c (eq 16) and "
                   "optional pose gradient guidance. Output at the target pose's canvas size.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The generated person in the target pose(s), at the target pose's canvas size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "repose_model": (MODEL_TYPE, {"tooltip": "The RePose model (the same one PoseAlign used)."}),
            "repose_features": (FEATURES_TYPE, {"tooltip": "The RePose PoseAlign output for this target pose."}),
            "vae": ("VAE", {"tooltip": "The VAE the model was trained with (the same one PoseAlign used)."}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The target pose(s), as given to PoseAlign."}),
            "seed": seed_input(),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                              "tooltip": "Denoising steps (DDPM with learned variance needs more than DDIM / "
                                         "DPM++ / UniPC)."}),
            "w_c": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale w_c of eq 16 (1 turns it off)."}),
            "scheduler": scheduler_input(
                "ddpm", "ddpm (= default): ancestral with the learned variance (as trained). ddim / dpmpp_2m / "
                        "euler / uni_pc / uni_pc_bh2: faster samplers on the same noise schedule (ComfyUI's names; "
                        "the same list as the PCDMs nodes)."),
        }, "optional": {
            "guidance": (GUIDANCE_TYPE, {"tooltip": "Optional pose gradient guidance (RePose PoseGuidance)."}),
        }}

    def sample(self, repose_model, repose_features, vae, target_pose, seed=42, steps=50, w_c=2.0, scheduler="ddpm",
               guidance=None):
        model = _require_model(repose_model)
        if not isinstance(repose_features, RePoseFeatures):
            raise ValueError(f"repose_features: expected REPOSE_FEATURES from RePose PoseAlign, got "
                             f"{type(repose_features).__name__}")
        if guidance is not None and not isinstance(guidance, PoseGuidanceFactory):
            raise ValueError(f"guidance: expected GUIDANCE from RePose PoseGuidance, got {type(guidance).__name__}")
        feats = repose_features
        steps, w_c = int_in(steps, "steps", 1, 1000), float_in(w_c, "w_c", 0.0, 30.0)
        guided = guidance is not None and guidance.scale != 0
        trained = model.info.get("trained_with_pose_guidance")
        if trained and (not guided or guidance.scale != trained.get("scale")):
            log.warning("RePose Sampler: %s was trained with pose guidance (eq 15 in the loss, scale %s), so its noise "
                        "prediction expects that guidance; sampling %s", model.name or "the model",
                        trained.get("scale"), f"with scale {guidance.scale}" if guided else "without it")
        estimator = guidance.managed if guided else None
        scheduler = scheduler_name(scheduler)
        codec = ComfyVaeCodec(vae, keep=(model.managed_denoiser, estimator))
        targets = poses(target_pose, "target_pose", person=True)
        bar = bridge.ProgressBar(int(steps))
        previewer = bridge.latent_previewer()

        def callback(info):
            bar.update(1, previewer(info.pred_original) if previewer is not None else None)
            bridge.check_interrupt()

        bridge.check_interrupt()
        # Gradients for the guidance (ComfyUI runs nodes in inference mode); the models stay loaded inside
        # ComfyUI (its manager offloads them when it needs the memory).
        with torch.inference_mode(False), bridge.on_device(model.managed_denoiser, estimator):
            pose_guidance = None
            if guided:
                bridge.make_plain(estimator.module)  # ComfyUI may have offloaded it under inference mode
                pose_guidance = guidance.make(target=repose.keypoint_target(targets, feats.size)
                                              if guidance.target == "keypoints" else None)
            images = repose.sample(model.denoiser, codec, feats, targets, seed=int(seed), steps=steps, w_c=w_c,
                                   scheduler=scheduler, pose_guidance=pose_guidance,
                                   guidance_decode_scale=guidance.decode_scale if guided else 1.0, callback=callback,
                                   features_what="repose_features")
        return (images,)


NODE_CLASS_MAPPINGS = {
    "PoseTransferRePoseLoader": PoseTransferRePoseLoader,
    "PoseTransferPoseAlign": PoseTransferPoseAlign,
    "PoseTransferPoseGuidance": PoseTransferPoseGuidance,
    "PoseTransferRePoseSampler": PoseTransferRePoseSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseTransferRePoseLoader": "Load RePose Model (posetransfer)",
    "PoseTransferPoseAlign": "RePose PoseAlign (posetransfer)",
    "PoseTransferPoseGuidance": "RePose PoseGuidance (posetransfer)",
    "PoseTransferRePoseSampler": "RePose Sampler (posetransfer)",
}
