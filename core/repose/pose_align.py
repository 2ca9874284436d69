"""RePoseDM recurrent pose alignment, PoseAlign (``shared/papers/repose_dm.txt`` section 3.2, eq 5-9).

Pieces (equation numbers in comments refer to the paper):

* :func:`local_attention`: softmax attention of every position ``x`` over the keys in its region ``N(x)``, a
  ``k x k`` window centred on ``x`` (eq 5). It never builds a ``HW x HW`` matrix: the logits are ``(..., k*k, H, W)``
  (memory ``O(HW x window)``), computed one window offset at a time. :func:`local_attention_reference` is the
  masked dense version kept for tests.
* :func:`local_correlation`: ``C(x, r) = ReLU(F_T'(x)^T F_S'(x + r))`` for ``||r||_inf <= R`` (eq 6), output
  ``(B, (2R+1)^2, H, W)``, channel ``(dy + R) * (2R + 1) + (dx + R)``; zero outside the map. Also ``O(HW x window)``;
  :func:`local_correlation_reference` is the dense version.
* :class:`MapFormerLayer`: one attention (diffusers' :class:`~diffusers.models.attention_processor.Attention`
  for the projections; windowed by :func:`local_attention`, or global through its stock SDPA processor), residual +
  LayerNorm, diffusers' :class:`~diffusers.models.attention.FeedForward`, residual + LayerNorm.
  :class:`MapFormer`: one self-attention layer on the source features, then one cross-attention layer in which
  the pose features query the (self-attended) source features, both with the level's window (eq 5).
* :class:`PoseMappingAggregator`: eq 6 correlation -> conv3x3 -> ReLU -> conv3x3 -> ReLU -> max-pool -> 1x1 flow
  head -> the increment ``dF`` (a backward flow in latent pixels, :mod:`..flow` convention).
* :class:`PoseAlign`: the recurrent accumulator (eq 7-9): ``F^0 = M(F_T, F_S)``,
  ``F^{n+1} = F^n o dF^{n+1}`` with ``dF^{n+1} = M(F_T, F_S^n)`` and ``F_S^n = Encoder(W(I_S; F^n))``; the
  composition is :func:`..flow.compose` (``warp(warp(I, F^n), dF) == warp(I, compose(F^n, dF))``).
  Returns ``F_S^N`` (the cross-attention condition of the denoiser), the flows, the warped source and, given a
  decoder, the decoded ``F_S^N`` (supplement Fig. 8).

Choices where the paper is vague (all configurable):

* Levels. "Global -> non-local -> local" is read as a schedule over the recurrent iterations: application ``n`` of
  ``M`` (``n = 0 .. N``) uses level ``min(n, L - 1)`` of ``window_sizes`` (default ``(0, 15, 11, 7, 5, 3)``; 0 =
  global attention). Each level has its own MapFormer and aggregator weights (the paper's "different kernel sizes").
* Depth ``D`` = ``dim`` (64), one head by default (eq 5 scales by ``1/sqrt(D)``); the latents are embedded to ``D``
  by a conv3x3 per input (the paper's "convolution layer of depth D"). No positional encoding in the attention
  (eq 5 has none); the correlation's offsets ``r`` carry the geometry.
* Correlation radius ``R`` (eq 6's ``||r||_inf <= R``): not given in the paper; 4 (81 offsets) at every level
  (``correlation_radius``), the same at all levels although the attention windows shrink.
* Border: keys outside the map are excluded from the window's softmax (not zero-padded keys); the correlation is 0
  there. Post-norm residual blocks (GMFlow / LocalTrans style), FFN width ``4 D`` with GELU.
* Aggregator: max-pool ``pool_size`` (2, ceil mode) then a zero-initialised 1x1 head to 2 channels (a flow must
  come out; the paper lists only the 2 convs and the pool), resized back with :func:`..flow.resize_flow`. The zero
  init makes an untrained PoseAlign the identity warp.
* Eq 9 re-encodes the warped source image through the VAE encoder at every iteration (``reencode=True``, the
  paper). ``reencode=False`` warps ``F_S`` in latent space instead (cheaper, an approximation).
* Flows live on the latent grid in latent pixels; the image is warped with the flow resized to the image grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..flow import compose, resize_flow, warp

__all__ = [
    "local_attention", "local_attention_reference", "local_correlation", "local_correlation_reference",
    "window_offsets", "MapFormerLayer", "MapFormer", "PoseMappingAggregator", "PoseAlign", "PoseAlignOutput",
    "accumulate_flows", "PAPER_POSE_ALIGN_CONFIG", "TINY_POSE_ALIGN_CONFIG",
]

PAPER_POSE_ALIGN_CONFIG = dict(
    latent_channels=4, dim=64, num_heads=1, window_sizes=(0, 15, 11, 7, 5, 3), correlation_radius=4, ffn_mult=4,
    pool_size=2, num_iterations=5, reencode=True,
)
TINY_POSE_ALIGN_CONFIG = dict(
    latent_channels=4, dim=8, num_heads=1, window_sizes=(0, 5, 3), correlation_radius=2, ffn_mult=2,
    pool_size=2, num_iterations=2, reencode=True,
)


# ------------------------------------------------------------------------------------------ local operations

def window_offsets(radius: int) -> list[tuple[int, int]]:
    """``(dy, dx)`` for ``||r||_inf <= radius``, row-major (dy outer): the channel order of the local ops."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _valid_offsets(radius: int, height: int, width: int, device) -> torch.Tensor:
    """``(K, H, W)`` bool: the window offset lands inside the map."""
    ys = torch.arange(height, device=device)[:, None]
    xs = torch.arange(width, device=device)[None, :]
    masks = [((ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width))
             for dy, dx in window_offsets(radius)]
    return torch.stack(masks)


def _check_window(window: int) -> int:
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window: expected an odd positive size, got {window!r}")
    return window // 2


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                    scale: float | None = None) -> torch.Tensor:
    """Windowed attention (eq 5): position ``x`` attends to the keys at ``x + r``, ``||r||_inf <= window // 2``.

    ``q, k`` ``(..., d, H, W)``, ``v`` ``(..., e, H, W)`` (the leading dims are batch and heads); returns
    ``(..., e, H, W)``. Keys outside the map are left out of the softmax. ``scale`` defaults to ``1/sqrt(d)``.
    Memory: the logits ``(..., window^2, H, W)`` and the output; no ``HW x HW`` matrix.
    """
    r = _check_window(window)
    if q.shape[-2:] != k.shape[-2:] or k.shape[-2:] != v.shape[-2:] or q.shape[-3] != k.shape[-3]:
        raise ValueError(f"local_attention: incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    h, w = q.shape[-2:]
    scale = q.shape[-3] ** -0.5 if scale is None else scale
    kp = F.pad(k, (r, r, r, r))
    vp = F.pad(v, (r, r, r, r))
    offsets = window_offsets(r)
    # vecdot / addcmul_ keep no (..., d, H, W) temporary per offset (6x faster than mul + sum on the CPU).
    logits = torch.stack([torch.linalg.vecdot(q, kp[..., r + dy:r + dy + h, r + dx:r + dx + w], dim=-3)
                          for dy, dx in offsets], -3)
    valid = _valid_offsets(r, h, w, q.device)
    logits = (logits * scale).masked_fill(~valid, float("-inf"))
    attn = logits.softmax(dim=-3)                                           # (..., K, H, W)
    out = torch.zeros(torch.broadcast_shapes(attn[..., :1, :, :].shape, v.shape), dtype=attn.dtype, device=v.device)
    for i, (dy, dx) in enumerate(offsets):
        out.addcmul_(attn[..., i:i + 1, :, :], vp[..., r + dy:r + dy + h, r + dx:r + dx + w])
    return out


def local_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                              scale: float | None = None) -> torch.Tensor:
    """:func:`local_attention` as a dense ``HW x HW`` masked softmax (tests and benchmarks only)."""
    r = _check_window(window)
    h, w = q.shape[-2:]
    scale = q.shape[-3] ** -0.5 if scale is None else scale
    qt = q.flatten(-2).transpose(-1, -2)                                    # (..., HW, d)
    kt = k.flatten(-2).transpose(-1, -2)
    vt = v.flatten(-2).transpose(-1, -2)
    logits = qt @ kt.transpose(-1, -2) * scale                              # (..., HW, HW)
    ys, xs = torch.meshgrid(torch.arange(h, device=q.device), torch.arange(w, device=q.device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None, :]).abs() <= r) & ((xs[:, None] - xs[None, :]).abs() <= r)
    attn = logits.masked_fill(~near, float("-inf")).softmax(-1)
    out = attn @ vt                                                         # (..., HW, e)
    return out.transpose(-1, -2).reshape(*v.shape[:-2], h, w)


def local_correlation(target_features: torch.Tensor, source_features: torch.Tensor, radius: int) -> torch.Tensor:
    """Eq 6: ``C(x, r) = ReLU(F_T'(x)^T F_S'(x + r))``, ``||r||_inf <= radius`` -> ``(B, (2R+1)^2, H, W)``.

    ``F_S'`` is taken as zero outside the map (so ``C = 0`` there). Memory ``O(HW x (2R+1)^2)``.
    """
    if target_features.shape != source_features.shape or target_features.ndim != 4:
        raise ValueError(f"local_correlation: expected two (B, D, H, W) maps of one shape, got "
                         f"{tuple(target_features.shape)} and {tuple(source_features.shape)}")
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius: expected a non-negative int, got {radius!r}")
    h, w = target_features.shape[-2:]
    r = radius
    sp = F.pad(source_features, (r, r, r, r))
    return F.relu(torch.stack([torch.linalg.vecdot(target_features, sp[..., r + dy:r + dy + h, r + dx:r + dx + w],
                                                   dim=1) for dy, dx in window_offsets(r)], 1))


def local_correlation_reference(target_features: torch.Tensor, source_features: torch.Tensor,
                                radius: int) -> torch.Tensor:
    """:func:`local_correlation` from the dense ``HW x HW`` product (tests and benchmarks only)."""
    b, d, h, w = target_features.shape
    full = torch.einsum("bdp,bdq->bpq", target_features.flatten(2), source_features.flatten(2))  # (B, HW, HW)
    full = full.view(b, h, w, h, w)
    out = target_features.new_zeros(b, (2 * radius + 1) ** 2, h, w)
    for i, (dy, dx) in enumerate(window_offsets(radius)):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    out[:, i, y, x] = full[:, y, x, y + dy, x + dx]
    return F.relu(out)


# ------------------------------------------------------------------------------------------------- MapFormer

def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _to_map(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], height, width)


class MapFormerLayer(nn.Module):
    """Attention over ``N(x)`` (eq 5) + residual + LayerNorm + FFN + residual + LayerNorm, on ``(B, D, H, W)`` maps.

    ``window = 0`` is global attention (diffusers' SDPA processor, no explicit ``HW x HW`` matrix); an odd
    ``window`` uses :func:`local_attention`. ``forward(x)`` is self-attention; ``forward(x, context)`` is
    cross-attention with queries from ``x`` and keys/values from ``context`` (same grid).
    """

    def __init__(self, dim: int, num_heads: int = 1, window: int = 0, ffn_mult: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window != 0:
            _check_window(window)
        self.window = window
        self.attn = Attention(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, bias=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=ffn_mult, activation_fn="gelu")
        self.norm2 = nn.LayerNorm(dim)

    def _local(self, x: torch.Tensor, context: torch.Tensor, height: int, width: int) -> torch.Tensor:
        a = self.attn
        b = x.shape[0]

        def heads(t):  # (B, HW, heads * dh) -> (B, heads, dh, H, W), diffusers' head split
            return t.view(b, height * width, a.heads, -1).permute(0, 2, 3, 1).reshape(b, a.heads, -1, height, width)

        q, k, v = heads(a.to_q(x)), heads(a.to_k(context)), heads(a.to_v(context))
        o = local_attention(q, k, v, self.window, a.scale)                  # eq 5
        o = o.reshape(b, -1, height * width).transpose(1, 2)
        return a.to_out[1](a.to_out[0](o))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        xt = _to_tokens(x)
        ct = None if context is None else _to_tokens(context)
        if self.window == 0:
            a = self.attn(xt, encoder_hidden_states=ct)
        else:
            a = self._local(xt, xt if ct is None else ct, h, w)
        y = self.norm1(xt + a)
        y = self.norm2(y + self.ff(y))
        return _to_map(y, h, w)


class MapFormer(nn.Module):
    """One level of MapFormer: self-attention on the source features, then cross-attention of the pose features
    (queries) to the self-attended source features (keys, values), both over windows of ``window`` (eq 5).

    Returns ``(F_S', F_T')``, the two inputs of the correlation (eq 6).
    """

    def __init__(self, dim: int, num_heads: int = 1, window: int = 0, ffn_mult: int = 4):
        super().__init__()
        self.self_attn = MapFormerLayer(dim, num_heads, window, ffn_mult)
        self.cross_attn = MapFormerLayer(dim, num_heads, window, ffn_mult)

    def forward(self, source: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.self_attn(source)                  # self(x), eq 5
        pose = self.cross_attn(pose, context=source)     # cross(x), eq 5
        return source, pose


class PoseMappingAggregator(nn.Module):
    """Eq 6 correlation -> conv3x3 + ReLU -> conv3x3 + ReLU -> max-pool -> 1x1 head: the flow increment ``dF``."""

    def __init__(self, radius: int, dim: int, pool_size: int = 2):
        super().__init__()
        self.radius = radius
        self.conv1 = nn.Conv2d((2 * radius + 1) ** 2, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.pool = nn.MaxPool2d(pool_size, ceil_mode=True) if pool_size > 1 else nn.Identity()
        self.head = nn.Conv2d(dim, 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, target_features: torch.Tensor, source_features: torch.Tensor) -> torch.Tensor:
        size = tuple(target_features.shape[-2:])
        c = local_correlation(target_features, source_features, self.radius)        # eq 6
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(c)))))
        flow = self.head(x)                                                          # dF in pooled-grid pixels
        return flow if tuple(flow.shape[-2:]) == size else resize_flow(flow, size)


def accumulate_flows(flows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq 7 over a sequence: ``F^0 = flows[0]``, ``F^{n+1} = compose(F^n, flows[n+1])``."""
    if not flows:
        raise ValueError("accumulate_flows: no flows")
    total = flows[0]
    for increment in flows[1:]:
        total = compose(total, increment)
    return total


# ------------------------------------------------------------------------------------------------- PoseAlign

@dataclass
class PoseAlignOutput(BaseOutput):
    """``features``: ``F_S^N`` (B, C, h, w), the warped source re-encoded (the denoiser's cross-attention
    condition). ``flow``: ``F^N`` on the latent grid in latent pixels; ``image_flow``: the same on the image grid in
    image pixels. ``warped_image``: ``W(I_S; F^N)``. ``decoded``: ``decode(F_S^N)`` when a decoder was given
    (supplement Fig. 8). ``flows`` / ``warped_images``: ``F^0 .. F^N`` and ``W(I_S; F^n)`` when intermediates were
    asked for (else empty)."""

    features: torch.Tensor
    flow: torch.Tensor
    image_flow: torch.Tensor
    warped_image: torch.Tensor
    decoded: torch.Tensor | None = None
    flows: tuple = ()
    warped_images: tuple = ()


class PoseAlign(ModelMixin, ConfigMixin):
    """Recurrent pose alignment (section 3.2): MapFormer + pose mapping aggregator + recurrent accumulator.

    Config: ``latent_channels`` (VAE latent width, 4), ``dim`` (D), ``num_heads``, ``window_sizes`` (one level per
    entry, 0 = global; application ``n`` of ``M`` uses level ``min(n, L - 1)``), ``correlation_radius`` (R of eq 6),
    ``ffn_mult``, ``pool_size`` (aggregator max-pool), ``num_iterations`` (N, 5), ``reencode`` (eq 9 through the
    encoder, else warp the latents). :data:`PAPER_POSE_ALIGN_CONFIG` / :data:`TINY_POSE_ALIGN_CONFIG`.

    ``forward(source_image, pose_latents, encode, decode=None)``: ``source_image`` (B, 3, H, W) in the range
    ``encode`` expects (warping does not care), ``pose_latents`` ``F_T`` (B, C, h, w) = encode(target pose image),
    ``encode`` image -> latents on the same (h, w) grid (e.g. the frozen VAE's), ``decode`` latents -> image.
    Gradients flow through the warps and ``encode`` (end-to-end training through the denoiser loss).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        dim: int = 64,
        num_heads: int = 1,
        window_sizes: tuple[int, ...] = (0, 15, 11, 7, 5, 3),
        correlation_radius: int = 4,
        ffn_mult: int = 4,
        pool_size: int = 2,
        num_iterations: int = 5,
        reencode: bool = True,
    ):
        super().__init__()
        window_sizes = tuple(int(w) for w in window_sizes)
        if not window_sizes:
            raise ValueError("window_sizes: at least one level")
        self.register_to_config(window_sizes=list(window_sizes))
        self.source_embed = nn.Conv2d(latent_channels, dim, 3, padding=1)
        self.pose_embed = nn.Conv2d(latent_channels, dim, 3, padding=1)
        self.mapformers = nn.ModuleList(MapFormer(dim, num_heads, w, ffn_mult) for w in window_sizes)
        self.aggregators = nn.ModuleList(PoseMappingAggregator(correlation_radius, dim, pool_size)
                                         for _ in window_sizes)

    def level(self, n: int) -> int:
        return min(n, len(self.mapformers) - 1)

    def increment(self, n: int, pose_features: torch.Tensor, source_latents: torch.Tensor) -> torch.Tensor:
        """``M(F_T, F_S^n)`` (eq 8): ``pose_features`` = ``pose_embed(F_T)``; returns ``dF`` (B, 2, h, w)."""
        lvl = self.level(n)
        s, t = self.mapformers[lvl](self.source_embed(source_latents), pose_features)
        return self.aggregators[lvl](t, s)

    def forward(
        self,
        source_image: torch.Tensor,
        pose_latents: torch.Tensor,
        encode: Callable[[torch.Tensor], torch.Tensor],
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_iterations: int | None = None,
        return_intermediates: bool = False,
        return_dict: bool = True,
    ) -> PoseAlignOutput | tuple:
        if source_image.ndim != 4 or pose_latents.ndim != 4:
            raise ValueError(f"PoseAlign: expected source_image (B, 3, H, W) and pose_latents (B, C, h, w), got "
                             f"{tuple(source_image.shape)} and {tuple(pose_latents.shape)}")
        n_iter = self.config.num_iterations if num_iterations is None else int(num_iterations)
        image_size = tuple(source_image.shape[-2:])
        latent_size = tuple(pose_latents.shape[-2:])
        reencode = self.config.reencode

        source_latents = encode(source_image)                          # F_S = Encoder(I_S)
        if tuple(source_latents.shape[-2:]) != latent_size:
            raise ValueError(f"PoseAlign: encode gives a {tuple(source_latents.shape[-2:])} grid but the pose "
                             f"latents are {latent_size}")
        pose_features = self.pose_embed(pose_latents.to(source_latents.dtype))

        def warped_source(flow):
            if reencode:
                image = warp(source_image, resize_flow(flow, image_size))   # W(I_S; F^n)
                return encode(image), image                                 # eq 9
            return warp(source_latents, flow), None

        flow = self.increment(0, pose_features, source_latents)         # F^0 = dF^0 = M(F_T, F_S)
        flows, images = [flow], []
        for n in range(n_iter):
            fs_n, img = warped_source(flow)                              # F_S^n, eq 9
            if return_intermediates:
                images.append(img if img is not None else warp(source_image, resize_flow(flow, image_size)))
            flow = compose(flow, self.increment(n + 1, pose_features, fs_n))   # eq 7-8: F^{n+1} = F^n o dF^{n+1}
            flows.append(flow)
        features, warped_image = warped_source(flow)                     # F_S^N
        image_flow = resize_flow(flow, image_size)
        if warped_image is None:
            warped_image = warp(source_image, image_flow)
        if return_intermediates:
            images.append(warped_image)
        decoded = decode(features) if decode is not None else None
        out = PoseAlignOutput(features=features, flow=flow, image_flow=image_flow, warped_image=warped_image,
                              decoded=decoded, flows=tuple(flows) if return_intermediates else (),
                              warped_images=tuple(images))
        return out if return_dict else out.to_tuple()
