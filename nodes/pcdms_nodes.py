"""PCDMs nodes: loader, encoders, and the three stages (prior embedding -> inpaint -> refine; the simplified
release skips the prior). Declarations, input conversions and bridge calls over :mod:`..core.pcdms.transfer` (the
Pose-level entry the command line and Python call too); ComfyUI's CLIP_VISION and VAE become the core's encoders
and codec in :mod:`.adapters`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from dataclasses import dataclass

import torch

from ..core.pcdms import KINDS, load_pcdms
from ..core.pcdms import transfer as pcdms
from ..core.pcdms.image_layout import LAYOUT_MODES
from . import bridge
from .adapters import (GUIDANCE_TYPE, ComfyDinoV2Encoder, ComfyVaeCodec, ComfyVisionEncoder, PoseGuidanceFactory,
                       comfy_latent_codec)
from .checks import IMAGE_NOTE, float_in, image, int_in, poses
from .loaded_models import (NO_MODEL, LoadCache, chosen_kind, chosen_model, config_class, dtype_input, kind_input,
                            model_input, resolve_dtype)
from .sampler_inputs import scheduler_input, scheduler_name, seed_input

CATEGORY = "posetransfer/pcdms"
MODEL_TYPE = "PCDMS_MODEL"
ENCODERS_TYPE = "PCDMS_ENCODERS"
EMBED_TYPE = "PCDMS_EMBED"
DINO_OUTPUTS = ("last_hidden_state", "penultimate_hidden_states")
_WEIGHT_EXTS = (".safetensors", ".pt", ".pth", ".bin")
_PCDMS_CLASSES = {spec.cls.__name__ for spec in KINDS.values()}

log = logging.getLogger(__name__)
_CACHE = LoadCache(3)  # (path stamp, kind, dtype) -> PCDMsModel


# ----------------------------------------------------------------------------------------- the objects
@dataclass
class PCDMsModel:
    """PCDMS_MODEL: a loaded PCDMs model and its kind ('prior' | 'inpaint' | 'refine' | 'simplified')."""

    model: torch.nn.Module
    kind: str
    name: str = ""
    managed: bridge.ManagedModel | None = None  # the model handed to ComfyUI's model management

    def __post_init__(self):
        if self.managed is None:
            self.managed = bridge.managed(self.model)


@dataclass
class PCDMsEncoders:
    """PCDMS_ENCODERS: CLIP image embeddings (prior, inpaint without a prior) and DINOv2 tokens (inpaint,
    refine, simplified); either may be None."""

    clip: object | None = None
    dino: object | None = None


@dataclass
class PCDMsEmbed:
    """PCDMS_EMBED: predicted target CLIP image embeddings, (N, D)."""

    embeddings: torch.Tensor


# ---------------------------------------------------------------------------------------------- loader
def list_pcdms_models() -> list[str]:
    """Checkpoint files (.pt / .safetensors / ...) and save_pretrained folders in the posetransfer model
    folder(s). Weights inside a folder with a config.json are not listed as files: the folder is listed when
    it holds a PCDMs model, else it belongs to another model (a RePose or flow model's parts)."""
    files = bridge.list_model_files(set(_WEIGHT_EXTS) | {".json"})
    folders, configured = set(), set()
    for name in files:
        if posixpath.basename(name) == "config.json" and posixpath.dirname(name):
            configured.add(posixpath.dirname(name))
            if config_class(name) in _PCDMS_CLASSES:
                folders.add(posixpath.dirname(name))
    singles = [n for n in files if n.lower().endswith(_WEIGHT_EXTS) and posixpath.dirname(n) not in configured]
    return sorted(folders) + sorted(singles)


def model_path(name: str) -> str:
    """Full path of a listed checkpoint (file or save_pretrained folder)."""
    if name.lower().endswith(_WEIGHT_EXTS):
        return bridge.model_file_path(name)
    try:
        return os.path.dirname(bridge.model_file_path(f"{name}/config.json"))
    except FileNotFoundError:
        raise FileNotFoundError(f"PCDMs model {name!r} not found in the posetransfer model folder(s); expected an "
                                f"official .pt, a converted .safetensors file or a converted folder there") from None


class PoseTransferPCDMsLoader:
    """Load a PCDMs checkpoint (prior, inpaint, refine or the simplified single-stage model)."""

    DESCRIPTION = ("Load a PCDMs checkpoint from models/posetransfer: the released DeepSpeed .pt files (stage 1 "
                   "prior, stage 2 inpaint, stage 3 refine, or the simplified single-stage PCDMs_ckpt.pt), a "
                   "converted .safetensors file ('posetransfer convert-pcdms --single-file') or a converted "
                   "folder. The kind is read from the file; a file of the wrong kind or size is reported with its "
                   "missing / unexpected keys.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("pcdms_model",)
    OUTPUT_TOOLTIPS = ("The PCDMs model and its kind; connect it to the PCDMs stage node of that kind.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": model_input(list_pcdms_models(), "A PCDMs checkpoint in models/posetransfer: an official "
                                      ".pt file, a converted .safetensors file, or a converted folder (config.json + "
                                      "weights)."),
            "kind": kind_input(KINDS, "auto: tell the kind from the file. prior / inpaint / refine / simplified: load "
                                      "as this kind (and check the file is of this kind)."),
            "dtype": dtype_input(),
        }}

    def load(self, model_name, kind="auto", dtype="auto"):
        chosen_model(model_name, "model_name", "no PCDMs checkpoint found in the posetransfer model folder; put the "
                                               "released .pt files (or converted .safetensors) there and refresh")
        kind, torch_dtype = chosen_kind(kind, KINDS), resolve_dtype(dtype)
        path = model_path(model_name)

        def load():  # load_pcdms' own errors name the file, its kind and its missing / unexpected keys
            model = load_pcdms(path, None if kind == "auto" else kind, dtype=torch_dtype, device="cpu")
            return PCDMsModel(model, pcdms.kind_of(model), model_name)

        return (_CACHE.load(path, (kind, str(torch_dtype)), load, "model_name", errors=()),)


# -------------------------------------------------------------------------------------------- encoders
class PoseTransferPCDMsEncoders:
    """Bundle ComfyUI CLIP_VISION models as PCDMs' image encoders (CLIP embedding, DINOv2 tokens)."""

    DESCRIPTION = ("The image encoders PCDMs uses, from ComfyUI's 'Load CLIP Vision' nodes: CLIP ViT-H/14 "
                   "(image embedding: the prior's input, and the inpaint stage's global condition without a "
                   "prior) and DINOv2-giant (patch tokens: inpaint, refine and the simplified model).")
    CATEGORY = CATEGORY
    FUNCTION = "bundle"
    RETURN_TYPES = (ENCODERS_TYPE,)
    RETURN_NAMES = ("pcdms_encoders",)
    OUTPUT_TOOLTIPS = ("The encoders; connect to the PCDMs stage nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dino_output": (list(DINO_OUTPUTS), {
                "default": "last_hidden_state",
                "tooltip": "Which DINOv2 tokens to use. last_hidden_state (after the final LayerNorm) is what "
                           "PCDMs was trained with."}),
        }, "optional": {
            "clip_vision": ("CLIP_VISION", {
                "tooltip": "CLIP ViT-H/14 (e.g. CLIP-ViT-H-14-laion2B-s32B-b79K): its image embedding. Needed by "
                           "the prior, and by the inpaint stage when no prior embedding is connected."}),
            "dino_vision": ("CLIP_VISION", {
                "tooltip": "DINOv2-giant loaded with 'Load CLIP Vision': its tokens condition the inpaint, refine "
                           "and simplified models."}),
        }}

    def bundle(self, dino_output="last_hidden_state", clip_vision=None, dino_vision=None):
        if dino_output not in DINO_OUTPUTS:
            raise ValueError(f"dino_output: expected one of {DINO_OUTPUTS}, got {dino_output!r}")
        if clip_vision is None and dino_vision is None:
            raise ValueError("clip_vision / dino_vision: connect at least one CLIP_VISION model")
        clip = None if clip_vision is None else ComfyVisionEncoder(clip_vision, "image_embeds", 2, "clip_vision")
        dino = None if dino_vision is None else ComfyDinoV2Encoder(dino_vision, dino_output)
        return (PCDMsEncoders(clip, dino),)


# ----------------------------------------------------------------------------------------- shared glue
def _require(pcdms_model, kinds: tuple[str, ...], node: str) -> PCDMsModel:
    if not isinstance(pcdms_model, PCDMsModel):
        raise ValueError(f"pcdms_model: expected a PCDMS_MODEL from the PCDMs loader, got {type(pcdms_model).__name__}")
    if pcdms_model.kind not in kinds:
        raise ValueError(f"pcdms_model: {node} needs a PCDMs {' or '.join(kinds)} model, but "
                         f"{pcdms_model.name or 'the connected model'!r} is a '{pcdms_model.kind}' model; connect "
                         f"the {' or '.join(kinds)} checkpoint here")
    return pcdms_model


def _encoder(encoders, which: str, needed_for: str):
    if not isinstance(encoders, PCDMsEncoders):
        raise ValueError(f"pcdms_encoders: expected PCDMS_ENCODERS, got {type(encoders).__name__}")
    enc = getattr(encoders, which)
    if enc is None:
        name = "clip_vision" if which == "clip" else "dino_vision"
        raise ValueError(f"pcdms_encoders: {needed_for} needs the {name} input of the PCDMs encoders node")
    return enc


@contextlib.contextmanager
def _run(pm: PCDMsModel, steps: int, guidance=None, guide: dict | None = None):
    """One sampling run: the stage's model (and the guidance's pose estimator) made resident through ComfyUI's
    model management (:func:`bridge.on_device`; not moved back by hand inside ComfyUI), gradients allowed when
    guided (ComfyUI runs nodes in inference mode), a progress bar and interrupt checks. Yields the pipelines'
    step callback."""
    bridge.check_interrupt()
    bar = bridge.ProgressBar(steps)
    previewer = bridge.latent_previewer()

    def callback(info):
        x0 = info.pred_original
        if x0 is not None and info.stage in ("inpaint", "simplified"):
            x0 = x0[..., x0.shape[-1] // 2:]  # the target half of the [source | target] canvas
        bar.update(1, previewer(x0) if previewer is not None and x0 is not None else None)
        bridge.check_interrupt()

    estimator = guidance.managed if guide else None
    with contextlib.ExitStack() as stack:
        if guide:
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(bridge.on_device(pm.managed, estimator))
        if estimator is not None:
            bridge.make_plain(estimator.module)  # ComfyUI may have offloaded it under inference mode
        yield callback


def _guidance_kwargs(guidance, vae, keep=()) -> dict:
    """GUIDANCE (a :class:`PoseGuidanceFactory`) -> the pipelines' ``pose_guidance`` / ``guidance_decode``.

    The guidance is made without a target: the pipeline compares with the target pose (inpaint) or the coarse
    image (refine). The differentiable decode goes through the ComfyUI VAE's ``first_stage_model``
    (:class:`ComfyVaeCodec`, [-1, 1]; the factory's ``decode_scale``). None or scale 0: no guidance (the plain, unchanged sampler)."""
    if guidance is None:
        return {}
    if not isinstance(guidance, PoseGuidanceFactory):
        raise ValueError(f"guidance: expected GUIDANCE from RePose PoseGuidance, got {type(guidance).__name__}")
    if guidance.scale == 0:
        return {}
    if guidance.target != "skeleton":
        raise ValueError(f"guidance: target {guidance.target!r} works in RePose Sampler only; the PCDMs samplers "
                         f"compare with their framed target skeleton (Inpaint) or coarse image (Refine): set "
                         f"RePose PoseGuidance's target to skeleton")
    return {"pose_guidance": guidance.make(),
            "guidance_decode": ComfyVaeCodec(vae, keep=keep).decoder(guidance.decode_scale)}


def _keep(pm: PCDMsModel, guidance) -> tuple:
    """The managed models a run needs resident (see :func:`bridge.keep_loaded`)."""
    guided = isinstance(guidance, PoseGuidanceFactory) and guidance.scale != 0
    return (pm.managed, guidance.managed if guided else None)


_GUIDANCE_INPUT = (GUIDANCE_TYPE, {"tooltip": "Optional RePose pose gradient guidance (RePose PoseGuidance node): "
                                              "steers each denoising step towards the target pose. Slower (a VAE "
                                              "decode and estimator backward per step)."})


def _images(images, what: str) -> torch.Tensor:
    return image(images, what)


def _settings(steps, cfg, layout, resolution, min_steps: int = 1) -> tuple[int, float, str, int]:
    """The common widget values, checked (a direct call or an API prompt can bypass the widgets' limits)."""
    if layout not in LAYOUT_MODES:
        raise ValueError(f"layout: expected one of {LAYOUT_MODES}, got {layout!r}")
    return (int_in(steps, "steps", min_steps, 1000), float_in(cfg, "cfg", 0.0, 30.0), layout,
            int_in(resolution, "resolution", 64, 2048, multiple=8))


def _common_inputs(default_steps: int, default_cfg: float, scheduler: bool = True, layout: bool = True) -> dict:
    inputs = {
        "seed": seed_input(),
        "steps": ("INT", {"default": default_steps, "min": 1, "max": 1000,
                          "tooltip": "Denoising steps (official: 20; 50 for the simplified model)."}),
        "cfg": ("FLOAT", {"default": default_cfg, "min": 0.0, "max": 30.0, "step": 0.1,
                          "tooltip": "Classifier-free guidance scale; 1 or less turns guidance off."}),
    }
    if scheduler:
        inputs["scheduler"] = scheduler_input(
            "default", "default: the official one (uni_pc_bh2 for inpaint / refine, ddim for the simplified model). "
                       "The same names as ComfyUI's samplers and RePose Sampler.")
    if layout:
        inputs["layout"] = (list(LAYOUT_MODES), {
            "default": "pad",
            "tooltip": "pad: keep the aspect ratio (pad to a square, crop back). squash: stretch to a square as "
                       "the official code does."})
        inputs["resolution"] = ("INT", {
            "default": 512, "min": 64, "max": 2048, "step": 64,
            "tooltip": "Side of the square frame the model works in (the released models: 512)."})
    return inputs


# ------------------------------------------------------------------------------------------------ prior
class PoseTransferPriorEmbed:
    """Stage 1: predict the target person's CLIP image embedding from the source photo and both poses."""

    DESCRIPTION = ("PCDMs stage 1 (prior): predicts the CLIP image embedding of the person in the target pose, "
                   "from the source photo's CLIP embedding and the source / target keypoints. Connect the result "
                   "to the PCDMs Inpaint node's prior_embed. One embedding per target pose frame.")
    CATEGORY = CATEGORY
    FUNCTION = "embed"
    RETURN_TYPES = (EMBED_TYPE,)
    RETURN_NAMES = ("prior_embed",)
    OUTPUT_TOOLTIPS = ("Predicted target CLIP embedding(s); connect to PCDMs Inpaint's prior_embed.",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {
            "pcdms_model": (MODEL_TYPE, {"tooltip": "The PCDMs prior (stage 1) checkpoint."}),
            "pcdms_encoders": (ENCODERS_TYPE, {"tooltip": "PCDMs encoders with clip_vision connected."}),
            "source_image": ("IMAGE", {"tooltip": "The photo of the person (1 image, or one per target pose)."
                                                    + IMAGE_NOTE}),
            "source_pose": ("POSE_KEYPOINT", {"tooltip": "Keypoints detected on source_image (first person)."}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose(s) to move the person into (first person of "
                                                         "each frame)."}),
        }
        inputs.update(_common_inputs(20, 0.0, scheduler=False))
        inputs["steps"] = ("INT", dict(inputs["steps"][1], min=2))  # the unCLIP scheduler needs 2 steps or more
        inputs["layout"][1]["tooltip"] = "How the source photo is framed before CLIP sees it (official: squash)."
        return {"required": inputs}

    def embed(self, pcdms_model, pcdms_encoders, source_image, source_pose, target_pose, seed=42, steps=20, cfg=0.0,
              layout="pad", resolution=512):
        pm = _require(pcdms_model, ("prior",), "PCDMs Prior Embed")
        steps, cfg, layout, resolution = _settings(steps, cfg, layout, resolution, min_steps=2)
        clip = _encoder(pcdms_encoders, "clip", "the prior").keeping(_keep(pm, None))
        image = _images(source_image, "source_image")
        sources = poses(source_pose, "source_pose", person=True)
        targets = poses(target_pose, "target_pose", person=True)
        with _run(pm, steps) as callback:
            embeddings = pcdms.prior_embed(pm.model, clip, image, sources, targets, steps=steps, cfg=cfg, seed=seed,
                                           layout=layout, resolution=resolution, callback=callback)
        return (PCDMsEmbed(embeddings.float().cpu()),)


# ---------------------------------------------------------------------------------------------- inpaint
class PoseTransferPCDMsInpaint:
    """Stage 2 (or the simplified model): the person of the source photo in the target pose."""

    DESCRIPTION = ("PCDMs stage 2 (inpaint) or the simplified single-stage model: generates the person of the "
                   "source photo in the target pose. The source image and both skeletons (rendered from the "
                   "keypoints) are placed side by side; the model paints the target half. For stage 2 connect "
                   "the prior's embedding (without it the source photo's CLIP embedding stands in). Output at "
                   "the target pose's canvas size; refine it with PCDMs Refine.")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The generated person in the target pose(s), at the target pose's canvas size.",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {
            "pcdms_model": (MODEL_TYPE, {"tooltip": "The PCDMs inpaint (stage 2) or simplified checkpoint."}),
            "pcdms_encoders": (ENCODERS_TYPE, {"tooltip": "PCDMs encoders with dino_vision connected (and "
                                                          "clip_vision for stage 2 without a prior)."}),
            "vae": ("VAE", {"tooltip": "The Stable Diffusion 2.1 VAE (the SD 1.x / 2.x VAE)."}),
            "source_image": ("IMAGE", {"tooltip": "The photo of the person (1 image, or one per target pose)."
                                                    + IMAGE_NOTE}),
            "source_pose": ("POSE_KEYPOINT", {"tooltip": "Keypoints detected on source_image; rendered as the "
                                                         "source skeleton."}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose(s) to generate; one output image per frame, at "
                                                         "the frame's canvas size."}),
        }
        inputs.update(_common_inputs(20, 2.0))
        return {"required": inputs, "optional": {
            "prior_embed": (EMBED_TYPE, {"tooltip": "Stage 2 only: the PCDMs Prior Embed output (the predicted "
                                                    "target CLIP embedding). Ignored by the simplified model."}),
            "guidance": _GUIDANCE_INPUT}}

    def generate(self, pcdms_model, pcdms_encoders, vae, source_image, source_pose, target_pose, seed=42, steps=20,
                 cfg=2.0, scheduler="default", layout="pad", resolution=512, prior_embed=None, guidance=None):
        pm = _require(pcdms_model, ("inpaint", "simplified"), "PCDMs Inpaint")
        steps, cfg, layout, resolution = _settings(steps, cfg, layout, resolution)
        keep = _keep(pm, guidance)
        dino = _encoder(pcdms_encoders, "dino", "PCDMs Inpaint").keeping(keep)
        image = _images(source_image, "source_image")
        sources = poses(source_pose, "source_pose", person=True)
        targets = poses(target_pose, "target_pose", person=True)
        embedding, clip = None, None
        if pm.kind == "simplified":
            if prior_embed is not None:
                log.warning("PCDMs Inpaint: the simplified model takes no prior embedding; prior_embed ignored")
        elif prior_embed is not None:
            if not isinstance(prior_embed, PCDMsEmbed):
                raise ValueError(f"prior_embed: expected PCDMS_EMBED, got {type(prior_embed).__name__}")
            embedding = prior_embed.embeddings
            if embedding.shape[0] != len(targets):
                raise ValueError(f"prior_embed: expected one embedding per target_pose frame ({len(targets)}), "
                                 f"got {embedding.shape[0]}; give PCDMs Prior Embed the same target_pose")
        else:  # the source photo's CLIP embedding stands in for the target's
            clip = _encoder(pcdms_encoders, "clip", "PCDMs Inpaint without prior_embed").keeping(keep)
        guide = _guidance_kwargs(guidance, vae, keep)
        with _run(pm, steps, guidance, guide) as callback:
            out = pcdms.inpaint(pm.model, comfy_latent_codec(vae, keep), dino, image, sources, targets,
                                target_embedding=embedding, clip=clip, steps=steps, cfg=cfg,
                                scheduler=scheduler_name(scheduler), seed=seed, layout=layout, resolution=resolution,
                                callback=callback, **guide)
        return (out.images.float().clamp(0, 1).cpu(),)


# ----------------------------------------------------------------------------------------------- refine
class PoseTransferPCDMsRefine:
    """Stage 3: refine the coarse result with the source photo's texture (DINOv2 tokens)."""

    DESCRIPTION = ("PCDMs stage 3 (refine): sharpens the coarse image from PCDMs Inpaint, restoring clothing "
                   "texture and face detail from the source photo. Output at the coarse image's size.")
    CATEGORY = CATEGORY
    FUNCTION = "refine"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The refined image(s), same size as coarse_image.",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {
            "pcdms_model": (MODEL_TYPE, {"tooltip": "The PCDMs refine (stage 3) checkpoint."}),
            "pcdms_encoders": (ENCODERS_TYPE, {"tooltip": "PCDMs encoders with dino_vision connected."}),
            "vae": ("VAE", {"tooltip": "The Stable Diffusion 2.1 VAE (the SD 1.x / 2.x VAE)."}),
            "coarse_image": ("IMAGE", {"tooltip": "The PCDMs Inpaint output (or any image of the person in the "
                                                  "target pose)."}),
            "source_image": ("IMAGE", {"tooltip": "The source photo (1 image, or one per coarse image)." + IMAGE_NOTE}),
        }
        inputs.update(_common_inputs(20, 2.0))
        return {"required": inputs, "optional": {"guidance": _GUIDANCE_INPUT}}

    def refine(self, pcdms_model, pcdms_encoders, vae, coarse_image, source_image, seed=42, steps=20, cfg=2.0,
               scheduler="default", layout="pad", resolution=512, guidance=None):
        pm = _require(pcdms_model, ("refine",), "PCDMs Refine")
        steps, cfg, layout, resolution = _settings(steps, cfg, layout, resolution)
        keep = _keep(pm, guidance)
        dino = _encoder(pcdms_encoders, "dino", "PCDMs Refine").keeping(keep)
        coarse, source = _images(coarse_image, "coarse_image"), _images(source_image, "source_image")
        guide = _guidance_kwargs(guidance, vae, keep)
        with _run(pm, steps, guidance, guide) as callback:
            out = pcdms.refine(pm.model, comfy_latent_codec(vae, keep), dino, coarse, source, steps=steps, cfg=cfg,
                               scheduler=scheduler_name(scheduler), seed=seed, layout=layout, resolution=resolution,
                               callback=callback, **guide)
        return (out.images.float().clamp(0, 1).cpu(),)


NODE_CLASS_MAPPINGS = {
    "PoseTransferPCDMsLoader": PoseTransferPCDMsLoader,
    "PoseTransferPCDMsEncoders": PoseTransferPCDMsEncoders,
    "PoseTransferPriorEmbed": PoseTransferPriorEmbed,
    "PoseTransferPCDMsInpaint": PoseTransferPCDMsInpaint,
    "PoseTransferPCDMsRefine": PoseTransferPCDMsRefine,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseTransferPCDMsLoader": "Load PCDMs Model (posetransfer)",
    "PoseTransferPCDMsEncoders": "PCDMs Encoders (posetransfer)",
    "PoseTransferPriorEmbed": "PCDMs Prior Embed (posetransfer)",
    "PoseTransferPCDMsInpaint": "PCDMs Inpaint (posetransfer)",
    "PoseTransferPCDMsRefine": "PCDMs Refine (posetransfer)",
}
