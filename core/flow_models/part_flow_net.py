"""Structure-aware part flow (Tang et al., "Structure-aware Person Image Generation with Pose Decomposition
and Semantic Correlation", AAAI 2021): :class:`PartFlowNet`, and :class:`PartFlowEstimator`, its adapter to
FlowWarp's :class:`~..warp.flowwarp.FlowEstimator` interface.

The network (paper eqs 1-8; the losses, eqs 9-14, and the two-stage training are in
:mod:`.part_flow_losses`):

1. **Part-based flow generation** (eq 1). The 18 joint heatmaps of each pose are split into sub-poses
   (head, torso, leg: :data:`~..body.parts.SUB_POSES`, the project's one definition). One flow generator per
   sub-pose takes ``cat(P_s^part, P_t^part)`` and outputs a backward flow ``W^part`` and a visibility map
   ``V^part`` in [0, 1] on the feature grid.
2. **Local warping** (eqs 2-5). Each part image is cropped from the source, encoded to ``F_s^part``, warped
   by ``W^part`` with bilinear sampling (eq 2), blended with the target sub-pose features ``F_pose^part`` by
   ``V^part`` (eq 3), then passed through a hybrid dilated convolution block (rates {1, 2}; eqs 4-5).
3. **Global fusion** (eqs 6-8). The warped part features and the global target-pose features are fused
   (eq 6), a pyramid non-local block relates regions pooled at 4x4 and 6x6 (eq 7), a decoder of transposed
   convolutions makes the image (eq 8).

Conventions. Images are ``(B, 3, H, W)`` in 0..1 (mapped to -1..1 inside; the decoder ends in tanh and its
output is mapped back). Poses are GFLA-style Gaussian heatmaps ``(B, 18, H, W)``
(:func:`~..pose.render.render_heatmaps`). Flows follow :mod:`..flow`: backward, ``(dx, dy)`` in pixels of the
grid they live on, here the FEATURE grid (image size / 2**num_downsample); :func:`~..flow.resize_flow`
brings them to image pixels.

Choices where the paper is vague (it defers architecture details to a supplement we do not have):

* **Part crops.** A "part image" is the source image multiplied by the union of the sub-pose's body-part
  masks (:func:`~..pose.render.render_part_masks` with ``part_mask_radius_scale``, parts from
  :data:`~..body.parts.SUB_POSE_PARTS`), kept on the full canvas. We mask rather than cut out bounding boxes so
  that every part shares one coordinate frame: each part flow is then an ordinary flow on the image grid,
  with no per-part box offsets or rescaling, and part boxes of very different sizes (head vs legs) need no
  resizing to a common encoder input. Without masks (``source_part_masks=None``) every part sees the whole
  image.
* **Flow generators** see only the two sub-poses, as eq 1 says (no image). Each is a U-Net (stride-2 convs
  down to ``image / 2**flow_num_downsample``, nearest upsampling with skip connections back up to the
  feature grid; widths ``flow_base_channels * 2**i`` capped at ``flow_max_channels``), like GFLA's flow
  estimator; flow head linear, visibility head sigmoid.
* **Encoders.** Separate encoders per part for the part images (``F_s^part``) and for the target sub-poses
  (``F_pose^part``), and one for the whole target pose (``F_pose^global``); each is a 3x3 stem and
  ``num_downsample`` stride-2 convs. Warping pads with zeros (content from outside the source is absent).
* **HDC block**: per part, sequential conv3x3-norm-LeakyReLU with dilations ``hdc_rates`` (no residual;
  the paper names none).
* **Fusion** (eq 6): a 1x1 conv on the concatenation, then ``fusion_layers - 1`` conv3x3 blocks.
* **Pyramid non-local block** (eq 7): for each scale ``s`` the fused features are adaptively max-pooled to
  ``s x s`` ("select the most significant representation for each region"); on the pooled map the
  standard non-local operation runs with ``R = softmax(theta(x)^T phi(x))`` (``s^2 x s^2`` relation map,
  as the paper visualises) and ``y = g(x) R^T``; each ``y`` is mapped back by a 1x1 conv ``W_s``,
  upsampled bilinearly to the feature grid, and added to the input (residual as in Wang et al.; ``W_s``
  starts at zero so the block starts as the identity, their initialisation).
* **Decoder** (eq 8): ``decoder_res_blocks`` residual blocks, then ``num_downsample`` transposed convs
  (4x4, stride 2), a 3x3 conv to RGB and tanh.
* Norm: instance norm by default (GFLA's generator), LeakyReLU(0.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..flow import resize_flow, warp
from ..pose.keypoints import NUM_JOINTS, Pose
from ..body.parts import BODY_PARTS, SUB_POSE_PARTS, SUB_POSES
from ..pose.render import render_heatmaps, render_part_masks

__all__ = [
    "PartFlowNet", "PartFlowNetOutput", "PartFlowGenerator", "HybridDilatedBlock", "PyramidNonLocalBlock",
    "PartFlowEstimator", "sub_pose_masks", "pose_inputs", "make_pair", "collate_pairs",
    "PART_FLOW_PAPER_CONFIG", "PART_FLOW_MARKET_CONFIG", "PART_FLOW_TINY_CONFIG",
]

_PART_INDEX = {p.name: k for k, p in enumerate(BODY_PARTS)}

# Sizes. The paper trains at 256x256 (DeepFashion) and 128x64 (Market-1501) and gives no widths; ours follow
# GFLA's generator (64 -> 256 channels, features at 1/4, flow estimator 32 -> 256).
PART_FLOW_PAPER_CONFIG: dict = dict(image_size=[256, 256], base_channels=64, feature_channels=256,
                                    num_downsample=2, flow_base_channels=32, flow_max_channels=256,
                                    flow_num_downsample=5, fusion_layers=2, decoder_res_blocks=2,
                                    pnb_scales=[4, 6], hdc_rates=[1, 2], heatmap_sigma=6.0)
PART_FLOW_MARKET_CONFIG: dict = dict(PART_FLOW_PAPER_CONFIG, image_size=[128, 64], flow_num_downsample=4,
                                     heatmap_sigma=3.0)
PART_FLOW_TINY_CONFIG: dict = dict(image_size=[32, 32], base_channels=8, feature_channels=16, num_downsample=2,
                                   flow_base_channels=8, flow_max_channels=16, flow_num_downsample=3,
                                   fusion_layers=1, decoder_res_blocks=1, pnb_scales=[4, 6], hdc_rates=[1, 2],
                                   pnb_inter_channels=8, heatmap_sigma=1.5)


# ------------------------------------------------------------------------------------------------ blocks

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm: expected 'instance', 'batch' or 'none', got {kind!r}")


def _conv_block(cin: int, cout: int, norm: str, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation), _norm(norm, cout),
                         nn.LeakyReLU(0.2))


class _Encoder(nn.Module):
    """3x3 stem, then ``num_down`` stride-2 conv blocks; widths double from ``base`` up to ``out``."""

    def __init__(self, cin: int, base: int, out: int, num_down: int, norm: str):
        super().__init__()
        widths = [min(base * 2 ** k, out) for k in range(num_down)] + [out]
        layers = [_conv_block(cin, widths[0], norm)]
        for k in range(num_down):
            layers.append(_conv_block(widths[k], widths[k + 1], norm, stride=2))
        if num_down == 0 and widths[0] != out:
            layers.append(_conv_block(widths[0], out, norm))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PartFlowGenerator(nn.Module):
    """``G_flow^part`` (eq 1): sub-poses ``(P_s, P_t)`` -> flow ``W`` (B, 2, h, w) and visibility ``V`` (B, 1, h, w)
    on the grid ``image / 2**out_level``. A U-Net over ``num_down`` levels (see the module doc)."""

    def __init__(self, in_channels: int, base: int, max_channels: int, num_down: int, out_level: int, norm: str):
        super().__init__()
        if num_down < out_level:
            raise ValueError(f"flow_num_downsample ({num_down}) must be >= num_downsample ({out_level})")
        widths = [min(base * 2 ** k, max_channels) for k in range(num_down + 1)]
        self.stem = _conv_block(in_channels, widths[0], norm)
        self.down = nn.ModuleList(_conv_block(widths[k], widths[k + 1], norm, stride=2) for k in range(num_down))
        # Up path: from level num_down to out_level, each step upsamples and fuses the skip of that level.
        self.up = nn.ModuleList(_conv_block(widths[k + 1] + widths[k], widths[k], norm)
                                for k in range(num_down - 1, out_level - 1, -1))
        self.flow_head = nn.Conv2d(widths[out_level], 2, 3, padding=1)
        self.visibility_head = nn.Conv2d(widths[out_level], 1, 3, padding=1)
        self.out_level = out_level

    def forward(self, source_pose: torch.Tensor, target_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(torch.cat((source_pose, target_pose), dim=1))
        skips = [x]
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        for k, layer in zip(range(len(self.down) - 1, self.out_level - 1, -1), self.up):
            skip = skips[k]
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = layer(torch.cat((x, skip), dim=1))
        return self.flow_head(x), torch.sigmoid(self.visibility_head(x))  # eq 1: W, V in [0, 1]


class HybridDilatedBlock(nn.Module):
    """``G_hdc`` (eqs 4-5): sequential 3x3 convolutions with dilation rates ``rates`` (paper: {1, 2}); a conv with
    rate r computes ``y(m, n) = sum_ij x(m + r i, n + r j) w(i, j)`` (eq 4)."""

    def __init__(self, channels: int, rates: Sequence[int], norm: str):
        super().__init__()
        self.net = nn.Sequential(*[_conv_block(channels, channels, norm, dilation=int(r)) for r in rates])

    def forward(self, x):
        return self.net(x)


class PyramidNonLocalBlock(nn.Module):
    """``G_pnb`` (eq 7): non-local operations on adaptively max-pooled ``s x s`` maps, one per scale, mapped
    back to the input grid and added to it (see the module doc)."""

    def __init__(self, channels: int, inter_channels: int, scales: Sequence[int]):
        super().__init__()
        self.scales = [int(s) for s in scales]
        n = len(self.scales)
        self.theta = nn.ModuleList(nn.Conv2d(channels, inter_channels, 1) for _ in range(n))
        self.phi = nn.ModuleList(nn.Conv2d(channels, inter_channels, 1) for _ in range(n))
        self.g = nn.ModuleList(nn.Conv2d(channels, inter_channels, 1) for _ in range(n))
        self.out = nn.ModuleList(nn.Conv2d(inter_channels, channels, 1) for _ in range(n))
        for conv in self.out:  # Wang et al.: the block starts as the identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, return_relations: bool = False):
        out = x
        relations = []
        for s, theta, phi, g, w_out in zip(self.scales, self.theta, self.phi, self.g, self.out):
            p = F.adaptive_max_pool2d(x, s)                        # pyramid pooling: the strongest response per region
            q, k, v = theta(p).flatten(2), phi(p).flatten(2), g(p).flatten(2)  # (B, Ci, s*s)
            r = torch.softmax(q.transpose(1, 2) @ k, dim=-1)       # eq 7: R = softmax(theta(x)^T phi(x)), (B, N, N)
            y = (v @ r.transpose(1, 2)).view(x.shape[0], -1, s, s)  # y_i = sum_j R_ij g(x_j)
            out = out + F.interpolate(w_out(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
            relations.append(r)
        return (out, relations) if return_relations else out


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.net = nn.Sequential(_conv_block(channels, channels, norm),
                                 nn.Conv2d(channels, channels, 3, padding=1), _norm(norm, channels))

    def forward(self, x):
        return x + self.net(x)


# ------------------------------------------------------------------------------------------------- model

@dataclass
class PartFlowNetOutput(BaseOutput):
    """``image`` (B, 3, H, W) in 0..1; ``flows`` (B, P, 2, h, w) backward flows on the feature grid in feature
    pixels; ``visibility`` (B, P, 1, h, w) in [0, 1]; P follows ``config.sub_poses``."""

    image: torch.Tensor
    flows: torch.Tensor
    visibility: torch.Tensor


class PartFlowNet(ModelMixin, ConfigMixin):
    """The structure-aware part-flow generator (eqs 1-8). See the module doc for the layout and our choices.

    Config: ``sub_poses`` (name -> joint indices, default :data:`~..body.parts.SUB_POSES`), ``sub_pose_parts``
    (name -> body-part names for the crop masks, default :data:`~..body.parts.SUB_POSE_PARTS`) and
    ``part_names`` (their order: flows, masks and the fusion input follow it) are stored in the config so a
    checkpoint does not depend on later edits of the part tables. ``image_size`` ``[H, W]`` is the
    training resolution (the adapter resizes to it); ``heatmap_sigma`` and ``part_mask_radius_scale`` say how
    pose inputs are rendered at that size. The rest are widths and depths; :data:`PART_FLOW_PAPER_CONFIG`
    (256x256) and :data:`PART_FLOW_TINY_CONFIG` (tests) are two points of the range.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_joints: int = NUM_JOINTS, image_channels: int = 3,
                 sub_poses: Mapping[str, Sequence[int]] | None = None,
                 sub_pose_parts: Mapping[str, Sequence[str]] | None = None,
                 part_names: Sequence[str] | None = None,
                 image_size: Sequence[int] = (256, 256), heatmap_sigma: float = 6.0,
                 part_mask_radius_scale: float = 1.25,
                 base_channels: int = 64, feature_channels: int = 256, num_downsample: int = 2,
                 flow_base_channels: int = 32, flow_max_channels: int = 256, flow_num_downsample: int = 5,
                 hdc_rates: Sequence[int] = (1, 2), fusion_layers: int = 2,
                 pnb_scales: Sequence[int] = (4, 6), pnb_inter_channels: int | None = None,
                 decoder_res_blocks: int = 2, norm: str = "instance"):
        super().__init__()
        sub_poses = {k: [int(j) for j in v] for k, v in (sub_poses or SUB_POSES).items()}
        if sub_pose_parts is None:
            sub_pose_parts = {k: list(SUB_POSE_PARTS.get(k, ())) for k in sub_poses}
        sub_pose_parts = {k: [str(p) for p in v] for k, v in sub_pose_parts.items()}
        if set(sub_pose_parts) != set(sub_poses):
            raise ValueError(f"sub_pose_parts: expected the keys of sub_poses {list(sub_poses)}, got "
                             f"{list(sub_pose_parts)}")
        # The part order (of flows, masks and the fusion input) is explicit: JSON configs sort dict keys.
        part_names = list(sub_poses) if part_names is None else [str(n) for n in part_names]
        if sorted(part_names) != sorted(sub_poses):
            raise ValueError(f"part_names: expected an order of the sub_poses {list(sub_poses)}, got {part_names}")
        sub_poses = {n: sub_poses[n] for n in part_names}
        sub_pose_parts = {n: sub_pose_parts[n] for n in part_names}
        for name, joints in sub_poses.items():
            if not joints or any(not 0 <= j < num_joints for j in joints):
                raise ValueError(f"sub_poses[{name!r}]: expected joint indices in 0..{num_joints - 1}, got {joints}")
            unknown = [p for p in sub_pose_parts[name] if p not in _PART_INDEX]
            if unknown:
                raise ValueError(f"sub_pose_parts[{name!r}]: unknown parts {unknown}, expected names from "
                                 f"{list(_PART_INDEX)}")
        if len(image_size) != 2 or any(int(s) % 2 ** num_downsample for s in image_size):
            raise ValueError(f"image_size: expected [H, W] divisible by 2**num_downsample, got {list(image_size)}")
        # Store the resolved tables (not None) so saved configs are self-contained.
        self.register_to_config(sub_poses=sub_poses, sub_pose_parts=sub_pose_parts, part_names=part_names,
                                image_size=[int(s) for s in image_size], hdc_rates=[int(r) for r in hdc_rates],
                                pnb_scales=[int(s) for s in pnb_scales])
        self.part_names = part_names
        self.sub_pose_parts = sub_pose_parts  # in part order
        for name, joints in sub_poses.items():
            self.register_buffer(f"_joints_{name}", torch.tensor(joints, dtype=torch.long), persistent=False)
        c, nd = feature_channels, num_downsample
        self.flow_generators = nn.ModuleDict({
            n: PartFlowGenerator(2 * len(j), flow_base_channels, flow_max_channels, flow_num_downsample, nd, norm)
            for n, j in sub_poses.items()})
        self.part_encoders = nn.ModuleDict({n: _Encoder(image_channels, base_channels, c, nd, norm)
                                            for n in sub_poses})
        self.part_pose_encoders = nn.ModuleDict({n: _Encoder(len(j), base_channels, c, nd, norm)
                                                 for n, j in sub_poses.items()})
        self.hdc = nn.ModuleDict({n: HybridDilatedBlock(c, hdc_rates, norm) for n in sub_poses})
        self.global_pose_encoder = _Encoder(num_joints, base_channels, c, nd, norm)
        fusion = [_conv_block(c * (len(sub_poses) + 1), c, norm, kernel=1)]
        fusion += [_conv_block(c, c, norm) for _ in range(max(fusion_layers, 1) - 1)]
        self.fusion = nn.Sequential(*fusion)
        self.pnb = PyramidNonLocalBlock(c, pnb_inter_channels or max(c // 2, 1), pnb_scales)
        dec: list[nn.Module] = [_ResBlock(c, norm) for _ in range(decoder_res_blocks)]
        ch = c
        for _ in range(nd):
            nxt = max(ch // 2, base_channels)
            dec += [nn.ConvTranspose2d(ch, nxt, 4, 2, 1), _norm(norm, nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        dec += [nn.Conv2d(ch, image_channels, 3, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)

    # ---- pieces (usable on their own: stage 1 needs only the flows)

    def split_pose(self, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sub-poses ``P^part`` of heatmaps ``(B, num_joints, H, W)``."""
        if pose.ndim != 4 or pose.shape[1] != self.config.num_joints:
            raise ValueError(f"pose: expected heatmaps (B, {self.config.num_joints}, H, W), got {tuple(pose.shape)}")
        return {n: pose.index_select(1, getattr(self, f"_joints_{n}")) for n in self.part_names}

    def estimate_flows(self, source_pose: torch.Tensor, target_pose: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq 1 for every part: flows ``(B, P, 2, h, w)`` and visibilities ``(B, P, 1, h, w)``."""
        self._check_size(source_pose, "source_pose")
        self._check_size(target_pose, "target_pose")
        ps, pt = self.split_pose(source_pose), self.split_pose(target_pose)
        outs = [self.flow_generators[n](ps[n], pt[n]) for n in self.part_names]  # eq 1
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)

    def crop_parts(self, source_image: torch.Tensor, source_part_masks: torch.Tensor | None) -> list[torch.Tensor]:
        """Part images: the source masked by each sub-pose's region (see the module doc), in -1..1 with 0
        (mid-grey) outside the part."""
        x = source_image * 2 - 1
        if source_part_masks is None:
            return [x] * len(self.part_names)
        if source_part_masks.shape[1] != len(self.part_names) or source_part_masks.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"source_part_masks: expected (B, {len(self.part_names)}, {x.shape[-2]}, "
                             f"{x.shape[-1]}), got {tuple(source_part_masks.shape)}")
        return [x * source_part_masks[:, k:k + 1] for k in range(len(self.part_names))]

    def _check_size(self, t: torch.Tensor, what: str) -> None:
        m, d = 2 ** self.config.flow_num_downsample, 2 ** self.config.num_downsample
        if t.ndim != 4 or t.shape[-2] % d or t.shape[-1] % d:
            raise ValueError(f"{what}: expected (B, C, H, W) with H, W divisible by {d}, got {tuple(t.shape)}")
        if t.shape[-2] < m or t.shape[-1] < m:
            raise ValueError(f"{what}: {tuple(t.shape[-2:])} is smaller than the flow generator's {m}x{m} bottom")

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor,
                source_part_masks: torch.Tensor | None = None, return_dict: bool = True):
        """``source_image`` (B, 3, H, W) in 0..1, poses (B, 18, H, W) heatmaps, ``source_part_masks``
        (B, P, H, W) in 0..1 (:func:`sub_pose_masks`). Returns :class:`PartFlowNetOutput`."""
        if source_image.ndim != 4 or source_image.shape[1] != self.config.image_channels:
            raise ValueError(f"source_image: expected (B, {self.config.image_channels}, H, W), got "
                             f"{tuple(source_image.shape)}")
        flows, vis = self.estimate_flows(source_pose, target_pose)                     # eq 1
        parts = self.crop_parts(source_image, source_part_masks)
        pt = self.split_pose(target_pose)
        warped = []
        for k, name in enumerate(self.part_names):
            f_s = self.part_encoders[name](parts[k])                                   # F_s^part
            f_sw = warp(f_s, flows[:, k], padding_mode="zeros")                        # eq 2 (bilinear)
            f_pose = self.part_pose_encoders[name](pt[name])                           # F_pose^part
            v = vis[:, k]
            f_swv = v * f_sw + (1 - v) * f_pose                                        # eq 3
            warped.append(self.hdc[name](f_swv))                                       # eqs 4-5
        f_global_pose = self.global_pose_encoder(target_pose)                          # F_pose^global
        fused = self.fusion(torch.cat(warped + [f_global_pose], dim=1))                # eq 6
        f_global = self.pnb(fused)                                                     # eq 7
        image = (self.decoder(f_global) + 1) / 2                                       # eq 8
        if not return_dict:
            return image, flows, vis
        return PartFlowNetOutput(image=image, flows=flows, visibility=vis)

    def flow_generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the flow generators ``G_flow^local`` (trained alone in stage 1)."""
        return list(self.flow_generators.parameters())

    # ---- pose inputs at the model's settings

    def pose_inputs(self, pose: Pose, person: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps ``(18, H, W)`` and sub-pose masks ``(P, H, W)`` of one person, on the pose's canvas, with
        this model's ``heatmap_sigma`` and ``part_mask_radius_scale``."""
        return pose_inputs(pose, self.sub_pose_parts, self.config.heatmap_sigma,
                           self.config.part_mask_radius_scale, person)


# ---------------------------------------------------------------------------------------- input helpers

def sub_pose_masks(pose: Pose, sub_pose_parts: Mapping[str, Sequence[str]] | None = None,
                   radius_scale: float = 1.25, person: int = 0) -> np.ndarray:
    """float32 ``(P, H, W)`` in {0, 1}: for each sub-pose (in the mapping's order; a model's order is
    ``model.sub_pose_parts``) the union of its body parts' regions (:func:`~..pose.render.render_part_masks`,
    radii times ``radius_scale``). A sub-pose whose joints are all missing is empty."""
    sub_pose_parts = SUB_POSE_PARTS if sub_pose_parts is None else sub_pose_parts
    masks = render_part_masks(pose, person, radius_scale)
    out = np.zeros((len(sub_pose_parts), pose.height, pose.width), np.float32)
    for k, parts in enumerate(sub_pose_parts.values()):
        for p in parts:
            out[k] = np.maximum(out[k], masks[_PART_INDEX[p]])
    return out


def pose_inputs(pose: Pose, sub_pose_parts: Mapping[str, Sequence[str]] | None = None, sigma: float = 6.0,
                radius_scale: float = 1.25, person: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(18, H, W)`` and sub-pose masks ``(P, H, W)`` as float tensors."""
    return (torch.from_numpy(render_heatmaps(pose, sigma, person)),
            torch.from_numpy(sub_pose_masks(pose, sub_pose_parts, radius_scale, person)))


def make_pair(model: "PartFlowNet", source_image: np.ndarray | torch.Tensor, source_pose: Pose,
              target_image: np.ndarray | torch.Tensor, target_pose: Pose) -> dict[str, torch.Tensor]:
    """One training example (unbatched) for :mod:`.part_flow_losses`: images ``(3, H, W)`` in 0..1 (from
    ``(H, W, 3)`` arrays or ``(3, H, W)`` tensors), heatmaps and sub-pose masks of both poses rendered with
    ``model``'s settings (:meth:`PartFlowNet.pose_inputs`). Images and poses must already be at the training
    size."""
    def img(x):
        t = torch.as_tensor(np.asarray(x, np.float32)) if not torch.is_tensor(x) else x.float()
        return t.permute(2, 0, 1).contiguous() if t.ndim == 3 and t.shape[-1] == 3 and t.shape[0] != 3 else t

    sp, sm = model.pose_inputs(source_pose)
    tp, tm = model.pose_inputs(target_pose)
    return {"source_image": img(source_image), "target_image": img(target_image), "source_pose": sp,
            "target_pose": tp, "source_part_masks": sm, "target_part_masks": tm}


def collate_pairs(pairs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples from :func:`make_pair` into a batch."""
    return {k: torch.stack([p[k] for p in pairs]) for k in pairs[0]}


# --------------------------------------------------------------------------------------- FlowWarp adapter

def _scale_pose(pose: Pose, height: int, width: int) -> Pose:
    """The pose on a canvas resized to ``height x width`` (pixel centres map as ``(x + 0.5) s - 0.5``)."""
    sx, sy = width / pose.width, height / pose.height
    return pose.map_points(lambda xy: np.stack(((xy[:, 0] + 0.5) * sx - 0.5, (xy[:, 1] + 0.5) * sy - 0.5), 1),
                           width=width, height=height)


class PartFlowEstimator:
    """:class:`~..warp.flowwarp.FlowEstimator` for a :class:`PartFlowNet`: one dense flow for FlowWarp.

    The source photo and both poses are resized (anisotropically, if the aspect differs) to the model's
    ``image_size``; the per-part flows are computed there, brought to the target canvas with
    :func:`~..flow.resize_flow` (source pixels of the ORIGINAL source image), and combined by the target's
    sub-pose masks (rendered on the target canvas with the model's ``part_mask_radius_scale``): where parts
    overlap their flows are averaged with weights ``mask * (V + 0.05)``, so the part whose content is visible
    wins at seams. Outside every part (background) the flow is the plain canvas-to-canvas scaling and the
    visibility is 0: that content is not the person's and is left for FlowWarp's later stages to generate.
    Inside, visibility is the combined ``V`` (binarised at 0.5 when ``binary_visibility``, as FlowWarp's
    ``1 - visibility`` repaint mask expects). Returns CPU tensors. The flows depend on the poses alone
    (eq 1); the source image only fixes the source canvas size.
    """

    flowwarp_method = "structure"  # FlowWarp's method name for this model (core.warp.flowwarp.METHODS)

    def __init__(self, model: PartFlowNet, binary_visibility: bool = True, source_person: int = 0,
                 target_person: int = 0):
        self.model = model.eval()
        self.binary_visibility = binary_visibility
        self.source_person = source_person
        self.target_person = target_person

    @torch.no_grad()
    def estimate(self, source: torch.Tensor, source_pose: Pose, target_pose: Pose
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_tensor(source) or source.ndim != 4 or source.shape[:2] != (1, 3):
            raise ValueError(f"source: expected a (1, 3, H, W) image tensor in 0..1, got "
                             f"{tuple(source.shape) if torch.is_tensor(source) else type(source).__name__}")
        hs, ws = source.shape[-2:]
        if (source_pose.height, source_pose.width) != (hs, ws):
            raise ValueError(f"source_pose: canvas {source_pose.width}x{source_pose.height} does not match the "
                             f"source image {ws}x{hs}")
        model, cfg = self.model, self.model.config
        hm, wm = cfg.image_size
        ht, wt = target_pose.height, target_pose.width
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        sp, sm = model.pose_inputs(_scale_pose(source_pose, hm, wm), self.source_person)
        tp, _ = model.pose_inputs(_scale_pose(target_pose, hm, wm), self.target_person)
        flows, vis = model.estimate_flows(sp[None].to(device, dtype), tp[None].to(device, dtype))
        flows, vis = flows.float().cpu(), vis.float().cpu()
        hf, wf = flows.shape[-2:]
        scale = (hs / hf, ws / wf)
        part_flows = [resize_flow(flows[:, k], (ht, wt), source_scale=scale) for k in range(flows.shape[1])]
        part_vis = [F.interpolate(vis[:, k], size=(ht, wt), mode="bilinear", align_corners=False).clamp(0, 1)
                    for k in range(vis.shape[1])]
        masks = torch.from_numpy(sub_pose_masks(target_pose, model.sub_pose_parts, cfg.part_mask_radius_scale,
                                                self.target_person))[None]  # (1, P, Ht, Wt)
        weights = torch.stack([masks[:, k:k + 1] * (v + 0.05) for k, v in enumerate(part_vis)])  # (P, 1, 1, H, W)
        total = weights.sum(0)
        covered = total > 0
        flow = (weights * torch.stack(part_flows)).sum(0) / total.clamp_min(1e-8)
        background = resize_flow(torch.zeros(1, 2, hf, wf), (ht, wt), source_scale=scale)
        flow = torch.where(covered, flow, background)
        mvis = (masks[:, :, None] * torch.stack(part_vis, 1)).sum(1)
        visibility = torch.where(covered, mvis / masks.sum(1, keepdim=True).clamp_min(1e-8),
                                 torch.zeros_like(mvis)).clamp(0, 1)
        if self.binary_visibility:
            visibility = (visibility >= 0.5).float()
        return flow, visibility
