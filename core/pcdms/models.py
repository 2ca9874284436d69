"""PCDMs stages 2 and 3 and the simplified single-stage release, on diffusers' stock UNet2DConditionModel.

Each class is a ModelMixin/ConfigMixin whose attribute names are the official training wrappers' attribute
names, so the state dict equals the official ``module`` dictionary key for key (manifests in
``../shared/reference/pcdms/``):

* :class:`PCDMsInpaintModel` (stage 2, Eq. 5-6): ``image_proj_model_p`` (DINOv2 tokens -> cross-attention
  width), ``unet`` (9 input channels, projection class embedding of the 1024-d global/CLIP embedding),
  ``pose_proj`` (diffusers' ``ControlNetConditioningEmbedding``; its output is added to the conv_in output).
* :class:`PCDMsRefineModel` (stage 3, Eq. 7-8): ``image_proj_model_p`` and ``unet`` (8 input channels).
* :class:`PCDMsSimplifiedModel` (``PCDMs_ckpt.pt``): ``unet`` (9 input channels, no class embedding),
  ``pose_proj``, ``image_proj_model``.

How the pose features enter the UNet
------------------------------------
The official stage-2 UNet is a copy of diffusers' UNet2DConditionModel with one change: ``sample =
conv_in(sample) + my_pose_cond`` before the down blocks (so the first skip connection carries the pose too).
We keep the stock UNet and, for the duration of one UNet call, put a forward hook on ``unet.conv_in`` that
returns ``output + pose_features``. A forward hook's return value replaces the module's output, so the rest of
the stock forward (GLIGEN no-op, ``down_block_res_samples = (sample,)``, the down blocks) sees exactly
``conv_in(x) + pose`` -- the same tensor, the same operation, the same rounding as the official code. The hook
is registered and removed around each call (no state left on the module; ``model.unet`` alone is the bare
UNet), and the state dict is untouched (no wrapper module around conv_in that would rename keys).

Conditioning semantics (what goes into each input) are documented per class; classifier-free guidance, VAE
encoding and schedulers belong to the pipelines.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

__all__ = [
    "SD21_BASE_UNET_CONFIG",
    "ImageProjMLP",
    "PCDMsInpaintModel",
    "PCDMsRefineModel",
    "PCDMsSimplifiedModel",
    "pose_added_after_conv_in",
    "side_by_side_mask",
    "inpaint_unet_input",
]

# stabilityai/stable-diffusion-2-1-base UNet config as the manifests record it (diffusers naming:
# attention_head_dim holds head *counts*, each head 64 wide). in_channels / class embedding are set per kind.
SD21_BASE_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _resolve_unet_config(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """SD-2.1-base config, then the kind's defaults, then what the caller gives (a full or partial dict)."""
    cfg = copy.deepcopy(SD21_BASE_UNET_CONFIG)
    cfg.update(defaults)
    if given:
        cfg.update({k: v for k, v in dict(given).items() if not k.startswith("_")})
    return _jsonable(cfg)


class ImageProjMLP(nn.Module):
    """Token-wise projection of DINOv2 features: Linear, GELU, Dropout, LayerNorm, Linear, Dropout (net.0/3/4).

    Official ``ImageProjModel_p`` (1536 -> 768 -> 1024); unlike the prior's pose MLP there is no final LayerNorm.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, out_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@contextlib.contextmanager
def pose_added_after_conv_in(unet: UNet2DConditionModel, pose_features: torch.Tensor | None):
    """Within the block, ``unet.conv_in``'s output is replaced by ``conv_in(x) + pose_features``.

    ``pose_features`` (B or 1, C0, h, w) is cast to the conv output's dtype (the official pipelines cast it
    to the UNet dtype before the call) and broadcast over the batch like the official addition. ``None``
    leaves the UNet untouched.
    """
    if pose_features is None:
        yield
        return

    def add_pose(module, args, output):
        return output + pose_features.to(dtype=output.dtype, device=output.device)

    handle = unet.conv_in.register_forward_hook(add_pose)
    try:
        yield
    finally:
        handle.remove()


def side_by_side_mask(
    batch_size: int, height: int, width: int, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    """The official stage-2 mask at latent resolution: (B, 1, height, width), ones over the left (source, known)
    half and zeros over the right (target, generated) half -- the opposite of SD-inpainting's convention.
    ``width`` is the width of the whole [source | target] canvas in latents (128 for 512 x 1024)."""
    if width % 2:
        raise ValueError(f"side_by_side_mask: width must be even (two halves), got {width}")
    mask = torch.zeros(batch_size, 1, height, width, dtype=dtype, device=device)
    mask[..., : width // 2] = 1
    return mask


def inpaint_unet_input(
    noisy_latents: torch.Tensor, mask: torch.Tensor, masked_image_latents: torch.Tensor
) -> torch.Tensor:
    """UNet input channels for stage 2 / simplified, in the official order: noisy latents (4), mask (1),
    latents of the [source | black] canvas (4). Mask and masked latents broadcast over the batch if batch 1."""
    b = noisy_latents.shape[0]
    if mask.shape[0] != b:
        mask = mask.expand(b, *mask.shape[1:])
    if masked_image_latents.shape[0] != b:
        masked_image_latents = masked_image_latents.expand(b, *masked_image_latents.shape[1:])
    return torch.cat([noisy_latents, mask.to(noisy_latents.dtype), masked_image_latents.to(noisy_latents.dtype)], 1)


def _as_global_token(embedding: torch.Tensor) -> torch.Tensor:
    """(B, D) or (B, 1, D) -> (B, 1, D)."""
    if embedding.ndim == 2:
        return embedding[:, None, :]
    if embedding.ndim == 3 and embedding.shape[1] == 1:
        return embedding
    raise ValueError(f"global embedding: expected (B, D) or (B, 1, D), got {tuple(embedding.shape)}")


def _in_own_dtype(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with ``x`` cast to the module's weight dtype: the released fp16 set-up keeps the pose encoder
    and the image projection in fp32 beside an fp16 UNet (the callers cast the result to the UNet's dtype)."""
    p = next(module.parameters(), None)
    return module(x if p is None or not x.is_floating_point() else x.to(p.dtype))


class _PCDMsUNetBase(ModelMixin, ConfigMixin):
    """Shared helpers: the UNet call with pose features after conv_in."""

    _supports_gradient_checkpointing = True
    unet: UNet2DConditionModel

    def _make_pose_proj(self, pose_channels: int, pose_block_out_channels) -> ControlNetConditioningEmbedding:
        return ControlNetConditioningEmbedding(
            conditioning_embedding_channels=self.unet.config.block_out_channels[0],
            conditioning_channels=pose_channels,
            block_out_channels=tuple(pose_block_out_channels),
        )

    def _unet_call(self, sample, timestep, encoder_hidden_states, pose_features=None, class_labels=None,
                   return_dict=True, needs_pose=False, **unet_kwargs):
        if needs_pose and pose_features is None:
            raise ValueError(f"{type(self).__name__}: pose_features are required (the official UNet has no "
                             "pose-free path; pass zeros to drop the pose)")
        with pose_added_after_conv_in(self.unet, pose_features):
            return self.unet(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                class_labels=class_labels,
                return_dict=return_dict,
                **unet_kwargs,
            )

    @property
    def latent_channels(self) -> int:
        return self.unet.config.out_channels


class PCDMsInpaintModel(_PCDMsUNetBase):
    """Stage 2 of PCDMs: the inpainting conditional diffusion model (paper section 3.3, Eq. 5-6).

    Config (defaults = the released model):
        unet_config: a UNet2DConditionModel config (full or partial dict, merged over SD-2.1-base); defaults
            add ``in_channels=9``, ``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=1024``.
        image_feature_dim: width of the DINOv2 tokens (1536, dinov2-giant); projected by ``image_proj_model_p``
            through ``image_proj_hidden_dim`` (768) to the UNet's ``cross_attention_dim`` (1024).
        pose_channels / pose_block_out_channels: the pose encoder (3, (16, 32, 96, 256)); its output width is
            the UNet's ``block_out_channels[0]`` and its stride 2 ** (len - 1) must equal the VAE factor (8).
    The global (CLIP) embedding width is ``projection_class_embeddings_input_dim`` and must equal
    ``cross_attention_dim``: it is used both as the class label and as one extra cross-attention token.

    Inputs, per the official code: ``sample`` = [noisy latents, mask, latents of the [source | black] canvas]
    (see :func:`side_by_side_mask`, :func:`inpaint_unet_input`); the context is
    ``cat(image_proj_model_p(DINOv2 tokens of the source), global embedding)`` (B, 257 + 1, 1024); the class
    labels are the global embedding (B, 1024) (the official UNet squeezes (B, 1, 1024) on dim 1; we accept
    both); the pose features are ``pose_proj([source pose | target pose] image in [-1, 1])``.
    """

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        image_feature_dim: int = 1536,
        image_proj_hidden_dim: int = 768,
        pose_channels: int = 3,
        pose_block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ):
        super().__init__()
        unet_config = _resolve_unet_config(
            {"in_channels": 9, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 1024},
            unet_config,
        )
        self.register_to_config(unet_config=unet_config, pose_block_out_channels=list(pose_block_out_channels))
        if unet_config.get("class_embed_type") != "projection":
            raise ValueError("PCDMsInpaintModel needs class_embed_type='projection' (the global embedding)")
        if unet_config["projection_class_embeddings_input_dim"] != unet_config["cross_attention_dim"]:
            raise ValueError(
                "PCDMsInpaintModel: the global embedding is both the class label and a cross-attention token, so "
                "projection_class_embeddings_input_dim must equal cross_attention_dim"
            )
        # Registration order = the official wrapper's (and the checkpoint's) key order.
        self.image_proj_model_p = ImageProjMLP(image_feature_dim, image_proj_hidden_dim,
                                               unet_config["cross_attention_dim"])
        self.unet = UNet2DConditionModel(**unet_config)
        self.pose_proj = self._make_pose_proj(pose_channels, pose_block_out_channels)

    # --- conditioning, computed once per call by the pipelines ---
    def encode_pose(self, pose_image: torch.Tensor) -> torch.Tensor:
        """[source pose | target pose] rendering in [-1, 1], (B, 3, H, W) -> (B, C0, H/8, W/8)."""
        return _in_own_dtype(self.pose_proj, pose_image)

    def project_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """DINOv2 last_hidden_state (B, N, 1536) -> (B, N, cross_attention_dim)."""
        return _in_own_dtype(self.image_proj_model_p, image_features)

    @staticmethod
    def build_context(projected_tokens: torch.Tensor, global_embedding: torch.Tensor) -> torch.Tensor:
        """Cross-attention context: projected DINOv2 tokens, then the global (CLIP / prior) token."""
        return torch.cat([projected_tokens, _as_global_token(global_embedding).to(projected_tokens.dtype)], 1)

    def encode_conditions(self, image_features: torch.Tensor, global_embedding: torch.Tensor,
                          pose_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official training wrapper's conditioning, as keyword arguments for :meth:`forward`."""
        return {
            "encoder_hidden_states": self.build_context(self.project_image_features(image_features),
                                                        global_embedding),
            "class_labels": _as_global_token(global_embedding)[:, 0],
            "pose_features": self.encode_pose(pose_image),
        }

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        pose_features: torch.Tensor,
        class_labels: torch.Tensor,
        return_dict: bool = True,
        **unet_kwargs,
    ) -> UNet2DConditionOutput | tuple:
        """One UNet evaluation eps_theta(x_t, f_st, p_st, i_sm, t) (Eq. 5) with conditions already encoded.

        sample (B, 9, h, w); encoder_hidden_states (B, N + 1, 1024); pose_features (B or 1, 320, h, w);
        class_labels (B, 1024) or (B, 1, 1024). Returns the predicted noise (B, 4, h, w).
        """
        if class_labels is not None and class_labels.ndim == 3:
            class_labels = class_labels.squeeze(1)  # official: (B, 1, D) squeezed on dim 1
        return self._unet_call(sample, timestep, encoder_hidden_states, pose_features, class_labels,
                               return_dict, needs_pose=True, **unet_kwargs)


class PCDMsRefineModel(_PCDMsUNetBase):
    """Stage 3 of PCDMs: the refining conditional diffusion model (paper section 3.4, Eq. 7-8).

    Config: ``unet_config`` (merged over SD-2.1-base; default ``in_channels=8``: noisy latents (4) + latents of
    the coarse stage-2 image (4), stock UNet, no class embedding, no pose), ``image_feature_dim`` 1536 and
    ``image_proj_hidden_dim`` 768 for ``image_proj_model_p``. The context is ``image_proj_model_p(DINOv2 tokens
    of the source)`` (B, 257, 1024) only.
    """

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        image_feature_dim: int = 1536,
        image_proj_hidden_dim: int = 768,
    ):
        super().__init__()
        unet_config = _resolve_unet_config({"in_channels": 8}, unet_config)
        self.register_to_config(unet_config=unet_config)
        self.image_proj_model_p = ImageProjMLP(image_feature_dim, image_proj_hidden_dim,
                                               unet_config["cross_attention_dim"])
        self.unet = UNet2DConditionModel(**unet_config)

    def project_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return _in_own_dtype(self.image_proj_model_p, image_features)

    def encode_conditions(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": self.project_image_features(image_features)}

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
        **unet_kwargs,
    ) -> UNet2DConditionOutput | tuple:
        """eps_theta(x_t, i_ct, f_s, t) (Eq. 7): sample (B, 8, h, w) = [noisy latents, coarse-image latents]."""
        return self._unet_call(sample, timestep, encoder_hidden_states, None, None, return_dict, **unet_kwargs)


class PCDMsSimplifiedModel(_PCDMsUNetBase):
    """The later single-stage release (``PCDMs_ckpt.pt``): stage-2 layout without the prior.

    ``unet`` (9 input channels, no class embedding), ``pose_proj`` (as stage 2) and ``image_proj_model``
    (same MLP layout as ``image_proj_model_p``; the attribute name has no ``_p``, as in the file). The context
    is ``image_proj_model(DINOv2 tokens of the source)`` only (no CLIP token, no class labels). The official
    demo's negative context is ``image_proj_model(zeros)``, not zeros (a pipeline matter).
    Config keys as :class:`PCDMsInpaintModel`.
    """

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        image_feature_dim: int = 1536,
        image_proj_hidden_dim: int = 768,
        pose_channels: int = 3,
        pose_block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ):
        super().__init__()
        unet_config = _resolve_unet_config({"in_channels": 9}, unet_config)
        self.register_to_config(unet_config=unet_config, pose_block_out_channels=list(pose_block_out_channels))
        # Key order of the released file is unknown; the manifest lists unet, pose_proj, image_proj_model.
        self.unet = UNet2DConditionModel(**unet_config)
        self.pose_proj = self._make_pose_proj(pose_channels, pose_block_out_channels)
        self.image_proj_model = ImageProjMLP(image_feature_dim, image_proj_hidden_dim,
                                             unet_config["cross_attention_dim"])

    def encode_pose(self, pose_image: torch.Tensor) -> torch.Tensor:
        return _in_own_dtype(self.pose_proj, pose_image)

    def project_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return _in_own_dtype(self.image_proj_model, image_features)

    def encode_conditions(self, image_features: torch.Tensor, pose_image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "encoder_hidden_states": self.project_image_features(image_features),
            "pose_features": self.encode_pose(pose_image),
        }

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        pose_features: torch.Tensor,
        return_dict: bool = True,
        **unet_kwargs,
    ) -> UNet2DConditionOutput | tuple:
        """sample (B, 9, h, w); encoder_hidden_states (B, N, 1024); pose_features (B or 1, 320, h, w)."""
        return self._unet_call(sample, timestep, encoder_hidden_states, pose_features, None, return_dict,
                               needs_pose=True, **unet_kwargs)
