"""The four PCDMs checkpoint kinds: names, model classes, key prefixes, and tiny configs for tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .models import PCDMsInpaintModel, PCDMsRefineModel, PCDMsSimplifiedModel
from .prior import PCDMsPriorTransformer

__all__ = ["KindSpec", "KINDS", "canonical_kind", "model_class", "tiny_config"]


@dataclass(frozen=True)
class KindSpec:
    name: str
    cls: type
    prefixes: tuple[str, ...]  # top-level key prefixes in the official file ("" = no prefix)
    manifest: str  # ../shared/reference/pcdms/<manifest>.json
    aliases: tuple[str, ...] = ()


KINDS: dict[str, KindSpec] = {
    "prior": KindSpec("prior", PCDMsPriorTransformer, ("",), "stage1_prior", ("stage1", "stage1_prior")),
    "inpaint": KindSpec("inpaint", PCDMsInpaintModel, ("image_proj_model_p.", "unet.", "pose_proj."),
                        "stage2_inpaint", ("stage2", "stage2_inpaint")),
    "refine": KindSpec("refine", PCDMsRefineModel, ("image_proj_model_p.", "unet."), "stage3_refine",
                       ("stage3", "stage3_refine", "refined")),
    "simplified": KindSpec("simplified", PCDMsSimplifiedModel, ("unet.", "pose_proj.", "image_proj_model."),
                           "pcdms_simplified", ("pcdms_simplified", "pcdms", "single_stage")),
}

_CLASS_TO_KIND = {spec.cls.__name__: name for name, spec in KINDS.items()}


def canonical_kind(kind: str) -> str:
    """'prior' | 'inpaint' | 'refine' | 'simplified' (also accepts stage1/2/3, the manifest names, class names)."""
    k = str(kind).strip().lower().replace("-", "_")
    for name, spec in KINDS.items():
        if k == name or k in spec.aliases:
            return name
    if kind in _CLASS_TO_KIND:
        return _CLASS_TO_KIND[kind]
    raise ValueError(f"unknown PCDMs kind {kind!r}; expected one of {', '.join(KINDS)}")


def model_class(kind: str) -> type:
    return KINDS[canonical_kind(kind)].cls



_TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": [2, 4],
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "sample_size": 8,
}

_TINY = {
    "prior": {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "embedding_dim": 16,
              "pose_hidden_dim": 8},
    "inpaint": {"unet_config": {**_TINY_UNET, "projection_class_embeddings_input_dim": 32},
                "image_feature_dim": 24, "image_proj_hidden_dim": 16, "pose_block_out_channels": [4, 8, 8, 16]},
    "refine": {"unet_config": dict(_TINY_UNET), "image_feature_dim": 24, "image_proj_hidden_dim": 16},
    "simplified": {"unet_config": dict(_TINY_UNET), "image_feature_dim": 24, "image_proj_hidden_dim": 16,
                   "pose_block_out_channels": [4, 8, 8, 16]},
}


def tiny_config(kind: str) -> dict:
    """A toy config of the same architecture (for tests and CPU smoke runs): UNets 32/64 channels, cross-attention
    width 32, DINOv2 stand-in width 24, pose encoder still 8x downsampling; prior width 16, 2 blocks,
    embedding 16. Use as ``model_class(kind)(**tiny_config(kind))``."""
    return copy.deepcopy(_TINY[canonical_kind(kind)])
