"""PCDMs nodes: loader, encoders, and the three stages (prior embedding -> inpaint -> refine; the simplified
release skips the prior). Thin wrappers over :mod:`..core.pcdms` (pipelines, checkpoints, encoders).

ComfyUI objects are adapted here: a CLIP_VISION (``encode_image(images)`` -> ``.image_embeds`` /
``.last_hidden_state``) becomes an image encoder, a VAE (BHWC 0..1 images, unscaled latents) becomes the
pipelines' latent codec through :class:`..core.pcdms.encoders.CallableLatentCodec` (0.18215 scale).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import torch

from ..core.geometry import fit_source_pose
from ..core.pcdms import KINDS, load_pcdms
from ..core.pcdms.encoders import (CLIP_MEAN, CLIP_STD, CallableLatentCodec, MomentsLatentCodec, clip_preprocess,
                                   interpolate_dinov2_position_embeddings)
from ..core.pcdms.image_layout import LAYOUT_MODES
from ..core.pcdms.kinds import _CLASS_TO_KIND
from ..core.pcdms.pipelines import (
    SCHEDULER_NAMES,
    InpaintPipeline,
    PriorPipeline,
    RefinePipeline,
    SimplifiedPipeline,
)
from ..core.pose_io import pcdms_pose_vector
from ..core.render import render_skeleton_batch
from . import bridge
from .checks import IMAGE_NOTE, float_in, image, int_in, one_or, with_person
from .loaded_models import DTYPE_TOOLTIP, DTYPES, LoadCache, file_stamp, resolve_dtype
from .flowwarp_nodes import _poses
from .repose_nodes import GUIDANCE_TYPE, ComfyVaeCodec, PoseGuidanceFactory

CATEGORY = "posetransfer/pcdms"
MODEL_TYPE = "PCDMS_MODEL"
ENCODERS_TYPE = "PCDMS_ENCODERS"
EMBED_TYPE = "PCDMS_EMBED"
NO_MODEL = "(none)"
KIND_CHOICES = ("auto",) + tuple(KINDS)
SCHEDULER_CHOICES = ("default",) + SCHEDULER_NAMES
DINO_OUTPUTS = ("last_hidden_state", "penultimate_hidden_states")
_WEIGHT_EXTS = (".safetensors", ".pt", ".pth", ".bin")
_PCDMS_CLASSES = {spec.cls.__name__ for spec in KINDS.values()}
MAX_SEED = 0xFFFFFFFFFFFFFFFF

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


class ComfyVisionEncoder:
    """A ComfyUI CLIP_VISION as the pipelines' image encoder (``encode(images)`` / ``encode_pixels``).

    ``encode`` computes the official input (:func:`clip_preprocess`: CLIPImageProcessor's PIL bicubic resize and
    centre crop; ComfyUI's own torch bicubic differs at 8-bit level) and calls ``encode_pixels``, which runs
    ComfyUI's CLIPVisionModelProjection (``clip_vision.model``) on those pixels directly, exact for any pixels
    (the prior's all-zero unconditional input included). A CLIP_VISION without ``model`` gets, through its
    ``encode_image``, the 224 x 224 image that ComfyUI's preprocessing (no resize at 224, 8-bit rounding, CLIP
    mean / std) maps back to the same pixels."""

    def __init__(self, clip_vision, output: str, ndim: int, what: str):
        if not callable(getattr(clip_vision, "encode_image", None)):
            raise ValueError(f"{what}: expected a ComfyUI CLIP_VISION model (with encode_image), got "
                             f"{type(clip_vision).__name__}")
        self.clip_vision, self.output, self.ndim, self.what = clip_vision, output, ndim, what
        self.keep = ()

    def keeping(self, keep) -> "ComfyVisionEncoder":
        """A copy that reloads the managed models ``keep`` after each ComfyUI call (:func:`bridge.keep_loaded`)."""
        enc = copy.copy(self)
        enc.keep = tuple(keep)
        return enc

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        return self.encode_pixels(clip_preprocess(torch.as_tensor(images)[..., :3].float().cpu()))

    @torch.no_grad()
    def _encode_image(self, images) -> torch.Tensor:
        images = torch.as_tensor(images)
        out = bridge.keep_loaded(self.clip_vision.encode_image, *self.keep)(images[..., :3])
        value = getattr(out, self.output, None)
        if value is None and hasattr(out, "__getitem__"):
            try:
                value = out[self.output]
            except (KeyError, AttributeError, TypeError):
                value = None
        if value is None:
            raise ValueError(f"{self.what}: the CLIP_VISION output has no {self.output!r}")
        return self._checked(value)

    def _checked(self, value) -> torch.Tensor:
        value = torch.as_tensor(value).float().cpu()
        if value.ndim != self.ndim:
            raise ValueError(f"{self.what}: expected {self.output} with {self.ndim} dimensions, got "
                             f"{tuple(value.shape)}")
        return value

    @torch.no_grad()
    def encode_pixels(self, pixel_values) -> torch.Tensor:
        model = getattr(self.clip_vision, "model", None)
        if self.output == "image_embeds" and callable(model):
            # ComfyUI's CLIPVisionModelProjection on the pixels themselves: exact for any pixels (the prior's
            # all-zero unconditional input is the CLIP mean colour, which 8-bit rounding would move)
            if bridge.comfy_available():
                bridge.load_models(*self.keep, comfy_objects=(self.clip_vision,))
            device = next(model.parameters()).device
            out = model(pixel_values=torch.as_tensor(pixel_values).float().to(device), intermediate_output=-2)
            return self._checked(out[2])
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        images = (torch.as_tensor(pixel_values).float().cpu() * std + mean).clamp(0, 1)
        return self._encode_image(images.permute(0, 2, 3, 1).contiguous())


class ComfyDinoV2Encoder(ComfyVisionEncoder):
    """DINOv2 loaded by ComfyUI's 'Load CLIP Vision' as PCDMs' token encoder, with the OFFICIAL input.

    ComfyUI's own ``encode_image`` would resize to 518 x 518 with ImageNet mean / std (its dino2 config) and give
    1370 tokens; PCDMs was trained on ``CLIPImageProcessor`` input (224 x 224, CLIP mean / std: 257 tokens, the
    position embeddings resized as transformers 4.32). So this runs ComfyUI's Dinov2Model piece by piece on
    :func:`clip_preprocess` pixels: patch embedding, CLS token, position embeddings resized by
    :func:`interpolate_dinov2_position_embeddings`, encoder, final LayerNorm (``last_hidden_state``) -- the same
    computation as transformers' Dinov2Model, on ComfyUI's weights."""

    PARTS = ("embeddings.patch_embeddings", "embeddings.cls_token", "embeddings.position_embeddings", "encoder",
             "layernorm")

    def __init__(self, clip_vision, output: str, what: str = "dino_vision"):
        super().__init__(clip_vision, output, 3, what)
        model = getattr(clip_vision, "model", None)
        missing = [p for p in self.PARTS if _attr_path(model, p) is None]
        if missing:
            raise ValueError(f"{what}: expected DINOv2 (giant) loaded with 'Load CLIP Vision' (ComfyUI's Dinov2Model), "
                             f"got a {type(model).__name__} without {', '.join(missing)}")
        self.model = model
        projection = getattr(model.embeddings.patch_embeddings, "projection", None)
        self.patch_size = int(projection.kernel_size[0]) if projection is not None else 14

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        return self.encode_pixels(clip_preprocess(torch.as_tensor(images)[..., :3].float().cpu()))

    @torch.no_grad()
    def encode_pixels(self, pixel_values) -> torch.Tensor:
        if bridge.comfy_available():  # the DINOv2 resident (ComfyUI's loader), our models kept loaded beside it
            bridge.load_models(*self.keep, comfy_objects=(self.clip_vision,))
        m = self.model
        device = m.embeddings.position_embeddings.device  # ComfyUI's text-encoder device once loaded
        pixels = torch.as_tensor(pixel_values).float().to(device)
        x = m.embeddings.patch_embeddings(pixels)                                   # (B, h*w, D)
        cls = m.embeddings.cls_token.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        pos = m.embeddings.position_embeddings.to(device=x.device)
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        x = x + interpolate_dinov2_position_embeddings(pos, h, w).to(x.dtype)
        if self.output == "penultimate_hidden_states":  # as ComfyUI's encode_image: the output of layer -2
            return self._checked(m.encoder(x, intermediate_output=-2)[1])
        x, _ = m.encoder(x)
        return self._checked(m.layernorm(x))


def _attr_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def comfy_latent_codec(vae, keep=()) -> MomentsLatentCodec | CallableLatentCodec:
    """A ComfyUI VAE as the pipelines' codec; the managed models ``keep`` stay loaded beside it.

    Encoding samples the posterior as the official code does (mean + std * noise from the pipeline's generator,
    :class:`MomentsLatentCodec`), from the moments of ComfyUI's ``first_stage_model`` (``quant_conv(encoder(x))``).
    A VAE without those pieces goes through its own ``encode``, which returns the posterior mean
    (:class:`CallableLatentCodec`; the random stream then differs from the official one). Decoding: the VAE's own
    ``decode``."""
    if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
        raise ValueError(f"vae: expected a ComfyUI VAE (with encode / decode), got {type(vae).__name__}")
    factor = getattr(vae, "downscale_ratio", 8)
    sizes = dict(downscale_factor=factor if isinstance(factor, int) else 8,
                 latent_channels=getattr(vae, "latent_channels", 4))
    if not isinstance(sizes["latent_channels"], int):
        sizes["latent_channels"] = 4
    decode = bridge.keep_loaded(vae.decode, *keep)
    fsm = getattr(vae, "first_stage_model", None)
    if callable(getattr(fsm, "encoder", None)) and callable(getattr(fsm, "quant_conv", None)):
        def moments(pixels):
            if bridge.comfy_available():
                bridge.load_models(*keep, comfy_objects=(vae,))
            p = next(fsm.parameters())
            return fsm.quant_conv(fsm.encoder(pixels.to(p.device, p.dtype))).float()

        return MomentsLatentCodec(moments, lambda latents: torch.as_tensor(decode(latents)), **sizes)
    encode = bridge.keep_loaded(vae.encode, *keep)
    return CallableLatentCodec(lambda images: torch.as_tensor(encode(images[..., :3])),
                               lambda latents: torch.as_tensor(decode(latents)), **sizes)


# ---------------------------------------------------------------------------------------------- loader
def _config_class(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def list_pcdms_models() -> list[str]:
    """Checkpoint files (.pt / .safetensors / ...) and save_pretrained folders in the posetransfer model
    folder(s). Weights inside a folder with a config.json are not listed as files: the folder is listed when
    it holds a PCDMs model, else it belongs to another model (a RePose or flow model's parts)."""
    files = bridge.list_model_files(set(_WEIGHT_EXTS) | {".json"})
    folders, configured = set(), set()
    for name in files:
        if posixpath.basename(name) == "config.json" and posixpath.dirname(name):
            configured.add(posixpath.dirname(name))
            try:
                if _config_class(bridge.model_file_path(name)) in _PCDMS_CLASSES:
                    folders.add(posixpath.dirname(name))
            except FileNotFoundError:
                continue
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
            "model_name": (list_pcdms_models() or [NO_MODEL], {
                "tooltip": "A PCDMs checkpoint in models/posetransfer: an official .pt file, a converted "
                           ".safetensors file, or a converted folder (config.json + weights)."}),
            "kind": (list(KIND_CHOICES), {
                "default": "auto",
                "tooltip": "auto: tell the kind from the file. prior / inpaint / refine / simplified: load as "
                           "this kind (and check the file is of this kind)."}),
            "dtype": (list(DTYPES), {
                "default": "auto",
                "tooltip": DTYPE_TOOLTIP}),
        }}

    def load(self, model_name, kind="auto", dtype="auto"):
        if not model_name or model_name == NO_MODEL:
            raise ValueError("model_name: no PCDMs checkpoint found in the posetransfer model folder; put the "
                             "released .pt files (or converted .safetensors) there and refresh")
        if kind not in KIND_CHOICES:
            raise ValueError(f"kind: expected one of {KIND_CHOICES}, got {kind!r}")
        torch_dtype = resolve_dtype(dtype)
        path = model_path(model_name)

        def build():
            with torch.inference_mode(False):  # plain weights: ComfyUI runs loaders in inference mode
                model = load_pcdms(path, None if kind == "auto" else kind, dtype=torch_dtype, device="cpu")
            return PCDMsModel(model, _CLASS_TO_KIND[type(model).__name__], model_name)

        return (_CACHE.get((file_stamp(path), kind, str(torch_dtype)), build),)


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


def _target_poses(target_pose) -> list:
    poses = with_person(_poses(target_pose, "target_pose"), "target_pose")
    for i, p in enumerate(poses[1:], 1):
        if (p.width, p.height) != (poses[0].width, poses[0].height):
            raise ValueError(f"target_pose[{i}]: canvas {p.width}x{p.height} differs from target_pose[0]'s "
                             f"{poses[0].width}x{poses[0].height}; the outputs are stacked into one IMAGE and need "
                             f"one size: bring the target poses to one canvas")
    return poses


def _check_sources(image: torch.Tensor, sources: list, n_targets: int) -> None:
    """1 source image (or one per target pose frame), and one source_pose frame per source image."""
    one_or(image.shape[0], "source_image", n_targets, "target_pose frame")
    if len(sources) != image.shape[0]:
        raise ValueError(f"source_pose: expected one frame per source_image ({image.shape[0]}), got {len(sources)}")


def _render(poses) -> torch.Tensor:
    return torch.from_numpy(render_skeleton_batch(poses).astype(np.float32) / 255.0)


def _source_poses(source_pose, image: torch.Tensor):
    h, w = image.shape[1:3]
    poses = with_person(_poses(source_pose, "source_pose"), "source_pose")
    return [fit_source_pose(p, w, h, f"source_pose[{i}]") for i, p in enumerate(poses)]


def _scheduler(name: str, default):
    if name not in SCHEDULER_CHOICES:
        raise ValueError(f"scheduler: expected one of {SCHEDULER_CHOICES}, got {name!r}")
    return default if name == "default" else name


def _common_inputs(default_steps: int, default_cfg: float, scheduler: bool = True, layout: bool = True) -> dict:
    inputs = {
        "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED,
                         "tooltip": "Random seed (a CPU generator: the same seed gives the same result anywhere)."}),
        "steps": ("INT", {"default": default_steps, "min": 1, "max": 1000,
                          "tooltip": "Denoising steps (official: 20; 50 for the simplified model)."}),
        "cfg": ("FLOAT", {"default": default_cfg, "min": 0.0, "max": 30.0, "step": 0.1,
                          "tooltip": "Classifier-free guidance scale; 1 or less turns guidance off."}),
    }
    if scheduler:
        inputs["scheduler"] = (list(SCHEDULER_CHOICES), {
            "default": "default",
            "tooltip": "default: the official one (UniPC for inpaint / refine, DDIM for the simplified model)."})
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
        sources, targets = _source_poses(source_pose, image), _target_poses(target_pose)
        _check_sources(image, sources, len(targets))
        sp = torch.from_numpy(np.stack([pcdms_pose_vector(p, "source_pose") for p in sources]))
        tp = torch.from_numpy(np.stack([pcdms_pose_vector(p, "target_pose") for p in targets]))
        pipe = PriorPipeline(pm.model, clip, size=resolution, layout=layout)
        with _run(pm, steps) as callback:
            out = pipe(sp, tp, source_image=image, steps=steps, guidance_scale=cfg, seed=seed, callback=callback)
        return (PCDMsEmbed(out.embeddings.float().cpu()),)


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
        sources, targets = _source_poses(source_pose, image), _target_poses(target_pose)
        _check_sources(image, sources, len(targets))
        source_pose_image = _render(sources)
        target_pose_image = _render(targets)
        codec = comfy_latent_codec(vae, keep)
        kwargs = dict(steps=steps, guidance_scale=cfg, seed=seed)
        guide = _guidance_kwargs(guidance, vae, keep)
        kwargs.update(guide)
        if pm.kind == "simplified":
            if prior_embed is not None:
                log.warning("PCDMs Inpaint: the simplified model takes no prior embedding; prior_embed ignored")
            pipe = SimplifiedPipeline(pm.model, codec, dino, _scheduler(scheduler, None), resolution, layout)
            args = ()
        else:
            pipe = InpaintPipeline(pm.model, codec, dino, _scheduler(scheduler, "unipc"), resolution, layout)
            if prior_embed is not None:
                if not isinstance(prior_embed, PCDMsEmbed):
                    raise ValueError(f"prior_embed: expected PCDMS_EMBED, got {type(prior_embed).__name__}")
                embedding = prior_embed.embeddings
                if embedding.shape[0] != len(targets):
                    raise ValueError(f"prior_embed: expected one embedding per target_pose frame ({len(targets)}), "
                                     f"got {embedding.shape[0]}; give PCDMs Prior Embed the same target_pose")
            else:  # the source photo's CLIP embedding stands in for the target's
                clip = _encoder(pcdms_encoders, "clip", "PCDMs Inpaint without prior_embed").keeping(keep)
                embedding = PriorPipeline(None, clip, size=resolution, layout=layout).encode_source(image)
            args = (embedding,)
        with _run(pm, steps, guidance, guide) as callback:
            out = pipe(image, source_pose_image, target_pose_image, *args, callback=callback, **kwargs)
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
        pipe = RefinePipeline(pm.model, comfy_latent_codec(vae, keep), dino, _scheduler(scheduler, "unipc"),
                              resolution, layout)
        coarse = _images(coarse_image, "coarse_image")
        source = _images(source_image, "source_image")
        one_or(source.shape[0], "source_image", coarse.shape[0], "coarse_image")
        guide = _guidance_kwargs(guidance, vae, keep)
        with _run(pm, steps, guidance, guide) as callback:
            out = pipe(coarse, source, steps=steps, guidance_scale=cfg, seed=seed, callback=callback, **guide)
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
