"""PCDMs stage 1: the prior conditional diffusion model (paper section 3.2, Eq. 3-4).

A transformer that predicts the normalised CLIP image embedding of the *target* person (x0, not noise) from
the source image's CLIP embedding and the source / target pose coordinates. Built on diffusers'
``BasicTransformerBlock``, ``Timesteps`` and ``TimestepEmbedding``; everything else here is what PCDMs adds.

Layout (``../shared/reference/pcdms/README.md`` and ``stage1_prior.json``; at the default config the state
dict equals the official ``Stage1_PriorTransformer`` key for key and shape for shape):

* ``pose_encoder`` / ``pose_encoder1``: ``Linear(36, 512), GELU, Dropout, LayerNorm(512), Linear(512, D),
  Dropout, LayerNorm(D)`` for the source / target pose (18 COCO keypoints x (x, y), flattened). The paper calls
  this "3 linear layers"; the code has 2 Linear + 2 LayerNorm and that is what the checkpoint holds.
* Six tokens, in this order: ``[encoder_hidden_states_proj(pose_encoder(source pose)),
  encoder_hidden_states_proj1(pose_encoder1(target pose)), embedding_proj(source CLIP embedding),
  time_embedding(t), proj_in(x_t), prd_embedding]``, plus the learned ``positional_embedding`` (1, 6, width).
* ``num_layers`` blocks of full (bidirectional) self-attention, ``norm_out``, and the last (prd) token through
  ``proj_to_clip_embeddings`` -> predicted x0, shape (B, D).
* ``causal_attention_mask``: a non-persistent buffer as in the official class. It is applied only when an
  ``attention_mask`` is passed, which no official caller does; the default is no mask at all.
* ``clip_mean`` / ``clip_std`` (-0.016, 0.415): not in any checkpoint; the embedding is normalised as
  ``(e - mean) / std`` for training and mapped back with :meth:`post_process_latents` after sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.prior_transformer import PriorTransformerOutput

__all__ = ["PCDMsPriorTransformer", "PoseMLP", "PriorTransformerOutput"]


class PoseMLP(nn.Module):
    """The prior's pose network: Linear, GELU, Dropout, LayerNorm, Linear, Dropout, LayerNorm (keys net.0/3/4/6)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, out_dim),
            nn.Dropout(dropout),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _as_token(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C) or (B, 1, C) -> (B, 1, C)."""
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name}: expected shape (B, C) or (B, 1, C), got {tuple(x.shape)}")


class PCDMsPriorTransformer(ModelMixin, ConfigMixin):
    """Stage-1 prior of PCDMs (``Stage1_PriorTransformer`` of the official code).

    Config (defaults = the released model): ``num_attention_heads`` 32 x ``attention_head_dim`` 64 = width 2048,
    ``num_layers`` 20, ``embedding_dim`` 1024 (CLIP ViT-H/14 image_embeds), ``num_embeddings`` 2 (the two pose
    tokens), ``additional_embeddings`` 4 (source embedding, time, x_t, prd), ``dropout`` 0. Added here (the
    official class hard-codes them): ``pose_dim`` 36, ``pose_hidden_dim`` 512, ``clip_mean`` -0.016,
    ``clip_std`` 0.415. The token layout is fixed (2 pose tokens + 4), so ``num_embeddings`` must be 2 and
    ``additional_embeddings`` 4; they stay config keys because they size the positional embedding and the
    causal mask exactly as in the official config.

    ``forward`` returns the predicted clean, *normalised* target embedding (x0-prediction, Eq. 3), shape (B, D).
    Guidance (Eq. 4) is the pipeline's business: the official pipeline has no working unconditional branch.
    """

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 32,
        attention_head_dim: int = 64,
        num_layers: int = 20,
        embedding_dim: int = 1024,
        num_embeddings: int = 2,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        pose_dim: int = 36,
        pose_hidden_dim: int = 512,
        clip_mean: float = -0.016,
        clip_std: float = 0.415,
    ):
        super().__init__()
        if num_embeddings != 2 or additional_embeddings != 4:
            raise ValueError(
                "PCDMs prior: the token layout is 2 pose tokens + 4 (source embedding, time, x_t, prd); "
                f"got num_embeddings={num_embeddings}, additional_embeddings={additional_embeddings}"
            )
        inner_dim = num_attention_heads * attention_head_dim
        self.num_attention_heads = num_attention_heads
        self.additional_embeddings = additional_embeddings
        num_tokens = num_embeddings + additional_embeddings

        # Attribute order = the official state-dict order (positional/prd parameters are registered first
        # there too, because nn.Module lists direct parameters before sub-modules).
        self.pose_encoder = PoseMLP(pose_dim, pose_hidden_dim, embedding_dim)
        self.pose_encoder1 = PoseMLP(pose_dim, pose_hidden_dim, embedding_dim)
        self.time_proj = Timesteps(inner_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(inner_dim, inner_dim)
        self.proj_in = nn.Linear(embedding_dim, inner_dim)
        self.embedding_proj = nn.Linear(embedding_dim, inner_dim)
        self.encoder_hidden_states_proj = nn.Linear(embedding_dim, inner_dim)
        self.encoder_hidden_states_proj1 = nn.Linear(embedding_dim, inner_dim)
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_tokens, inner_dim))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner_dim))
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    dropout=dropout,
                    activation_fn="gelu",
                    attention_bias=True,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(inner_dim)
        self.proj_to_clip_embeddings = nn.Linear(inner_dim, embedding_dim)
        self.register_buffer("causal_attention_mask", self._causal_mask(), persistent=False)

    def _causal_mask(self, device=None) -> torch.Tensor:
        n = self.config.num_embeddings + self.config.additional_embeddings
        return torch.full((n, n), -10000.0, device=device).triu_(1)[None]

    def reset_non_persistent_buffers(self, device=None) -> None:
        """Recreate the causal mask (e.g. after building on the meta device and loading weights)."""
        if device is None:
            device = self.proj_in.weight.device
        self.register_buffer("causal_attention_mask", self._causal_mask(device), persistent=False)

    # --- normalisation of CLIP embeddings (official clip_mean / clip_std, plain fp32 scalars) ---
    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The official class keeps them as fp32 0-dim tensors whatever the model dtype; do the same.
        mean = torch.tensor(self.config.clip_mean, dtype=torch.float32, device=like.device)
        std = torch.tensor(self.config.clip_std, dtype=torch.float32, device=like.device)
        return mean, std

    def normalize_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """Training target: ``(e - clip_mean) / clip_std`` (official: ``(e + 0.016) / 0.415``)."""
        mean, std = self._constants(embedding)
        return (embedding - mean) / std

    def post_process_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampled x0 -> CLIP embedding: ``latents * clip_std + clip_mean`` (official ``post_process_latents``)."""
        mean, std = self._constants(latents)
        return latents * std + mean

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        proj_embedding: torch.Tensor,
        source_pose: torch.Tensor,
        target_pose: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Predict x0 (Eq. 3).

        Args (positional order as the official forward):
            hidden_states: noisy normalised target embedding x_t, (B, D) or (B, 1, D).
            timestep: int / float / 0-d or (B,) tensor.
            proj_embedding: source CLIP image embedding, (B, D) or (B, 1, D).
            source_pose, target_pose: flattened pose coordinates, (B, 36) or (B, 1, 36).
            attention_mask: optional (B, num_embeddings) keep-mask over the pose tokens; when given, it is
                combined with the causal mask exactly as the official code does. Official callers pass None.
        Returns:
            ``PriorTransformerOutput(predicted_image_embedding=(B, D))`` or a 1-tuple.
        """
        x_t = _as_token(hidden_states, "hidden_states")
        batch_size = x_t.shape[0]
        source_embedding = _as_token(proj_embedding, "proj_embedding")
        source_pose = _as_token(source_pose, "source_pose")
        target_pose = _as_token(target_pose, "target_pose")

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=x_t.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(x_t.device)
        timesteps = timesteps * torch.ones(batch_size, dtype=timesteps.dtype, device=timesteps.device)
        t_emb = self.time_proj(timesteps).to(dtype=self.time_embedding.linear_1.weight.dtype)
        t_emb = self.time_embedding(t_emb)

        x_t = self.proj_in(x_t)
        tokens = torch.cat(
            [
                self.encoder_hidden_states_proj(self.pose_encoder(source_pose)),  # source pose
                self.encoder_hidden_states_proj1(self.pose_encoder1(target_pose)),  # target pose
                self.embedding_proj(source_embedding),  # source image (CLIP)
                t_emb[:, None, :],  # time
                x_t,  # noisy target embedding
                self.prd_embedding.to(x_t.dtype).expand(batch_size, -1, -1),  # prediction token
            ],
            dim=1,
        )
        tokens = tokens + self.positional_embedding.to(tokens.dtype)

        if attention_mask is not None:  # official semantics; never used by the official pipelines
            attention_mask = (1 - attention_mask.to(tokens.dtype)) * -10000.0
            attention_mask = F.pad(attention_mask, (0, self.additional_embeddings), value=0.0)
            attention_mask = (attention_mask[:, None, :] + self.causal_attention_mask).to(tokens.dtype)
            attention_mask = attention_mask.repeat_interleave(self.num_attention_heads, dim=0)

        for block in self.transformer_blocks:
            tokens = block(tokens, attention_mask=attention_mask)
        tokens = self.norm_out(tokens)
        predicted = self.proj_to_clip_embeddings(tokens[:, -1])
        if not return_dict:
            return (predicted,)
        return PriorTransformerOutput(predicted_image_embedding=predicted)
