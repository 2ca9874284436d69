"""Losses of the learned flow estimators.

Sections (one per paper; each engineer owns one, add yours in its own section):

* Shared: :class:`VGG19Features`, a feature extractor with torchvision's VGG-19 layer layout that loads a
  torchvision ``vgg19`` state dict from a file the user has (no weights are bundled; tests use random, narrow
  ones). It follows the ``FeatureExtractor`` protocol of :mod:`.part_flow_losses`:
  ``images (B, 3, H, W) in 0..1 -> {layer name: (B, C, h, w)}``.
* Single spatial transformation (:mod:`.single_transform`): multi-scale perceptual loss (eq 5), pose-conditioned
  adversarial loss (eq 6) with a patch discriminator, affine-preserving loss (eq 7) with random upright affine
  transforms and their inverse flow ``s_f``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..flow import affine_to_flow, resize_flow, warp
from ..pose.keypoints import NUM_JOINTS

__all__ = [
    "VGG19Features", "VGG19_LAYOUT", "vgg19_layer_index", "vgg19_min_size",
    # single spatial transformation
    "MultiScalePerceptualLoss", "PoseConditionedDiscriminator", "adversarial_generator_loss",
    "adversarial_discriminator_loss", "AffineRange", "random_upright_affine", "invert_affine", "make_affine_task",
    "affine_preserving_loss", "SINGLE_LAMBDA1", "SINGLE_LAMBDA2",
]


# ======================================================================================= shared: VGG-19 features

# torchvision's vgg19().features: numbers are 3x3 convs (each followed by a ReLU), "M" a 2x2 max-pool.
VGG19_LAYOUT: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                       512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layer_index(name: str) -> int:
    """Index in ``vgg19().features`` of ``"relu{block}_{k}"`` / ``"conv{block}_{k}"`` / ``"pool{block}"``."""
    m = re.fullmatch(r"(relu|conv)([1-5])_([1-4])|pool([1-5])", name)
    if not m:
        raise ValueError(f"layer {name!r}: expected a VGG-19 name such as relu3_1, conv4_2 or pool2")
    idx, block, k = 0, 1, 0
    for item in VGG19_LAYOUT:
        if item == "M":
            if m.group(4) and int(m.group(4)) == block:
                return idx
            block, k, idx = block + 1, 0, idx + 1
            continue
        k += 1
        if m.group(1) and int(m.group(2)) == block and int(m.group(3)) == k:
            return idx + (1 if m.group(1) == "relu" else 0)
        idx += 2
    raise ValueError(f"layer {name!r}: VGG-19 has no such layer (blocks 1-2 have 2 convs, 3-5 have 4)")


def vgg19_min_size(name: str) -> int:
    """The smallest image side that reaches layer ``name`` with a non-empty map: 2 ** (2x2 max-pools up to it)."""
    target, idx, pools = vgg19_layer_index(name), 0, 0
    for item in VGG19_LAYOUT:
        if idx > target:
            break
        pools += item == "M"
        idx += 1 if item == "M" else 2
    return 2 ** pools


class VGG19Features(nn.Module):
    """VGG-19's convolutional part, laid out as torchvision's ``vgg19().features`` (same module indices, so its
    state dict loads), returning the requested layers as a dict.

    Input: images in 0..1 (normalised with the ImageNet mean/std inside). ``width_divisor`` divides every width
    (a narrow random copy for tests; a torchvision state dict needs 1). The network stops at the deepest requested
    layer. Frozen: no gradients for its parameters, always in eval mode (it has no BatchNorm anyway).
    """

    def __init__(self, layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                 width_divisor: int = 1):
        super().__init__()
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers: expected a non-empty list of VGG-19 layer names, got {layers!r}")
        self.layers = tuple(layers)
        self._index = {n: vgg19_layer_index(n) for n in self.layers}
        last = max(self._index.values())
        mods, cin = [], 3
        for item in VGG19_LAYOUT:
            if item == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                cout = max(1, item // width_divisor)
                mods += [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=False)]
                cin = cout
            if len(mods) > last:
                break
        self.features = nn.Sequential(*mods[:last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> "VGG19Features":
        """Load torchvision ``vgg19`` weights (keys ``features.N.weight``; other keys are ignored)."""
        own = self.state_dict()
        picked = {k: v for k, v in state_dict.items() if k in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"VGG-19 state dict: missing {missing[:4]}{'...' if len(missing) > 4 else ''}; expected "
                             f"torchvision vgg19 keys such as 'features.0.weight'")
        for k, v in picked.items():
            if v.shape != own[k].shape:
                raise ValueError(f"VGG-19 state dict: {k} has shape {tuple(v.shape)}, this network expects "
                                 f"{tuple(own[k].shape)} (width_divisor must be 1 to load real weights)")
        self.load_state_dict(picked)
        return self

    @classmethod
    def from_torchvision_file(cls, path: str | Path, layers: Sequence[str] | None = None) -> "VGG19Features":
        """From a torchvision ``vgg19`` checkpoint on disk (``.pth`` via ``torch.load(weights_only=True)``, or
        ``.safetensors``), e.g. ``vgg19-dcbb9e9d.pth``."""
        from ..state_dicts import read_state_dict

        path = Path(path)
        sd = read_state_dict(path)
        net = cls(layers) if layers is not None else cls()
        try:
            return net.load_torchvision_state_dict(sd)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images - self.mean) / self.std
        wanted = {i: n for n, i in self._index.items()}
        out = {}
        for i, mod in enumerate(self.features):
            x = mod(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


# ======================================================================== single spatial transformation

SINGLE_LAMBDA1 = 0.1     # weight of the generative loss (eq 8, appendix B)
SINGLE_LAMBDA2 = 0.001   # weight of the affine-preserving loss (eq 8, appendix B)

FeatureExtractor = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class MultiScalePerceptualLoss(nn.Module):
    """Eq 5 at several resolutions: ``sum_scale sum_i w_i ||phi_i(y_o) - phi_i(I_t)||_1`` (mean per layer).

    "Inspired by Siarohin et al. (2019b) we use four different resolutions": the scales default to FOMM's
    pyramid (1, 1/2, 1/4, 1/8), downsampled with antialiased bilinear interpolation. ``extractor`` is any
    ``FeatureExtractor`` (e.g. :class:`VGG19Features` loaded with :meth:`VGG19Features.from_torchvision_file`);
    ``layers`` defaults to all the layers it returns, equally weighted.
    """

    def __init__(self, extractor: FeatureExtractor, scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
                 layers: Sequence[str] | None = None, layer_weights: Sequence[float] | None = None):
        super().__init__()
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales: expected factors in (0, 1], got {scales!r}")
        self.extractor = extractor
        self.scales = tuple(float(s) for s in scales)
        self.layers = None if layers is None else tuple(layers)
        if layer_weights is not None and (self.layers is None or len(layer_weights) != len(self.layers)):
            raise ValueError("layer_weights: give one weight per entry of layers (and give layers)")
        self.layer_weights = None if layer_weights is None else tuple(layer_weights)

    def check_input_size(self, height: int, width: int) -> None:
        """ValueError (naming the scale and the layer) when an image of ``height`` x ``width`` gets too small for a
        requested VGG-19 layer at one of the scales (its max-pools would leave an empty map). Other extractors'
        layer names are not checked."""
        try:
            needs = {n: vgg19_min_size(n) for n in self.layers or getattr(self.extractor, "layers", ())}
        except ValueError:
            return
        if not needs:
            return
        layer = max(needs, key=needs.get)
        for s in self.scales:
            h, w = max(1, round(height * s)), max(1, round(width * s))
            if min(h, w) < needs[layer]:
                raise ValueError(f"perceptual loss: at scale {s:g} a {height}x{width} image is {h}x{w}, smaller than "
                                 f"the {needs[layer]} px that {layer} needs; drop that scale (--perceptual-scales) "
                                 f"or the deep layers (--perceptual-layers), or train at a larger size")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape != target.shape:
            raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ")
        self.check_input_size(*output.shape[-2:])
        total = output.new_zeros(())
        for s in self.scales:
            if s == 1.0:
                y, t = output, target
            else:
                size = (max(1, round(output.shape[-2] * s)), max(1, round(output.shape[-1] * s)))
                y = F.interpolate(output, size=size, mode="bilinear", align_corners=False, antialias=True)
                t = F.interpolate(target, size=size, mode="bilinear", align_corners=False, antialias=True)
            fy, ft = self.extractor(y), self.extractor(t)
            names = self.layers or tuple(fy)
            weights = self.layer_weights or (1.0,) * len(names)
            for n, wt in zip(names, weights):
                total = total + wt * (fy[n] - ft[n].detach()).abs().mean()   # eq 5
        return total


class PoseConditionedDiscriminator(ModelMixin, ConfigMixin):
    """D of eq 6: a patch discriminator on ``cat(image, target pose heatmaps)``; returns patch logits ``(B, 1, h, w)``.

    The paper does not describe D; ours is a PatchGAN (Isola et al.): 4x4 stride-2 convs with LeakyReLU(0.2)
    (BatchNorm after all but the first), then a stride-1 4x4 conv and a 4x4 conv to one logit per patch.
    Images are taken in 0..1 and mapped to -1..1.
    """

    @register_to_config
    def __init__(self, image_channels: int = 3, pose_channels: int = NUM_JOINTS,
                 channels: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        channels = tuple(channels)
        layers, cin = [], image_channels + pose_channels
        for i, cout in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers.append(nn.Conv2d(cin, cout, 4, stride, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != pose.shape[-2:]:
            pose = F.interpolate(pose, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.net(torch.cat([image * 2 - 1, pose], dim=1))


GAN_MODES = ("paper", "lsgan")


def adversarial_generator_loss(discriminator: nn.Module, fake: torch.Tensor, pose: torch.Tensor,
                               mode: str = "paper") -> torch.Tensor:
    """The generator's part of eq 6, ``E[1 - D(y_o, p_d)]``, with ``D = sigmoid(logits)`` in [0, 1] (``"paper"``).

    Eq 6 is linear in D; we read D as a probability, which bounds the game (the paper does not say).
    ``"lsgan"``: least squares on the logits, ``E[(D(y_o) - 1)^2]``, a common stable alternative.
    """
    logits = discriminator(fake, pose)
    if mode == "paper":
        return (1 - torch.sigmoid(logits)).mean()
    if mode == "lsgan":
        return ((logits - 1) ** 2).mean()
    raise ValueError(f"mode: expected one of {GAN_MODES}, got {mode!r}")


def adversarial_discriminator_loss(discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor,
                                   pose: torch.Tensor, mode: str = "paper") -> torch.Tensor:
    """D's side of eq 6. D maximises ``E[1 - D(y_o)] + E[D(I_t)]``; we minimise the equivalent
    ``E[D(y_o)] + E[1 - D(I_t)]`` (``"paper"``), or LSGAN's ``E[D(y_o)^2] + E[(D(I_t) - 1)^2]``.
    ``fake`` is detached here."""
    lf, lr = discriminator(fake.detach(), pose), discriminator(real, pose)
    if mode == "paper":
        return torch.sigmoid(lf).mean() + (1 - torch.sigmoid(lr)).mean()
    if mode == "lsgan":
        return (lf ** 2).mean() + ((lr - 1) ** 2).mean()
    raise ValueError(f"mode: expected one of {GAN_MODES}, got {mode!r}")


@dataclass
class AffineRange:
    """Ranges of the random affine transform of task 1 (section 3.1.1). The paper's parameters ``a_1..a_5, b_1,
    b_2`` (its equation is missing from our copy) are read as: rotation (degrees), log-uniform isotropic scale,
    aspect ratio ``sx / sy``, shears ``kx, ky``, and a translation as a fraction of the image side. They are kept
    small "so that the resulting transformation does not make a big difference in the verticality of the human
    skeletons": by default a vertical line tilts by at most about 10 + 6 degrees."""

    max_rotation: float = 10.0
    scale: tuple[float, float] = (0.8, 1.25)
    aspect: tuple[float, float] = (0.9, 1.1)
    max_shear: float = 0.1
    max_translation: float = 0.15

    def __post_init__(self):
        if not (0 <= self.max_rotation < 45 and 0 <= self.max_shear < 0.5 and 0 <= self.max_translation <= 1
                and 0 < self.scale[0] <= self.scale[1] and 0 < self.aspect[0] <= self.aspect[1]):
            raise ValueError(f"AffineRange: out-of-range settings {self}")


def random_upright_affine(batch: int, size: tuple[int, int], ranges: AffineRange = AffineRange(),
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, 2, 3)`` affine maps about the image centre sending pixel coordinates of the made-up source pose
    ``p_st`` to those of the real target pose ``p_t`` (``p_st(x) = p_t(A x)``)."""
    h, w = size

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    theta = torch.deg2rad(u(-ranges.max_rotation, ranges.max_rotation))                      # a1
    scale = torch.exp(u(math.log(ranges.scale[0]), math.log(ranges.scale[1])))             # a2
    aspect = torch.exp(u(math.log(ranges.aspect[0]), math.log(ranges.aspect[1])))          # a3
    kx, ky = u(-ranges.max_shear, ranges.max_shear), u(-ranges.max_shear, ranges.max_shear)  # a4, a5
    tx = u(-ranges.max_translation, ranges.max_translation) * w                             # b1
    ty = u(-ranges.max_translation, ranges.max_translation) * h                             # b2
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones_like(kx), kx], -1), torch.stack([ky, torch.ones_like(ky)], -1)], -2)
    diag = torch.diag_embed(torch.stack([scale * aspect.sqrt(), scale / aspect.sqrt()], -1))
    lin = rot @ shear @ diag
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    shift = centre + torch.stack([tx, ty], -1) - (lin @ centre[:, None])[..., 0]
    return torch.cat([lin, shift[..., None]], dim=-1)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(B, 2, 3)`` affine maps."""
    lin_inv = torch.linalg.inv(matrix[..., :2])
    return torch.cat([lin_inv, -(lin_inv @ matrix[..., 2:])], dim=-1)


def make_affine_task(target_pose: torch.Tensor, matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task 1's input and label: ``p_st`` (``p_t`` sampled through the affine map, zeros outside) and ``s_f``,
    the flow that brings ``p_st`` back onto ``p_t`` (the inverse map), ``(B, 2, H, W)`` in the project's
    convention: ``warp(p_st, s_f) == p_t`` where the content stays inside the canvas."""
    size = tuple(target_pose.shape[-2:])
    forward = affine_to_flow(matrices.to(target_pose.dtype), size).to(target_pose.device)
    p_st = warp(target_pose, forward, padding_mode="zeros")
    s_f = affine_to_flow(invert_affine(matrices).to(target_pose.dtype), size).to(target_pose.device)
    return p_st, s_f


def affine_preserving_loss(flow: torch.Tensor, s_f: torch.Tensor) -> torch.Tensor:
    """Eq 7: ``||W(p_st, p_t) - s_f||_1`` (mean over pixels and both components). ``s_f`` is resized to ``flow``'s
    grid with :func:`..flow.resize_flow` when they differ (exact for an affine flow), so the loss is in pixels of
    the grid ``flow`` lives on (the correlation grid for the paper's ``s_f``)."""
    if s_f.shape[-2:] != flow.shape[-2:]:
        s_f = resize_flow(s_f, tuple(flow.shape[-2:]))
    return (flow - s_f).abs().mean()
