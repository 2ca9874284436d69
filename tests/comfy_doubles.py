"""Test doubles of the ComfyUI core nodes our workflows use, and the pack loader ComfyUI uses.

Each double declares the SAME input names and types and the same outputs as the ComfyUI node of that name
(checked against ComfyUI's ``nodes.py`` and ``comfy_extras/nodes_mask.py``), so workflow files can be
validated against them; their behaviour is a minimal stand-in that runs on the CPU without ComfyUI:

* ``LoadImage`` reads the named file from the repository's ``samples/`` folder (not ComfyUI's input folder).
* ``SaveImage`` / ``PreviewImage`` record what they received in :data:`RECORDS` (nothing is written).
* ``MaskToImage`` turns a MASK into a grey IMAGE, as ComfyUI does.
* ``CLIPVisionLoader`` / ``VAELoader`` return tiny stand-ins (:class:`TinyClipVision`, :class:`TinyDinoVision` for
  a file named dino..., :class:`TinyVAE`) with the interface of ComfyUI's CLIP_VISION (``encode_image`` ->
  ``.image_embeds`` / ``.last_hidden_state``; DINOv2's module layout) and VAE
  (BHWC 0..1 images <-> unscaled latents), sized for the tiny PCDMs models of :func:`prepare_model_folder`.

Models for workflows: :func:`prepare_model_folder` writes tiny models under the file names the workflows load
(the workflow tests point POSETRANSFER_MODELS_DIR at that folder); :data:`CPU_RUN_OVERRIDES` replaces some
widget values (steps, resolution) in every API graph before the CPU run, so that the shipped settings stay
realistic while the test stays fast.

To use another core node in a workflow under ``workflows/``, add a double here (and to :data:`CORE_NODES`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"

# Nodes that exist only in the frontend: saved in UI workflows, never sent to the server (no API entry).
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

# What SaveImage / PreviewImage received: (node id, node type, IMAGE tensor). The doubles declare the hidden
# input UNIQUE_ID (the real nodes do not) so that a test runner can tell them apart.
RECORDS: list[tuple[str, str, torch.Tensor]] = []


def load_pack(name: str):
    """Import the repository root as ComfyUI's ``load_custom_node`` does: its __init__.py under ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def unload_pack(name: str) -> None:
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _sample_images() -> list[str]:
    return sorted(p.name for p in SAMPLES.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})


class LoadImage:
    """ComfyUI ``nodes.LoadImage``: combo of input-folder files with an upload button; outputs IMAGE, MASK."""

    CATEGORY = "image"
    FUNCTION = "load_image"
    RETURN_TYPES = ("IMAGE", "MASK")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_sample_images(), {"image_upload": True})}}

    def load_image(self, image):
        from posetransfer.core.images import load_image

        path = SAMPLES / image
        if not path.is_file():
            raise FileNotFoundError(f"LoadImage double: {image!r} is not a sample in {SAMPLES}")
        pixels = torch.from_numpy(load_image(path))[None]
        mask = torch.zeros((1, 64, 64), dtype=torch.float32)  # no alpha channel: ComfyUI's 64x64 empty mask
        return (pixels, mask)


class SaveImage:
    """ComfyUI ``nodes.SaveImage``: images + filename_prefix (STRING); an output node without outputs."""

    CATEGORY = "image"
    FUNCTION = "save_images"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None, unique_id=None):
        RECORDS.append((unique_id, "SaveImage", images))
        return {"ui": {"images": []}}


class PreviewImage:
    """ComfyUI ``nodes.PreviewImage``: images only; an output node without outputs."""

    CATEGORY = "image"
    FUNCTION = "save_images"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    def save_images(self, images, prompt=None, extra_pnginfo=None, unique_id=None):
        RECORDS.append((unique_id, "PreviewImage", images))
        return {"ui": {"images": []}}


class MaskToImage:
    """ComfyUI ``comfy_extras.nodes_mask.MaskToImage``: MASK -> grey IMAGE."""

    CATEGORY = "mask"
    FUNCTION = "mask_to_image"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",)}}

    def mask_to_image(self, mask):
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        return (mask[..., None].expand(-1, -1, -1, 3).contiguous(),)


class _Output:
    """ComfyUI's ``clip_vision.Output``: attribute and item access."""

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, item):
        setattr(self, key, item)


class TinyClipVision:
    """A CLIP_VISION stand-in: a fixed random function of the image (pooled to 4 x 4). image_embeds (B, 32) fits
    the tiny prior / inpaint models, last_hidden_state (B, 5, 24) the tiny DINOv2 width."""

    EMBED_DIM, TOKENS, WIDTH = 32, 5, 24

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w_embed = torch.randn(48, self.EMBED_DIM, generator=g) / 48 ** 0.5
        self.w_tokens = torch.randn(48, self.TOKENS * self.WIDTH, generator=g) / 48 ** 0.5
        self.calls = 0

    def encode_image(self, image):
        self.calls += 1
        self.last_image = image
        x = torch.nn.functional.adaptive_avg_pool2d(image.float().movedim(-1, 1), 4).flatten(1) * 2 - 1
        out = _Output()
        out["image_embeds"] = x @ self.w_embed
        out["last_hidden_state"] = (x @ self.w_tokens).reshape(-1, self.TOKENS, self.WIDTH)
        out["penultimate_hidden_states"] = out["last_hidden_state"] * 0.5
        return out


class _DinoEncoder(torch.nn.Module):
    """ComfyUI's Dino2Encoder interface (``forward(x, intermediate_output)`` -> (x, intermediate))."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.layer = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width),
                                                             torch.nn.GELU()) for _ in range(layers))

    def forward(self, x, intermediate_output=None):
        if intermediate_output is not None and intermediate_output < 0:
            intermediate_output += len(self.layer)
        intermediate = None
        for i, layer in enumerate(self.layer):
            x = x + layer(x)
            if i == intermediate_output:
                intermediate = x.clone()
        return x, intermediate


class TinyDinoVision:
    """A DINOv2 CLIP_VISION stand-in with the module layout of ComfyUI's Dinov2Model (``model.embeddings.
    patch_embeddings.projection`` (14 x 14 patches), ``cls_token``, ``position_embeddings`` for a 518 x 518 input
    (37 x 37 + 1), ``encoder``, ``layernorm``), TinyClipVision.WIDTH (24) wide, seeded random weights.
    ``encode_image`` is ComfyUI's (518 px, ImageNet mean / std): the PCDMs nodes must not use it."""

    WIDTH = TinyClipVision.WIDTH

    def __init__(self, seed: int = 1, layers: int = 2):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = torch.nn.Module()
            model.embeddings = torch.nn.Module()
            model.embeddings.patch_embeddings = torch.nn.Module()
            model.embeddings.patch_embeddings.projection = torch.nn.Conv2d(3, self.WIDTH, 14, stride=14)
            model.embeddings.patch_embeddings.forward = (
                lambda pixel_values: model.embeddings.patch_embeddings.projection(pixel_values).flatten(2)
                .transpose(1, 2))
            model.embeddings.cls_token = torch.nn.Parameter(torch.randn(1, 1, self.WIDTH))
            model.embeddings.position_embeddings = torch.nn.Parameter(torch.randn(1, 37 * 37 + 1, self.WIDTH) * 0.1)
            model.encoder = _DinoEncoder(self.WIDTH, layers)
            model.layernorm = torch.nn.LayerNorm(self.WIDTH)
        self.model = model.eval()
        self.encode_image_calls = 0

    def encode_image(self, image, crop=True):
        self.encode_image_calls += 1
        raise AssertionError("ComfyUI's DINOv2 encode_image (518 px, ImageNet normalisation) is not PCDMs' input")


class TinyVAE:
    """A ComfyUI VAE stand-in around a tiny diffusers AutoencoderKL (factor 8, 4 channels): ``encode`` BHWC 0..1
    -> unscaled posterior mean (B, 4, h, w); ``decode`` -> BHWC 0..1."""

    downscale_ratio = 8
    latent_channels = 4

    def __init__(self, seed: int = 0):
        from diffusers import AutoencoderKL

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4,
                                     up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16],
                                     layers_per_block=1, norm_num_groups=4, sample_size=64).eval()
        self.first_stage_model = self.vae  # ComfyUI's VAE exposes its decoder module (differentiable) here

    @torch.no_grad()
    def encode(self, pixels):
        return self.vae.encode(pixels[..., :3].movedim(-1, 1) * 2 - 1).latent_dist.mean

    @torch.no_grad()
    def decode(self, latents):
        return (self.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).movedim(1, -1)


CLIP_VISION_FILES = ["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "dinov2-giant.safetensors"]
VAE_FILES = ["vae-ft-mse-840000-ema-pruned.safetensors"]


class CLIPVisionLoader:
    """ComfyUI ``nodes.CLIPVisionLoader``: clip_name (files of models/clip_vision) -> CLIP_VISION."""

    CATEGORY = "loaders"
    FUNCTION = "load_clip"
    RETURN_TYPES = ("CLIP_VISION",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (list(CLIP_VISION_FILES),)}}

    def load_clip(self, clip_name):
        if "dino" in clip_name:
            return (TinyDinoVision(),)
        return (TinyClipVision(CLIP_VISION_FILES.index(clip_name)),)


class VAELoader:
    """ComfyUI ``nodes.VAELoader``: vae_name (files of models/vae) -> VAE."""

    CATEGORY = "loaders"
    FUNCTION = "load_vae"
    RETURN_TYPES = ("VAE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (list(VAE_FILES),)}}

    def load_vae(self, vae_name):
        return (TinyVAE(),)


# ------------------------------------------------------------------- inpainting / ControlNet stand-ins
# Declarations as in Comfy-Org/ComfyUI nodes.py (read at 02217e3) and comfy_extras/nodes_mask.py (d9ac00e),
# comfy_extras/nodes_post_processing.py (ImageBlur). The model stand-ins are just enough to carry tensors of
# the right shapes through the graph; the CPU run checks wiring, sizes and our nodes, not image quality.
CHECKPOINT_FILES = ["sd-v1-5-inpainting.ckpt", "sd_xl_base_1.0.safetensors"]
CONTROLNET_FILES = ["control_v11p_sd15_openpose.pth", "OpenPoseXL2.safetensors"]
# A subset of comfy.samplers.KSampler.SAMPLERS / SCHEDULERS (the real lists are longer).
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform"]
MAX_RESOLUTION = 16384


class TinyDiffusionModel:
    """MODEL stand-in (only carried to KSampler)."""


class TinyClip:
    """CLIP stand-in: text -> a (1, 4, 8) embedding made from the text's bytes."""

    def encode(self, text: str) -> torch.Tensor:
        codes = torch.tensor(list(text.encode("utf-8")[:32]) or [0], dtype=torch.float32)
        return torch.nn.functional.pad(codes, (0, 32 - codes.numel())).reshape(1, 4, 8) / 255


class CheckpointLoaderSimple:
    """ComfyUI ``nodes.CheckpointLoaderSimple``: ckpt_name (models/checkpoints) -> MODEL, CLIP, VAE."""

    CATEGORY = "loaders"
    FUNCTION = "load_checkpoint"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (list(CHECKPOINT_FILES),)}}

    def load_checkpoint(self, ckpt_name):
        return (TinyDiffusionModel(), TinyClip(), TinyVAE())


class CLIPTextEncode:
    """ComfyUI ``nodes.CLIPTextEncode``: text (multiline STRING), clip -> CONDITIONING."""

    CATEGORY = "conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    def encode(self, clip, text):
        return ([[clip.encode(text), {}]],)


class ControlNetLoader:
    """ComfyUI ``nodes.ControlNetLoader``: control_net_name (models/controlnet) -> CONTROL_NET."""

    CATEGORY = "loaders"
    FUNCTION = "load_controlnet"
    RETURN_TYPES = ("CONTROL_NET",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": (list(CONTROLNET_FILES),)}}

    def load_controlnet(self, control_net_name):
        return ({"control_net": control_net_name},)


class ControlNetApplyAdvanced:
    """ComfyUI ``nodes.ControlNetApplyAdvanced``: positive, negative, control_net, image, strength, start_percent,
    end_percent (optional vae) -> positive, negative (the hint image recorded in each conditioning)."""

    CATEGORY = "conditioning/controlnet"
    FUNCTION = "apply_controlnet"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                             "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})},
                "optional": {"vae": ("VAE",)}}

    def apply_controlnet(self, positive, negative, control_net, image, strength, start_percent, end_percent,
                         vae=None):
        assert image.ndim == 4 and image.shape[-1] == 3, "ControlNet hint: an IMAGE [B, H, W, 3]"
        hint = {"hint": image, "strength": strength, "range": (start_percent, end_percent)}
        return tuple([[t[0], {**t[1], "control": hint}] for t in cond] for cond in (positive, negative))


def _vae_crop(pixels: torch.Tensor, factor: int = 8) -> tuple[torch.Tensor, int, int]:
    """ComfyUI's centred crop to a multiple of the VAE factor (offset (H % f) // 2)."""
    h, w = pixels.shape[1] // factor * factor, pixels.shape[2] // factor * factor
    top, left = (pixels.shape[1] % factor) // 2, (pixels.shape[2] % factor) // 2
    return pixels[:, top:top + h, left:left + w], top, left


class InpaintModelConditioning:
    """ComfyUI ``nodes.InpaintModelConditioning``: positive, negative, vae, pixels, mask, noise_mask -> positive,
    negative, latent; crops pixels and mask to a multiple of 8 (centred) as the real node does."""

    CATEGORY = "conditioning/inpaint"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "vae": ("VAE",),
                             "pixels": ("IMAGE",), "mask": ("MASK",),
                             "noise_mask": ("BOOLEAN", {"default": True})}}

    def encode(self, positive, negative, pixels, vae, mask, noise_mask=True):
        mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]),
                                               size=pixels.shape[1:3], mode="bilinear")
        cropped, top, left = _vae_crop(pixels)
        mask = mask[:, :, top:top + cropped.shape[1], left:left + cropped.shape[2]]
        blanked = (cropped - 0.5) * (1 - mask.round()).movedim(1, -1) + 0.5
        concat = vae.encode(blanked)
        latent = {"samples": vae.encode(cropped)}
        if noise_mask:
            latent["noise_mask"] = mask
        cond = [[[t[0], {**t[1], "concat_latent_image": concat, "concat_mask": mask}] for t in c]
                for c in (positive, negative)]
        return (cond[0], cond[1], latent)


class KSampler:
    """ComfyUI ``nodes.KSampler`` (seed has control_after_generate): a stand-in 'sampler' that replaces the
    latent inside the noise mask by seeded noise, so decoded pixels differ there."""

    CATEGORY = "sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (list(SAMPLERS),),
            "scheduler": (list(SCHEDULERS),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        latent = latent_image["samples"]
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        mask = latent_image.get("noise_mask")
        if mask is None:
            out = noise
        else:
            mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]),
                                                   size=latent.shape[-2:], mode="bilinear")
            out = latent * (1 - mask) + noise * mask
        return ({**latent_image, "samples": out},)


class VAEDecode:
    """ComfyUI ``nodes.VAEDecode``: samples (LATENT), vae -> IMAGE."""

    CATEGORY = "latent"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    def decode(self, vae, samples):
        return (vae.decode(samples["samples"]),)


class GrowMask:
    """ComfyUI ``comfy_extras.nodes_mask.GrowMask``: mask, expand (INT), tapered_corners (BOOLEAN) -> MASK;
    grey dilation by |expand| steps of a 3x3 cross (tapered) or square (erosion for negative expand)."""

    CATEGORY = "mask"
    FUNCTION = "expand_mask"
    RETURN_TYPES = ("MASK",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",),
                             "expand": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION,
                                                "step": 1}),
                             "tapered_corners": ("BOOLEAN", {"default": True})}}

    def expand_mask(self, mask, expand, tapered_corners):
        import numpy as np
        import scipy.ndimage

        c = 0 if tapered_corners else 1
        kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
        out = []
        for m in mask.reshape(-1, mask.shape[-2], mask.shape[-1]).numpy():
            for _ in range(abs(expand)):
                m = (scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation)(m, footprint=kernel)
            out.append(torch.from_numpy(m))
        return (torch.stack(out),)


class ImageBlur:
    """ComfyUI ``comfy_extras.nodes_post_processing.ImageBlur``: image, blur_radius, sigma -> IMAGE (Gaussian)."""

    CATEGORY = "image/postprocessing"
    FUNCTION = "blur"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                             "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1})}}

    def blur(self, image, blur_radius, sigma):
        size = blur_radius * 2 + 1
        x = torch.linspace(-1, 1, size)
        g = torch.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * sigma * sigma))
        kernel = (g / g.sum()).repeat(image.shape[-1], 1, 1, 1)
        padded = torch.nn.functional.pad(image.movedim(-1, 1), [blur_radius] * 4, mode="reflect")
        out = torch.nn.functional.conv2d(padded, kernel, groups=image.shape[-1])
        return (out.movedim(1, -1).clamp(0, 1),)


class ImageToMask:
    """ComfyUI ``comfy_extras.nodes_mask.ImageToMask``: image, channel -> MASK."""

    CATEGORY = "mask"
    FUNCTION = "image_to_mask"
    RETURN_TYPES = ("MASK",)
    CHANNELS = ["red", "green", "blue", "alpha"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "channel": (list(cls.CHANNELS),)}}

    def image_to_mask(self, image, channel):
        return (image[:, :, :, self.CHANNELS.index(channel)],)


CORE_NODES = {cls.__name__: cls for cls in (LoadImage, SaveImage, PreviewImage, MaskToImage, CLIPVisionLoader,
                                            VAELoader, CheckpointLoaderSimple, CLIPTextEncode, ControlNetLoader,
                                            ControlNetApplyAdvanced, InpaintModelConditioning, KSampler, VAEDecode,
                                            GrowMask, ImageBlur, ImageToMask)}

# ------------------------------------------------------------------------------------------ tiny models
PCDMS_FILES = {"prior": "pcdms_prior.safetensors", "inpaint": "pcdms_inpaint.safetensors",
               "refine": "pcdms_refine.safetensors", "simplified": "pcdms_simplified.safetensors"}

# Input values replaced in every API graph (per class_type) before the CPU run of the workflow tests.
CPU_RUN_OVERRIDES = {
    "PoseTransferPriorEmbed": {"steps": 2, "resolution": 64},
    "PoseTransferPCDMsInpaint": {"steps": 2, "resolution": 64},
    "PoseTransferPCDMsRefine": {"steps": 2, "resolution": 64},
    "PoseTransferPoseAlign": {"resolution": 32},
    "PoseTransferRePoseSampler": {"steps": 2},
}

REPOSE_MODEL_DIR = "repose_deepfashion_256"
HRNET_FILE = "pose_higher_hrnet_w32_512.pth"
TINY_HRNET_CONFIG = dict(stem_channels=8, stage_channels=[4, 8, 8, 8], stage_modules=[1, 1, 1], blocks_per_branch=1,
                         layer1_blocks=1, deconv_channels=[4], deconv_basic_blocks=1)


def tiny_pcdms(kind: str, seed: int = 0):
    """A tiny PCDMs model of ``kind`` (core's tiny config; the prior 32 wide to match TinyClipVision) with seeded
    random weights everywhere (diffusers zero-initialises some output layers)."""
    from posetransfer.core.pcdms import model_class, tiny_config

    overrides = {"embedding_dim": TinyClipVision.EMBED_DIM} if kind == "prior" else {}
    model = model_class(kind)(**{**tiny_config(kind), **overrides})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.25)
    return model.eval()


def prepare_model_folder(folder: Path) -> Path:
    """Write the tiny models under the names the shipped workflows load (:data:`PCDMS_FILES`)."""
    from posetransfer.core.pcdms import save_pcdms_safetensors

    folder = Path(folder)
    for i, (kind, name) in enumerate(PCDMS_FILES.items()):
        if not (folder / name).is_file():
            save_pcdms_safetensors(tiny_pcdms(kind, i + 1), folder / name)
    prepare_repose_files(folder)
    return folder


def prepare_repose_files(folder: Path) -> Path:
    """A tiny RePose model folder (:data:`REPOSE_MODEL_DIR`) and a tiny HigherHRNet checkpoint (:data:`HRNET_FILE`,
    with its config in a JSON file beside it) for the RePose workflow."""
    from posetransfer.core.repose import (TINY_POSE_ALIGN_CONFIG, TINY_UNET_CONFIG, HigherHRNet, PoseAlign,
                                          RePoseDenoiser)
    from posetransfer.core.repose.model_files import save_repose_model

    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        if not (folder / REPOSE_MODEL_DIR).is_dir():
            align = PoseAlign(**TINY_POSE_ALIGN_CONFIG)
            with torch.no_grad():
                for agg in align.aggregators:  # not the identity warp of an untrained PoseAlign
                    agg.head.weight.normal_(0, 0.05)
            save_repose_model(folder / REPOSE_MODEL_DIR, RePoseDenoiser(unet_config=TINY_UNET_CONFIG), align,
                              {"note": "tiny test model"})
        if not (folder / HRNET_FILE).is_file():
            import json

            torch.save(HigherHRNet(**TINY_HRNET_CONFIG).state_dict(), folder / HRNET_FILE)
            (folder / HRNET_FILE).with_suffix(".json").write_text(json.dumps(TINY_HRNET_CONFIG), encoding="utf-8")
    return folder


def apply_overrides(api: dict, overrides: dict = CPU_RUN_OVERRIDES) -> dict:
    """A copy of the API graph with :data:`CPU_RUN_OVERRIDES` applied to the (widget) inputs present."""
    out = {}
    for node_id, entry in api.items():
        inputs = dict(entry["inputs"])
        for name, value in overrides.get(entry["class_type"], {}).items():
            if name in inputs and not isinstance(inputs[name], list):
                inputs[name] = value
        out[node_id] = {**entry, "inputs": inputs}
    return out


def output_names(cls) -> tuple[str, ...]:
    """The output slot names the frontend shows: RETURN_NAMES, else the types."""
    return tuple(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)


# ------------------------------------------------------------------------------- ComfyUI's model manager
_MODULE_TO = torch.nn.Module.to  # the fake manager moves with this, so a spy on Module.to sees only hand moves


class FakeModelPatcher:
    """``comfy.model_patcher.ModelPatcher`` as far as the pack uses it. Like the real one it writes attributes on
    the module it wraps (on load: ``model.device = load_device``, ``model_loaded_weight_memory``), which a
    diffusers ModelMixin refuses (its ``device`` is a read-only property)."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        if not hasattr(model, "device"):
            model.device = offload_device
        model.model_loaded_weight_memory = 0


class FakeModelManager:
    """Fake ``comfy`` / ``comfy.model_management`` / ``comfy.model_patcher`` modules (CPU as the compute device)
    that record what the pack asks of ComfyUI's model management: :attr:`patchers` made, :attr:`loads` (one
    ``(patchers, kwargs, inference_mode_enabled)`` per ``load_models_gpu`` call). ``folder_paths`` and
    ``comfy.utils`` stay absent, so model files and progress bars use the fallbacks."""

    def __init__(self, monkeypatch, device="cpu"):
        import types

        self.device = torch.device(device)
        self.patchers: list[FakeModelPatcher] = []
        self.loads: list[tuple[list, dict, bool]] = []
        self.current_loaded_models: list = []
        comfy = types.ModuleType("comfy")
        mm = types.ModuleType("comfy.model_management")
        mp = types.ModuleType("comfy.model_patcher")
        mm.get_torch_device = lambda: self.device
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.throw_exception_if_processing_interrupted = lambda: None
        mm.load_models_gpu = self.load_models_gpu
        mm.load_model_gpu = lambda patcher: self.load_models_gpu([patcher])
        mm.current_loaded_models = self.current_loaded_models
        manager = self

        class ModelPatcher(FakeModelPatcher):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                manager.patchers.append(self)

        mp.ModelPatcher = ModelPatcher
        comfy.model_management, comfy.model_patcher = mm, mp
        for name, module in (("comfy", comfy), ("comfy.model_management", mm), ("comfy.model_patcher", mp),
                             ("comfy.utils", None), ("folder_paths", None)):
            monkeypatch.setitem(sys.modules, name, module)

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        models = list(models)
        self.loads.append((models, dict(force_full_load=force_full_load), torch.is_inference_mode_enabled()))
        for p in models:
            _MODULE_TO(p.model, p.load_device)
            p.model.device = p.load_device  # what ModelPatcher.load does
            if p not in self.current_loaded_models:
                self.current_loaded_models.insert(0, p)

    def loaded_with(self, patcher) -> list[list]:
        """The patcher lists of the loads that included ``patcher``."""
        return [models for models, _, _ in self.loads if any(p is patcher for p in models)]


def spy_module_moves(monkeypatch, move: bool = True) -> list:
    """Record every ``torch.nn.Module.to`` call (the module, its arguments) made by hand (not by the fake manager);
    ``move=False``: record only (to stand for a device this machine lacks)."""
    moves = []

    def to(module, *args, **kwargs):
        moves.append((module, args, kwargs))
        return _MODULE_TO(module, *args, **kwargs) if move else module

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


def record_previews(monkeypatch, bridge) -> tuple[list, list]:
    """Stand in for ComfyUI's previewer: returns ``(seen, sent)``, the latents each step hands to
    ``bridge.latent_previewer()``'s function and the previews the progress bar gets (``("JPEG", k)`` for the k-th)."""
    seen, sent = [], []
    monkeypatch.setattr(bridge, "latent_previewer", lambda: lambda x0: seen.append(x0.clone()) or ("JPEG", len(seen)))

    class PreviewBar(bridge.ProgressBar):
        def update(self, n=1, preview=None):
            sent.append(preview)
            super().update(n, preview)

    monkeypatch.setattr(bridge, "ProgressBar", PreviewBar)
    return seen, sent


# ------------------------------------------------------------------------ ComfyUI's progress bar and cancel
class InterruptProcessingException(Exception):
    """What ComfyUI's ``throw_exception_if_processing_interrupted`` raises once the user pressed cancel."""


class FakeComfyProgress:
    """Fake ``comfy.utils.ProgressBar`` and ``comfy.model_management.throw_exception_if_processing_interrupted``
    (only those: ``folder_paths`` stays absent). :attr:`updates` lists every update a bar got (``n`` each);
    with ``cancel_after=k`` the user presses cancel when the k-th update arrives, and ComfyUI's next interrupt
    check raises :class:`InterruptProcessingException` (:attr:`checks` counts the checks)."""

    def __init__(self, monkeypatch, cancel_after: int | None = None):
        import types

        self.totals: list[int] = []
        self.updates: list[int] = []
        self.checks = 0
        self.cancelled = False
        fake = self

        class ProgressBar:
            def __init__(self, total):
                fake.totals.append(total)

            def update(self, n):
                fake.updates.append(n)
                if cancel_after is not None and len(fake.updates) >= cancel_after:
                    fake.cancelled = True

            def update_absolute(self, value, total=None, preview=None):
                fake.updates.append(value)

        def throw_exception_if_processing_interrupted():
            fake.checks += 1
            if fake.cancelled:
                raise InterruptProcessingException

        comfy, utils, mm = (types.ModuleType(n) for n in ("comfy", "comfy.utils", "comfy.model_management"))
        utils.ProgressBar = ProgressBar
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.get_torch_device = lambda: torch.device("cpu")
        comfy.utils, comfy.model_management = utils, mm
        for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", mm),
                             ("folder_paths", None)):
            monkeypatch.setitem(sys.modules, name, module)
