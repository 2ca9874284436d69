"""PCDMs (Shen et al., ICLR 2024, "Advancing Pose-Guided Image Synthesis with Progressive Conditional Diffusion
Models"): the prior, inpainting, refining and simplified models, and loaders for the released checkpoints.

Facts about the official code: ``../shared/reference/pcdms/README.md``. Sampling: :mod:`.pipelines`
(prior -> inpaint -> refine, and the simplified release); encoders and VAE adapters: :mod:`.encoders`.
"""

from .checkpoints import (
    CheckpointReport,
    PCDMsCheckpointError,
    check_state_dict,
    convert_pcdms,
    detect_kind,
    load_pcdms,
    read_checkpoint,
    save_pcdms_safetensors,
)
from .kinds import KINDS, canonical_kind, model_class, tiny_config
from .models import (
    SD21_BASE_UNET_CONFIG,
    ImageProjMLP,
    PCDMsInpaintModel,
    PCDMsRefineModel,
    PCDMsSimplifiedModel,
    inpaint_unet_input,
    pose_added_after_conv_in,
    side_by_side_mask,
)
from .prior import PCDMsPriorTransformer, PoseMLP, PriorTransformerOutput

__all__ = [
    "CheckpointReport",
    "PCDMsCheckpointError",
    "check_state_dict",
    "convert_pcdms",
    "detect_kind",
    "load_pcdms",
    "read_checkpoint",
    "save_pcdms_safetensors",
    "KINDS",
    "canonical_kind",
    "model_class",
    "tiny_config",
    "SD21_BASE_UNET_CONFIG",
    "ImageProjMLP",
    "PCDMsInpaintModel",
    "PCDMsRefineModel",
    "PCDMsSimplifiedModel",
    "inpaint_unet_input",
    "pose_added_after_conv_in",
    "side_by_side_mask",
    "PCDMsPriorTransformer",
    "PoseMLP",
    "PriorTransformerOutput",
]
