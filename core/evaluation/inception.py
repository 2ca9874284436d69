"""torchvision's Inception-v3, rewritten in plain torch with torchvision's module names, and the FID feature
extractor the PCDMs / PIDM / GFLA scripts used.

Why these weights: all three papers' ``metrics.py`` build their ``InceptionV3`` feature wrapper from
``torchvision.models.inception_v3(pretrained=True)``, i.e. ``inception_v3_google-0cc3c7bd.pth`` -- not the
TF-ported "FID Inception" weights of pytorch-fid (``pt_inception-2015-12-05``), which have a different
architecture in a few blocks and give different FIDs. Reproducing the published numbers needs the torchvision
file, which loads into :class:`Inception3` by key.

The papers' wrapper (:class:`FIDInception`) takes 0..1 images, resizes them bilinearly to 299x299
(``align_corners=False``), applies torchvision's ``transform_input`` arithmetic per channel
(``x * std / 0.5 + (mean - 0.5) / 0.5`` with ImageNet mean/std -- on a 0..1 input, sic), runs the blocks up to
``Mixed_7c`` and the global average pool: 2048 features per image. torchvision's own ``transform_input`` flag
is never used by the wrapper (it calls the blocks directly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .weights import INCEPTION_FILE, load_into, load_state_dict, resolve

TRANSFORM_MEAN = (0.485, 0.456, 0.406)
TRANSFORM_STD = (0.229, 0.224, 0.225)
INCEPTION_PARAMS = 27161264  # torchvision's Inception_V3_Weights.IMAGENET1K_V1 num_params (with AuxLogits)


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.out_channels = out_channels

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _Scaled:
    """Channel counts scaled by ``width`` (1.0 = torchvision's)."""

    def __init__(self, width: float):
        self.width = width

    def __call__(self, n: int) -> int:
        return n if self.width == 1.0 else max(1, int(round(n * self.width)))


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int, c):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int, c):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int, c):
        super().__init__()
        c7 = c(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int, c):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for m in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, c):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, c(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Present so the torchvision file loads strictly; never run (the features stop before it matters)."""

    def __init__(self, in_channels: int, num_classes: int, c):
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, c(128), kernel_size=1)
        self.conv1 = BasicConv2d(c(128), c(768), kernel_size=5)
        self.fc = nn.Linear(c(768), num_classes)


class Inception3(nn.Module):
    """torchvision ``Inception3`` (``aux_logits=True``, 1000 classes) with the same attribute names, so
    ``inception_v3_google-0cc3c7bd.pth`` loads by key. ``width < 1`` scales every channel count down (a tiny
    random network for tests); :meth:`features` is the pool3 output."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000, aux_logits: bool = True):
        super().__init__()
        if not isinstance(width, (int, float)) or not 0 < width <= 1:
            raise ValueError(f"width: expected a number in (0, 1], got {width!r}")
        c = _Scaled(float(width))
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(c(192), 32, c)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, c)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, c)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, c)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, c)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, c)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, c)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, c)
        self.AuxLogits = InceptionAux(self.Mixed_6e.out_channels, num_classes, c) if aux_logits else None
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, c)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, c)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, c)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, num_classes)
        self.feature_dim = self.Mixed_7c.out_channels
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` (already transformed) -> ``[N, feature_dim]`` pool3 features."""
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


class FIDInception(nn.Module):
    """The papers' FID feature extractor: 0..1 images ``[N, 3, H, W]`` -> ``[N, D]`` float32 features."""

    def __init__(self, inception: Inception3, resize_input: bool = True, normalize_input: bool = True):
        super().__init__()
        self.inception = inception.eval()
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        # the constants as the scripts' Python floats give them (computed in double, used as float32)
        scale = torch.tensor([s / 0.5 for s in TRANSFORM_STD], dtype=torch.float64).float().view(1, 3, 1, 1)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in TRANSFORM_MEAN], dtype=torch.float64).float()
        self.register_buffer("t_scale", scale, persistent=False)
        self.register_buffer("t_shift", shift.view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.inception.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected a tensor [N, 3, H, W] in 0..1, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.normalize_input:
            x = x * self.t_scale + self.t_shift
        return self.inception.features(x)


def load_inception(weights=None, device: str | torch.device = "cpu", width: float = 1.0) -> FIDInception:
    """The FID extractor with torchvision's ``inception_v3_google-0cc3c7bd.pth`` (default: the torch hub
    cache). Nothing is downloaded: a missing file raises :class:`~.weights.MissingWeightsError`. The file must
    hold every feature layer with torchvision's names and shapes (``AuxLogits.*`` and ``fc.*`` may be absent).
    ``width`` < 1 expects a scaled-down file of the same layout (tests)."""
    path = resolve(weights, INCEPTION_FILE, "FID Inception-v3 weights", "--fid-weights")
    net = Inception3(width=width)
    state = load_state_dict(path, "FID Inception-v3 weights")
    load_into(net, state, path, "FID Inception-v3 weights (torchvision inception_v3 layout)",
              optional_prefixes=("AuxLogits.", "fc."))
    return FIDInception(net).to(device).eval()
