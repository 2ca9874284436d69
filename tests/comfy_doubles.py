"""Test doubles of the ComfyUI core nodes our workflows use, and the pack loader ComfyUI uses.

Each double declares the SAME input names and types and the same outputs as the ComfyUI node of that name
(checked against ComfyUI's ``nodes.py`` and ``comfy_extras/nodes_mask.py``), so workflow files can be
validated against them; their behaviour is a minimal stand-in that runs on the CPU without ComfyUI:

* ``LoadImage`` reads the named file from the repository's ``samples/`` folder (not ComfyUI's input folder).
* ``SaveImage`` / ``PreviewImage`` record what they received in :data:`RECORDS` (nothing is written).
* ``MaskToImage`` turns a MASK into a grey IMAGE, as ComfyUI does.

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


CORE_NODES = {cls.__name__: cls for cls in (LoadImage, SaveImage, PreviewImage, MaskToImage)}


def output_names(cls) -> tuple[str, ...]:
    """The output slot names the frontend shows: RETURN_NAMES, else the types."""
    return tuple(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
