"""Pose transfer using a single spatial transformation (``shared/papers/single_spatial_transformation.txt``).

Pieces (section 3.1, appendix A; equation numbers in comments refer to the paper):

* :class:`PoseEncoder` M: fully convolutional, Gaussian pose heatmaps ``(B, 18, H, W)`` -> ``z`` ``(B, m, h1, w1)``,
  each channel l2-normalised (paper: 11 conv layers each with BatchNorm, ``m = 35``, ``h1 = w1 = 64``).
* :func:`guided_correlation`: correlation C (eq 1), soft mutual nearest-neighbour filtering gamma (eq 9),
  ``Q = gamma * C`` and the normalisation of eq 2, rasterised to ``(B, h1*w1, h1, w1)``: channel
  ``i * w1 + j`` is the source position ``(i, j)``, the spatial position is the target ``(v, u)``. Computed in
  chunks of target positions (``chunk_size``) so the 4-D tensor is never held more than once;
  :func:`guided_correlation_naive` is the plain version kept as the reference.
* :class:`SingleTransformFlowNet` W = M + correlation + flow head C_l (paper: 6 convs, 128-128-96-64-32-2).
  It returns the flow in the project's convention (:mod:`..flow`) and, given the source image, the warped image.
* :class:`SingleTransformRefiner` R: encoder (2 convs, each followed by a downsampling, to 256 x 64 x 64), the
  features warped by the flow, decoder (6 residual blocks, 2 upsamplings with BatchNorm).
* :class:`SingleTransformEstimator`: the FlowWarp ``FlowEstimator`` adapter (``method="single"``).

Choices where the paper is vague (all configurable where it matters):

* Features: every conv of M is conv3x3 -> BatchNorm -> ReLU, the last one included, so ``C >= 0``: eq 9 divides by
  maxima of C and is only meaningful for non-negative correlations (it comes from NCNet, Rocco et al. 2018, whose
  features are ReLU outputs too). Downsampling: stride 2 in layers ``1 .. encoder_downsample``.
  "Each channel of this map is then normalized using an l2 norm" is read literally by default
  (``feature_norm="channel"``: each channel's ``h1 x w1`` map has unit norm); ``"location"`` normalises each
  ``m``-vector instead (cosine correlation, as NCNet).
* Flow head: conv(k) -> BatchNorm -> ReLU for the hidden layers, a plain conv for the last. Its 2 output channels
  are read as the sampling POSITION ``(x, y)`` in ``grid_sample``'s normalised coordinates of the source
  (``align_corners=False``); the paper's ``s_f`` is likewise a map of positions. A conv on Q cannot know the
  target position, but the channel index of Q is the source position, so absolute positions are what it
  naturally produces. They are converted to the project's backward flow in pixels (:func:`..flow.grid_to_flow`)
  at the correlation resolution (``flow_lowres``, pixels of the ``h1 x w1`` grid) and resized to the input
  resolution with :func:`..flow.resize_flow` (``flow``, pixels of the input image).
* Eq 9 / eq 2 guards: maxima are clamped to ``eps`` (a row or column of C that is all zero gives gamma = 0) and
  eq 2 divides by ``max(norm, eps)``.
* Refiner: encoder conv3x3 -> BatchNorm -> ReLU -> 2x2 average pooling (twice); residual block (Fig. 3 is not in
  our copy) = conv-BN-ReLU-conv-BN plus identity; upsampling = nearest x2 -> conv3x3 -> BatchNorm -> ReLU; a final
  conv3x3 to RGB and ``(tanh + 1) / 2`` so the output is in 0..1 like every image of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..flow import base_coords, coords_to_flow, grid_to_flow, inside_mask, resize_flow, warp
from ..pose.keypoints import NUM_JOINTS, Pose
from ..pose.render import render_heatmaps

__all__ = [
    "PoseEncoder", "FlowHead", "SingleTransformFlowNet", "SingleTransformOutput", "SingleTransformRefiner",
    "SingleTransformEstimator", "correlation", "soft_mutual_nn_filter", "guided_correlation",
    "guided_correlation_naive", "pose_to_heatmaps", "PAPER_FLOW_NET_CONFIG", "PAPER_REFINER_CONFIG",
    "TINY_FLOW_NET_CONFIG", "TINY_REFINER_CONFIG",
]

EPS = 1e-12

# The paper's sizes (appendix A): 256x256 input, 11 conv layers to 35 x 64 x 64, flow head 128-128-96-64-32-2.
# The widths of M's hidden layers are not given; these are our choice.
PAPER_FLOW_NET_CONFIG = dict(
    sample_size=256, pose_channels=NUM_JOINTS,
    encoder_channels=(64, 64, 128, 128, 128, 128, 128, 128, 64, 64, 35), encoder_downsample=2,
    feature_norm="channel", flow_head_channels=(128, 128, 96, 64, 32, 2), flow_head_kernel_size=3,
    correlation_chunk_size=256, heatmap_sigma=6.0,
)
PAPER_REFINER_CONFIG = dict(
    in_channels=3, encoder_channels=(128, 256), num_res_blocks=6, decoder_channels=(128, 64), out_channels=3,
)
# A toy of the same classes (32x32 input, 8x8 correlation) for tests and smoke runs.
TINY_FLOW_NET_CONFIG = dict(
    sample_size=32, pose_channels=NUM_JOINTS, encoder_channels=(8, 16, 16, 8), encoder_downsample=2,
    feature_norm="channel", flow_head_channels=(32, 16, 2), flow_head_kernel_size=3, correlation_chunk_size=16,
    heatmap_sigma=2.0,
)
TINY_REFINER_CONFIG = dict(in_channels=3, encoder_channels=(8, 16), num_res_blocks=1, decoder_channels=(16, 8),
                           out_channels=3)


def _tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


# ------------------------------------------------------------------------------------- correlation (eq 1, 9, 2)

def correlation(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """Eq 1: ``C[b, s, t] = sum_rho z_s(s)[rho] z_t(t)[rho]``, ``(B, h1*w1 sources, h1*w1 targets)``."""
    return torch.bmm(z_s.flatten(2).transpose(1, 2), z_t.flatten(2))


def soft_mutual_nn_filter(corr: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq 9 (appendix A): ``gamma = C / max_{source} C * C / max_{target} C`` on ``C (B, sources, targets)``."""
    max_over_source = corr.amax(dim=1, keepdim=True).clamp_min(eps)  # max_ab C(a, b, v, u), per target
    max_over_target = corr.amax(dim=2, keepdim=True).clamp_min(eps)  # max_ab C(i, j, a, b), per source
    return (corr / max_over_source) * (corr / max_over_target)


def guided_correlation_naive(z_s: torch.Tensor, z_t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """C (eq 1), ``Q = gamma C`` (eq 9), eq 2, all at once: ``(B, h1*w1, h1, w1)``. Reference for the chunked one."""
    b, _, h, w = z_t.shape
    corr = correlation(z_s, z_t)                        # eq 1
    q = soft_mutual_nn_filter(corr, eps) * corr         # eq 9, Q_gamma = gamma C
    q = F.normalize(q, dim=1, eps=eps)                  # eq 2: unit l2 norm over the sources of each target
    return q.reshape(b, -1, h, w)                       # rasterised: channel = source (i, j), pixel = target (v, u)


def _guided_chunk(zs: torch.Tensor, zt_chunk: torch.Tensor, max_over_target: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """Q for one chunk of targets, TRANSPOSED (targets first, so every reduction runs over the contiguous last
    axis): ``zs (B, m, Ns)``, ``zt_chunk (B, m, T)``, ``max_over_target (B, 1, Ns)`` -> ``(B, T, Ns)``."""
    corr = torch.bmm(zt_chunk.transpose(1, 2), zs)                      # eq 1, (B, T, Ns)
    max_over_source = corr.amax(dim=2, keepdim=True).clamp_min(eps)    # complete: every source is in the chunk
    q = corr * (corr / max_over_source) * (corr / max_over_target.clamp_min(eps))  # eq 9, gamma C
    return F.normalize(q, dim=2, eps=eps)                               # eq 2


def guided_correlation(z_s: torch.Tensor, z_t: torch.Tensor, chunk_size: int | None = 256,
                       eps: float = EPS) -> torch.Tensor:
    """:func:`guided_correlation_naive` computed ``chunk_size`` target positions at a time (see
    :func:`_guided_correlation_fp32`), in float32 (or float64) with autocast off: eq 9 and eq 2 divide by maxima and norms
    clamped at ``eps`` (1e-12), which is 0 in float16, so a feature vector that is all zero (ReLU) gave 0/0 and a
    NaN flow under fp16 mixed precision. The result has the inputs' dtype."""
    low = (torch.float16, torch.bfloat16)
    if z_s.dtype not in low and z_t.dtype not in low and not torch.is_autocast_enabled(z_s.device.type):
        return _guided_correlation_fp32(z_s, z_t, chunk_size, eps)  # float32 / float64 as given
    with torch.autocast(z_s.device.type, enabled=False):
        q = _guided_correlation_fp32(z_s.float(), z_t.float(), chunk_size, eps)
    return q.to(z_s.dtype)


def _guided_correlation_fp32(z_s: torch.Tensor, z_t: torch.Tensor, chunk_size: int | None = 256,
                             eps: float = EPS) -> torch.Tensor:
    """:func:`guided_correlation_naive` computed ``chunk_size`` target positions at a time.

    Eq 9 needs, for each source position, the maximum of C over ALL targets. A first pass finds where it is
    (without autograd, chunk by chunk) and the value is recomputed as one dot product per source, which carries the
    same gradient as ``amax`` (to the arg-max; ties aside). The second pass computes C, gamma C and eq 2 for one
    chunk of targets at a time (the maxima over sources are complete inside a chunk) and writes it into the output.
    When autograd is on, each chunk is checkpointed, so training holds one chunk's intermediates, not the whole
    4-D tensor's. Peak memory: the output ``(B, Ns, h1, w1)`` plus a few ``(B, Ns, chunk_size)`` tensors.
    ``chunk_size=None`` (or >= h1*w1) runs the naive version.
    """
    if z_s.shape != z_t.shape or z_s.ndim != 4:
        raise ValueError(f"z_s, z_t: expected two tensors (B, m, h1, w1) of one shape, got {tuple(z_s.shape)} "
                         f"and {tuple(z_t.shape)}")
    b, m, h, w = z_t.shape
    n = h * w
    if not chunk_size or chunk_size >= n:
        return guided_correlation_naive(z_s, z_t, eps)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive number of target positions or None, got {chunk_size}")
    zs, zt = z_s.flatten(2), z_t.flatten(2)
    # Pass 1: arg-max over targets for every source.
    with torch.no_grad():
        best = zs.new_full((b, n), -math.inf)
        arg = torch.zeros((b, n), dtype=torch.long, device=zs.device)
        for t0 in range(0, n, chunk_size):
            value, idx = torch.bmm(zs.transpose(1, 2), zt[:, :, t0:t0 + chunk_size]).max(dim=2)
            better = value > best
            best = torch.where(better, value, best)
            arg = torch.where(better, idx + t0, arg)
    best_zt = torch.gather(zt, 2, arg[:, None].expand(b, m, n))        # (B, m, Ns): z_t at each source's arg-max
    max_over_target = (zs * best_zt).sum(dim=1)[:, None, :]            # (B, 1, Ns), differentiable
    # Pass 2: chunk by chunk into the output.
    grad = torch.is_grad_enabled() and (z_s.requires_grad or z_t.requires_grad)
    out = zs.new_empty((b, n, n))
    for t0 in range(0, n, chunk_size):
        zt_chunk = zt[:, :, t0:t0 + chunk_size]
        if grad:
            q = torch.utils.checkpoint.checkpoint(_guided_chunk, zs, zt_chunk, max_over_target, eps,
                                                  use_reentrant=False)
        else:
            q = _guided_chunk(zs, zt_chunk, max_over_target, eps)
        out[:, :, t0:t0 + chunk_size] = q.transpose(1, 2)
        del q
    return out.view(b, n, h, w)


# ------------------------------------------------------------------------------------------------ modules

def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PoseEncoder(nn.Module):
    """M: ``len(channels)`` conv3x3-BN-ReLU layers; layers ``1..downsample`` have stride 2; output l2-normalised."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], downsample: int, feature_norm: str):
        super().__init__()
        if feature_norm not in ("channel", "location"):
            raise ValueError(f"feature_norm: expected 'channel' or 'location', got {feature_norm!r}")
        if not 0 <= downsample < len(channels):
            raise ValueError(f"encoder_downsample: expected 0..{len(channels) - 1} (layers 1..n have stride 2), "
                             f"got {downsample}")
        layers, cin = [], in_channels
        for i, cout in enumerate(channels):
            layers.append(_conv_bn_relu(cin, cout, 3, 2 if 1 <= i <= downsample else 1))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_norm = feature_norm

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        z = self.layers(pose)
        if self.feature_norm == "channel":   # each channel's h1 x w1 map has unit l2 norm (appendix A)
            return F.normalize(z.flatten(2), dim=2, eps=EPS).view_as(z)
        return F.normalize(z, dim=1, eps=EPS)


class FlowHead(nn.Module):
    """C_l: convs over the rasterised Q; hidden layers conv-BN-ReLU, the last a plain conv to 2 channels."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel_size: int):
        super().__init__()
        if not channels or channels[-1] != 2:
            raise ValueError(f"flow_head_channels: expected widths ending in 2 (the flow), got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"flow_head_kernel_size: expected an odd positive size, got {kernel_size}")
        layers, cin = [], in_channels
        for cout in channels[:-1]:
            layers.append(_conv_bn_relu(cin, cout, kernel_size))
            cin = cout
        layers.append(nn.Conv2d(cin, 2, kernel_size, 1, kernel_size // 2))
        self.layers = nn.Sequential(*layers)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.layers(q)


@dataclass
class SingleTransformOutput:
    """``flow``: ``(B, 2, H, W)`` backward flow in source pixels on the input grid (project convention).
    ``flow_lowres``: the same at the correlation resolution ``h1 x w1``, in pixels of that grid (what eq 7 compares
    with ``s_f``). ``grid_lowres``: the head's raw output, normalised source positions ``(B, h1, w1, 2)``.
    ``warped``: the source image warped by ``flow`` (when a source image was given)."""

    flow: torch.Tensor
    flow_lowres: torch.Tensor
    grid_lowres: torch.Tensor
    warped: torch.Tensor | None = None


class SingleTransformFlowNet(ModelMixin, ConfigMixin):
    """Warping module W (section 3.1.1): ``W(p_s, p_t) -> f_{s,t}``; see the module docstring.

    Inputs are Gaussian heatmaps ``(B, pose_channels, sample_size, sample_size)`` (:func:`pose_to_heatmaps`,
    sigma ``heatmap_sigma`` pixels); the correlation is ``h1 = sample_size / 2**encoder_downsample`` square, and the
    flow head's first layer has ``h1 * h1`` input channels, so the input size is fixed by the config.
    ``PAPER_FLOW_NET_CONFIG`` is the paper's model; tests build toys from the same class.
    """

    @register_to_config
    def __init__(self, sample_size: int = 256, pose_channels: int = NUM_JOINTS,
                 encoder_channels: tuple[int, ...] = PAPER_FLOW_NET_CONFIG["encoder_channels"],
                 encoder_downsample: int = 2, feature_norm: str = "channel",
                 flow_head_channels: tuple[int, ...] = (128, 128, 96, 64, 32, 2), flow_head_kernel_size: int = 3,
                 correlation_chunk_size: int | None = 256, heatmap_sigma: float = 6.0):
        super().__init__()
        encoder_channels, flow_head_channels = _tuple(encoder_channels), _tuple(flow_head_channels)
        if sample_size % (2 ** encoder_downsample):
            raise ValueError(f"sample_size {sample_size} is not divisible by 2**encoder_downsample "
                             f"({2 ** encoder_downsample})")
        self.corr_size = sample_size // 2 ** encoder_downsample
        self.encoder = PoseEncoder(pose_channels, encoder_channels, encoder_downsample, feature_norm)
        self.flow_head = FlowHead(self.corr_size ** 2, flow_head_channels, flow_head_kernel_size)
        self.chunk_size = correlation_chunk_size

    def _check(self, pose: torch.Tensor, what: str) -> None:
        s, c = self.config.sample_size, self.config.pose_channels
        if pose.ndim != 4 or tuple(pose.shape[1:]) != (c, s, s):
            raise ValueError(f"{what}: expected heatmaps (B, {c}, {s}, {s}) (this model's sample_size), got "
                             f"{tuple(pose.shape)}")

    def guided_correlation(self, source_pose: torch.Tensor, target_pose: torch.Tensor,
                           chunk_size: int | None | str = "config") -> torch.Tensor:
        """Steps 1-3: ``Q`` rasterised, ``(B, h1*w1, h1, w1)``."""
        z = self.encoder(torch.cat([source_pose, target_pose]))       # one pass: BatchNorm sees both poses
        z_s, z_t = z.chunk(2)
        return guided_correlation(z_s, z_t, self.chunk_size if chunk_size == "config" else chunk_size)

    def forward(self, source_pose: torch.Tensor, target_pose: torch.Tensor,
                source_image: torch.Tensor | None = None) -> SingleTransformOutput:
        self._check(source_pose, "source_pose")
        self._check(target_pose, "target_pose")
        q = self.guided_correlation(source_pose, target_pose)
        grid = self.flow_head(q).permute(0, 2, 3, 1)                    # step 4: normalised (x, y) positions
        h1 = self.corr_size
        flow_lowres = grid_to_flow(grid, (h1, h1))                      # pixels of the h1 x w1 grid
        s = self.config.sample_size
        flow = resize_flow(flow_lowres, (s, s))                         # pixels of the input image
        warped = None
        if source_image is not None:
            if source_image.ndim != 4 or tuple(source_image.shape[-2:]) != (s, s):
                raise ValueError(f"source_image: expected (B, C, {s}, {s}), got {tuple(source_image.shape)}")
            warped = warp(source_image, flow)                           # step 5: direct sampling
        return SingleTransformOutput(flow, flow_lowres, grid, warped)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


class SingleTransformRefiner(ModelMixin, ConfigMixin):
    """Refinement network R (section 3.2): ``y_o = D_ref(T(E_ref(I_s), f_{s,t}))``, images in 0..1.

    The encoder halves the resolution once per entry of ``encoder_channels`` (paper: 256x256 -> 256 x 64 x 64),
    the flow (on the image grid, project convention) is resized to the feature grid and warps the features, and the
    decoder has ``num_res_blocks`` residual blocks and one upsampling per entry of ``decoder_channels``.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, encoder_channels: tuple[int, ...] = (128, 256),
                 num_res_blocks: int = 6, decoder_channels: tuple[int, ...] = (128, 64), out_channels: int = 3):
        super().__init__()
        encoder_channels, decoder_channels = _tuple(encoder_channels), _tuple(decoder_channels)
        if len(decoder_channels) != len(encoder_channels):
            raise ValueError(f"decoder_channels: expected one upsampling per encoder downsampling "
                             f"({len(encoder_channels)}), got {decoder_channels}")
        enc, cin = [], in_channels
        for cout in encoder_channels:
            enc += [_conv_bn_relu(cin, cout), nn.AvgPool2d(2)]
            cin = cout
        self.encoder = nn.Sequential(*enc)
        dec = [ResidualBlock(cin) for _ in range(num_res_blocks)]
        for cout in decoder_channels:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_bn_relu(cin, cout)]
            cin = cout
        dec.append(nn.Conv2d(cin, out_channels, 3, 1, 1))
        self.decoder = nn.Sequential(*dec)

    def forward(self, source_image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        factor = 2 ** len(self.config.encoder_channels)
        h, w = source_image.shape[-2:]
        if h % factor or w % factor or tuple(flow.shape[-2:]) != (h, w):
            raise ValueError(f"source_image {tuple(source_image.shape)} and flow {tuple(flow.shape)}: expected one "
                             f"H x W, divisible by {factor}")
        theta = self.encoder(source_image * 2 - 1)                      # theta_s = E_ref(I_s)
        eta = warp(theta, resize_flow(flow, tuple(theta.shape[-2:])))   # eta_s = T(theta_s, f_st)
        return (torch.tanh(self.decoder(eta)) + 1) / 2                  # y_o = D_ref(eta_s)


# ---------------------------------------------------------------------------------------- pose input, adapter

def _contain(height: int, width: int, size: int) -> tuple[float, float, float]:
    """Uniform 'contain' fit of a canvas into a ``size`` square: ``(scale, offset_x, offset_y)``;
    ``x_model = (x + 0.5) * scale - 0.5 + offset_x``."""
    s = size / max(height, width)
    return s, (size - width * s) / 2, (size - height * s) / 2


def pose_to_heatmaps(pose: Pose, size: int, sigma: float = 6.0, person: int = 0) -> torch.Tensor:
    """The model's pose input: ``pose`` fitted (uniform scale, centred) into a ``size`` square, Gaussian heatmaps
    (:func:`..pose.render.render_heatmaps`, ``sigma`` in pixels of the square) -> ``(18, size, size)``."""
    s, ox, oy = _contain(pose.height, pose.width, size)
    off = np.array([ox, oy])
    fitted = pose.map_points(lambda xy: (xy + 0.5) * s - 0.5 + off, size, size)
    return torch.from_numpy(render_heatmaps(fitted, sigma, person))


class SingleTransformEstimator:
    """FlowWarp ``FlowEstimator`` (``core.warp.flowwarp``) backed by a :class:`SingleTransformFlowNet`.

    Both poses are fitted into the model's square (uniform scale, centred: body proportions are kept), the flow
    is computed there and mapped back to the target canvas in source-canvas pixels. The method has no visibility
    output of its own (it generates hidden parts by warping too); ``visibility`` is 1 where the flow samples
    inside the source canvas. :meth:`generate` also runs the refiner when one is loaded.
    """

    flowwarp_method = "single"  # FlowWarp's method name for this model (core.warp.flowwarp.METHODS)

    def __init__(self, flow_net: SingleTransformFlowNet, refiner: SingleTransformRefiner | None = None,
                 source_person: int = 0, target_person: int = 0, device: str | torch.device = "cpu"):
        self.flow_net = flow_net.to(device).eval()
        self.refiner = refiner.to(device).eval() if refiner is not None else None
        self.source_person, self.target_person = source_person, target_person
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs
                        ) -> "SingleTransformEstimator":
        """A folder saved by ``save_pretrained``: either the flow net itself, or ``flow_net/`` (+ ``refiner/``)."""
        path = Path(path)
        if (path / "flow_net" / "config.json").is_file():
            flow_net = SingleTransformFlowNet.from_pretrained(path / "flow_net")
            refiner = (SingleTransformRefiner.from_pretrained(path / "refiner")
                       if (path / "refiner" / "config.json").is_file() else None)
        elif (path / "config.json").is_file():
            flow_net, refiner = SingleTransformFlowNet.from_pretrained(path), None
        else:
            raise FileNotFoundError(f"{path}: expected a folder with config.json (a flow net) or flow_net/config.json")
        return cls(flow_net, refiner, device=device, **kwargs)

    def _heatmaps(self, pose: Pose, person: int) -> torch.Tensor:
        cfg = self.flow_net.config
        return pose_to_heatmaps(pose, cfg.sample_size, cfg.heatmap_sigma, person)[None].to(self.device)

    def _model_flow(self, source_pose: Pose, target_pose: Pose) -> torch.Tensor:
        with torch.no_grad():
            return self.flow_net(self._heatmaps(source_pose, self.source_person),
                                 self._heatmaps(target_pose, self.target_person)).flow.cpu()

    def _canvas_positions(self, target_size: tuple[int, int]) -> torch.Tensor:
        """``(1, 2, Ht, Wt)``: where each pixel of the target canvas lies on the model's square (pixels)."""
        s, ox, oy = _contain(*target_size, self.flow_net.config.sample_size)
        xy = base_coords(*target_size)
        return torch.stack(((xy[:, 0] + 0.5) * s - 0.5 + ox, (xy[:, 1] + 0.5) * s - 0.5 + oy), dim=1)

    def _to_canvas(self, model_map: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
        """Sample a map on the model square at the positions of the target canvas's pixels (border padding)."""
        pos = self._canvas_positions(target_size)
        return warp(model_map, coords_to_flow(pos), padding_mode="border")

    def estimate(self, source: torch.Tensor, source_pose: Pose, target_pose: Pose
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        hs, ws = source_pose.height, source_pose.width
        size = (target_pose.height, target_pose.width)
        # Offsets are interpolated, not absolute positions, so clamping at the square's border does not bend them.
        coords = self._canvas_positions(size) + self._to_canvas(self._model_flow(source_pose, target_pose), size)
        s, ox, oy = _contain(hs, ws, self.flow_net.config.sample_size)   # model square -> source canvas
        coords = torch.stack(((coords[:, 0] + 0.5 - ox) / s - 0.5, (coords[:, 1] + 0.5 - oy) / s - 0.5), dim=1)
        flow = coords_to_flow(coords)
        return flow, inside_mask(flow, (hs, ws))

    def generate(self, source: torch.Tensor, source_pose: Pose, target_pose: Pose) -> torch.Tensor:
        """The refiner's image ``y_o`` on the target canvas, ``(1, 3, Ht, Wt)`` in 0..1 (needs a refiner)."""
        if self.refiner is None:
            raise ValueError("generate: this estimator has no refiner; load a checkpoint with refiner/")
        size = self.flow_net.config.sample_size
        s, ox, oy = _contain(source_pose.height, source_pose.width, size)
        xy = base_coords(size, size)
        pos = torch.stack(((xy[:, 0] + 0.5 - ox) / s - 0.5, (xy[:, 1] + 0.5 - oy) / s - 0.5), dim=1)
        fitted = warp(source.float().cpu(), pos - xy, padding_mode="zeros")
        flow = self._model_flow(source_pose, target_pose)
        with torch.no_grad():
            y = self.refiner(fitted.to(self.device), flow.to(self.device)).cpu()
        return self._to_canvas(y, (target_pose.height, target_pose.width)).clamp(0, 1)
