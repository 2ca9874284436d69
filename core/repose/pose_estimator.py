"""Differentiable pose estimators for PoseGuidance (RePoseDM section 3.3, ``P_phi`` of eq 11).

The interface is small: a :class:`PoseEstimator` is a torch module mapping an RGB image ``(B, 3, H, W)`` in
0..1 (the project's image range) to a :class:`PoseEstimate` with

* ``heatmaps`` ``(B, K, h1, w1)``: joint heatmaps (their sum, thresholded, is the weight ``W_h`` of eq 11);
* ``features`` ``(B, C, h2, w2)``: the backbone's latent representation ``P_phi`` compared in eq 11.

Everything must be differentiable with respect to the image (the guidance backpropagates through it).

Shipped estimators:

* :class:`HigherHRNet` + :class:`HigherHRNetEstimator`: an architecture whose ``state_dict`` has exactly the key
  layout of the official HigherHRNet release (``pose_higher_hrnet_w32_512.pth``, COCO, 17 joints), built from the
  facts of the official model definition and its ``w32_512`` config: stem (two 3x3 stride-2 convs, 64 channels),
  ``layer1`` (4 bottlenecks to 256), stages 2-4 with 1/4/3 modules of 2/3/4 branches (4 basic blocks per branch,
  widths 32/64/128/256), sum fusion, stage 4 keeping only the highest-resolution output, ``final_layers`` (1x1
  convs: 17 heatmaps + 17 tags at 1/4, 17 heatmaps at 1/2) and one deconv stage (4x4 transposed conv from 32 + 34
  channels to 32, then 4 basic blocks). :func:`load_higher_hrnet` reads the official file with
  ``torch.load(weights_only=True)`` and loads it strictly. The estimator normalises with the ImageNet mean/std (as
  the official test code), returns as ``heatmaps`` the official test-time average (the 1/4 heatmaps upsampled
  bilinearly to 1/2 and averaged with the 1/2 heatmaps) and as ``features`` the backbone output (the
  highest-resolution stage-4 branch, 32 channels at 1/4). Heatmaps are in COCO-17 joint order.
* :class:`ModulePoseEstimator` (via :func:`as_pose_estimator`): any torch module the user supplies.
* :class:`TinyPoseEstimator`: a few random convs, for tests and smoke runs.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PoseEstimate", "PoseEstimator", "ModulePoseEstimator", "TinyPoseEstimator", "as_pose_estimator",
    "HigherHRNet", "HigherHRNetEstimator", "load_higher_hrnet", "HIGHER_HRNET_W32_CONFIG",
    "HIGHER_HRNET_W48_CONFIG", "IMAGENET_MEAN", "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PoseEstimate(NamedTuple):
    heatmaps: torch.Tensor   # (B, K, h1, w1)
    features: torch.Tensor   # (B, C, h2, w2)


class PoseEstimator(nn.Module):
    """Base class: ``forward(image in 0..1, (B, 3, H, W)) -> PoseEstimate``; ``num_joints`` = K."""

    num_joints: int = 0

    def forward(self, image: torch.Tensor) -> PoseEstimate:  # pragma: no cover - interface
        raise NotImplementedError


class ModulePoseEstimator(PoseEstimator):
    """Wraps a user module. Its output may be a :class:`PoseEstimate`, a ``(heatmaps, features)`` pair, a dict with
    ``"heatmaps"`` and ``"features"``, or a single tensor (used as both). ``mean`` / ``std`` (per channel), when
    given, normalise the 0..1 input first; ``num_joints`` defaults to the heatmap channels of the first call."""

    def __init__(self, module: nn.Module, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, num_joints: int | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"ModulePoseEstimator: expected a torch module, got {type(module).__name__}")
        self.module = module
        self.num_joints = num_joints or 0
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> PoseEstimate:
        x = image
        if self.mean is not None:
            x = x - self.mean.to(x)
        if self.std is not None:
            x = x / self.std.to(x)
        out = self.module(x)
        if isinstance(out, PoseEstimate):
            est = out
        elif isinstance(out, dict):
            est = PoseEstimate(out["heatmaps"], out["features"])
        elif isinstance(out, (tuple, list)) and len(out) == 2 and all(torch.is_tensor(o) for o in out):
            est = PoseEstimate(out[0], out[1])
        elif torch.is_tensor(out):
            est = PoseEstimate(out, out)
        else:
            raise TypeError("ModulePoseEstimator: the module must return a PoseEstimate, (heatmaps, features), a "
                            f"dict with 'heatmaps' and 'features', or one tensor; got {type(out).__name__}")
        if not self.num_joints:
            self.num_joints = int(est.heatmaps.shape[1])
        return est


def as_pose_estimator(obj: Any, **kwargs) -> PoseEstimator:
    """A :class:`PoseEstimator` as is; any other torch module wrapped in :class:`ModulePoseEstimator`."""
    if isinstance(obj, PoseEstimator):
        return obj
    if isinstance(obj, nn.Module):
        return ModulePoseEstimator(obj, **kwargs)
    raise TypeError(f"as_pose_estimator: expected a torch module, got {type(obj).__name__}")


class TinyPoseEstimator(PoseEstimator):
    """Random small estimator for tests: conv3x3 s2 -> ReLU -> conv3x3 -> ReLU = features (1/2 resolution);
    heatmaps = sigmoid(1x1 conv of the features)."""

    def __init__(self, num_joints: int = 17, width: int = 8):
        super().__init__()
        self.num_joints = num_joints
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Conv2d(width, num_joints, 1)

    def forward(self, image: torch.Tensor) -> PoseEstimate:
        f = F.relu(self.conv2(F.relu(self.conv1(image * 2 - 1))))
        return PoseEstimate(torch.sigmoid(self.head(f)), f)


# ------------------------------------------------------------------------------------------------ HigherHRNet

HIGHER_HRNET_W32_CONFIG = dict(
    num_joints=17, stem_channels=64, layer1_blocks=4, stage_channels=(32, 64, 128, 256), stage_modules=(1, 4, 3),
    blocks_per_branch=4, tag_per_joint=True, with_ae_loss=(True, False), deconv_channels=(32,), deconv_kernel=4,
    deconv_basic_blocks=4, deconv_cat_output=(True,), final_conv_kernel=1,
)
HIGHER_HRNET_W48_CONFIG = dict(HIGHER_HRNET_W32_CONFIG, stage_channels=(48, 96, 192, 384), deconv_channels=(48,))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.1)


class _Basic(nn.Module):
    """Two 3x3 convs with BatchNorm, identity (or ``downsample``) shortcut, ReLU (keys conv1/bn1/conv2/bn2)."""

    def __init__(self, cin: int, cout: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _bn(cout)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 width) with BatchNorm, shortcut, ReLU (keys conv1..3, bn1..3, downsample.0/1)."""

    def __init__(self, cin: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _HRModule(nn.Module):
    """One multi-resolution module: ``branches`` (basic blocks per branch) and ``fuse_layers`` (sum fusion)."""

    def __init__(self, channels: tuple[int, ...], blocks: int, multi_scale_output: bool = True):
        super().__init__()
        self.channels = tuple(channels)
        n = len(channels)
        self.branches = nn.ModuleList(nn.Sequential(*[_Basic(c, c) for _ in range(blocks)]) for c in channels)
        fuse = []
        if n > 1:
            for i in range(n if multi_scale_output else 1):
                row = []
                for j in range(n):
                    if j > i:    # lower resolution -> 1x1 conv + BN (the nearest upsampling has no weights)
                        row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                                 nn.BatchNorm2d(channels[i])))
                    elif j == i:
                        row.append(None)
                    else:        # higher resolution -> (i - j) stride-2 3x3 convs, ReLU between them
                        steps = []
                        for k in range(i - j):
                            last = k == i - j - 1
                            cout = channels[i] if last else channels[j]
                            layers = [nn.Conv2d(channels[j], cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
                            if not last:
                                layers.append(nn.ReLU())
                            steps.append(nn.Sequential(*layers))
                        row.append(nn.Sequential(*steps))
                fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse) if fuse else None

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = None
            for j, layer in enumerate(row):
                if j == i:
                    z = xs[j]
                elif j > i:
                    z = F.interpolate(layer(xs[j]), size=xs[i].shape[-2:], mode="nearest")
                else:
                    z = layer(xs[j])
                y = z if y is None else y + z
            out.append(F.relu(y))
        return out


class HigherHRNet(nn.Module):
    """HigherHRNet (Cheng et al. 2020) with the official parameter names; config :data:`HIGHER_HRNET_W32_CONFIG`.

    ``forward(x)`` takes the ImageNet-normalised image and returns the list of the official outputs
    (``[(B, 2K, H/4, W/4), (B, K, H/2, W/2)]`` for W32); ``forward(x, return_features=True)`` returns
    ``(outputs, backbone_features)``. Input sides should be multiples of 32 as in the official code (other sizes
    work: the fusion upsamples to the exact branch size).
    """

    def __init__(self, num_joints: int = 17, stem_channels: int = 64, layer1_blocks: int = 4,
                 stage_channels: tuple[int, ...] = (32, 64, 128, 256), stage_modules: tuple[int, ...] = (1, 4, 3),
                 blocks_per_branch: int = 4, tag_per_joint: bool = True,
                 with_ae_loss: tuple[bool, ...] = (True, False), deconv_channels: tuple[int, ...] = (32,),
                 deconv_kernel: int = 4, deconv_basic_blocks: int = 4, deconv_cat_output: tuple[bool, ...] = (True,),
                 final_conv_kernel: int = 1):
        super().__init__()
        self.num_joints = num_joints
        self.config = dict(num_joints=num_joints, stem_channels=stem_channels, layer1_blocks=layer1_blocks,
                           stage_channels=tuple(stage_channels), stage_modules=tuple(stage_modules),
                           blocks_per_branch=blocks_per_branch, tag_per_joint=tag_per_joint,
                           with_ae_loss=tuple(with_ae_loss), deconv_channels=tuple(deconv_channels),
                           deconv_kernel=deconv_kernel, deconv_basic_blocks=deconv_basic_blocks,
                           deconv_cat_output=tuple(deconv_cat_output), final_conv_kernel=final_conv_kernel)
        self.conv1 = nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False)
        self.bn1 = _bn(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False)
        self.bn2 = _bn(stem_channels)
        down = nn.Sequential(nn.Conv2d(stem_channels, stem_channels * 4, 1, bias=False), _bn(stem_channels * 4))
        self.layer1 = nn.Sequential(_Bottleneck(stem_channels, stem_channels, down),
                                    *[_Bottleneck(stem_channels * 4, stem_channels) for _ in range(layer1_blocks - 1)])
        if len(stage_modules) != 3 or len(stage_channels) != 4:
            raise ValueError("HigherHRNet: expected 3 stages (2-4) and 4 branch widths")
        prev = [stem_channels * 4]
        for s, n_modules in enumerate(stage_modules):
            channels = tuple(stage_channels[:s + 2])
            setattr(self, f"transition{s + 1}", self._transition(prev, channels))
            last_stage = s == len(stage_modules) - 1
            # stage 4's last module keeps only the highest-resolution output (the official multi_scale_output=False)
            modules = [_HRModule(channels, blocks_per_branch,
                                 multi_scale_output=not (last_stage and m == n_modules - 1)) for m in range(n_modules)]
            setattr(self, f"stage{s + 2}", nn.Sequential(*modules))
            prev = list(channels)
        dim_tag = num_joints if tag_per_joint else 1
        out_ch = [num_joints + dim_tag if ae else num_joints for ae in with_ae_loss]
        pad = 1 if final_conv_kernel == 3 else 0
        finals = [nn.Conv2d(stage_channels[0], out_ch[0], final_conv_kernel, 1, pad)]
        deconvs = []
        cin = stage_channels[0]
        k, p, op = {4: (4, 1, 0), 3: (3, 1, 1), 2: (2, 0, 0)}[deconv_kernel]
        for i, cout in enumerate(deconv_channels):
            if deconv_cat_output[i]:
                cin += out_ch[i]
            layers = [nn.Sequential(nn.ConvTranspose2d(cin, cout, k, 2, p, op, bias=False), _bn(cout), nn.ReLU())]
            layers += [nn.Sequential(_Basic(cout, cout)) for _ in range(deconv_basic_blocks)]
            deconvs.append(nn.Sequential(*layers))
            finals.append(nn.Conv2d(cout, out_ch[i + 1], final_conv_kernel, 1, pad))
            cin = cout
        self.final_layers = nn.ModuleList(finals)
        self.deconv_layers = nn.ModuleList(deconvs)

    @staticmethod
    def _transition(prev: list[int], cur: tuple[int, ...]) -> nn.ModuleList:
        layers = []
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(None if prev[i] == c else nn.Sequential(
                    nn.Conv2d(prev[i], c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()))
            else:
                steps = []
                for j in range(i + 1 - len(prev)):
                    cout = c if j == i - len(prev) else prev[-1]
                    steps.append(nn.Sequential(nn.Conv2d(prev[-1], cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout),
                                               nn.ReLU()))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for s in range(3):
            transition = getattr(self, f"transition{s + 1}")
            # as the official forward: a branch with a transition reads the last (lowest-resolution) output
            xs = [ys[i] if t is None else t(ys[-1]) for i, t in enumerate(transition)]
            ys = getattr(self, f"stage{s + 2}")(xs)
        features = ys[0]
        outputs = [self.final_layers[0](features)]
        h, y = features, outputs[0]
        for i, deconv in enumerate(self.deconv_layers):
            if self.config["deconv_cat_output"][i]:
                h = torch.cat((h, y), 1)
            h = deconv(h)
            y = self.final_layers[i + 1](h)
            outputs.append(y)
        return (outputs, features) if return_features else outputs


class HigherHRNetEstimator(PoseEstimator):
    """:class:`PoseEstimator` around :class:`HigherHRNet`: ImageNet normalisation, official test-time heatmap
    average (at the last output's resolution), backbone features (highest-resolution stage-4 branch)."""

    def __init__(self, net: HigherHRNet):
        super().__init__()
        self.net = net
        self.num_joints = net.num_joints
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> PoseEstimate:
        outputs, features = self.net((image - self.mean.to(image)) / self.std.to(image), return_features=True)
        size = outputs[-1].shape[-2:]
        k = self.num_joints
        heat = [o[:, :k] if o.shape[-2:] == size else
                F.interpolate(o[:, :k], size=size, mode="bilinear", align_corners=False) for o in outputs]
        return PoseEstimate(sum(heat) / len(heat), features)


def load_higher_hrnet(path: str | Path, config: dict | None = None, map_location: Any = "cpu") -> HigherHRNetEstimator:
    """Read an official HigherHRNet checkpoint (``torch.load(weights_only=True)``) into a :class:`HigherHRNetEstimator`.

    Accepts a bare state dict (the official release), or one under ``"state_dict"`` / ``"model"``, with or without a
    ``module.`` prefix; BatchNorm ``num_batches_tracked`` counters missing from old files are filled in. Loads
    strictly (any other missing or unexpected key is an error naming them). ``config`` defaults to W32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HigherHRNet checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # not a zip / pickle, or objects beyond tensors: never loaded unsafely
        raise ValueError(f"{path}: not a readable HigherHRNet checkpoint (torch.load(weights_only=True) failed: "
                         f"{str(exc).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    net = HigherHRNet(**(config or HIGHER_HRNET_W32_CONFIG))
    own = net.state_dict()
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: not a HigherHRNet checkpoint of this config: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:5]} (e.g. {bad[0]}: file {tuple(state[bad[0]].shape)}, "
                         f"model {tuple(own[bad[0]].shape)}); wrong width (W32 vs W48)?")
    net.load_state_dict(state, strict=True)
    return HigherHRNetEstimator(net.eval())


def load_pose_estimator(path: str | Path) -> HigherHRNetEstimator:
    """HigherHRNet from an official checkpoint: W32, else W48; a ``<name>.json`` beside it gives another
    HigherHRNet config (keyword arguments of :class:`HigherHRNet`)."""
    sidecar = os.path.splitext(os.fspath(path))[0] + ".json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                config = {k: tuple(v) if isinstance(v, list) else v for k, v in json.load(f).items()}
            inspect.signature(HigherHRNet).bind(**config)  # unknown keys fail here, not deep in torch
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"{sidecar}: expected a JSON dict of HigherHRNet settings (the config beside the "
                             f"checkpoint), got an unusable file ({exc})") from None
        return load_higher_hrnet(path, config)
    try:
        return load_higher_hrnet(path, HIGHER_HRNET_W32_CONFIG)
    except ValueError as first:
        try:
            return load_higher_hrnet(path, HIGHER_HRNET_W48_CONFIG)
        except ValueError:
            raise first from None
