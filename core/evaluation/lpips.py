"""LPIPS (Zhang et al. 2018), AlexNet variant v0.1, in plain torch: no ``lpips`` or ``torchvision`` import.

The network is the ``lpips`` package's ``LPIPS(net="alex", version="0.1")`` (also what the older
PerceptualSimilarity ``DistModel(model="net-lin", net="alex")`` computes):

1. scaling layer: ``(x - shift) / scale`` with shift ``(-.030, -.088, -.188)``, scale ``(.458, .448, .450)``;
   the input is expected in [-1, 1] (what each paper actually fed is in :mod:`.profiles`);
2. torchvision AlexNet ``features``; taps after the ReLUs at indices 1, 4, 7, 9, 11 (64, 192, 384, 256, 256
   channels);
3. each tap unit-normalised over channels (``x / (sqrt(sum x^2) + 1e-10)``), squared difference, a 1x1
   convolution without bias (``lin{k}.model.1.weight``; ``model.0`` is a Dropout, inactive in eval), spatial
   mean; the five values are summed.

Weights: torchvision's ``alexnet-owt-7be5be79.pth`` (keys ``features.N.weight`` / ``.bias``, loaded by key)
and the lpips package's ``weights/v0.1/alex.pth`` (keys ``lin0.model.1.weight`` ... ``lin4...``).
"""

from __future__ import annotations

import torch
from torch import nn

from .weights import ALEXNET_FILE, LPIPS_LIN_FILE, _lpips_package_file, load_into, load_state_dict, resolve

ALEX_CHANNELS = (64, 192, 384, 256, 256)
ALEX_TAPS = (1, 4, 7, 9, 11)            # ReLU outputs of torchvision's alexnet.features
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class AlexNetFeatures(nn.Module):
    """torchvision ``AlexNet.features`` (same module indices, so its state dict loads by key). ``channels``
    other than the default make a small random network for tests."""

    def __init__(self, channels: tuple[int, ...] = ALEX_CHANNELS):
        super().__init__()
        if len(channels) != 5 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels: expected 5 positive integers, got {channels!r}")
        c = channels
        self.channels = tuple(c)
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[0], c[1], kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[1], c[2], kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in ALEX_TAPS:
                taps.append(x)
                if i == ALEX_TAPS[-1]:
                    break
        return taps


class NetLinLayer(nn.Module):
    """lpips' ``NetLinLayer``: ``Sequential(Dropout(), Conv2d(c, 1, 1, bias=False))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, stride=1, padding=0,
                                                           bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_tensor(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    norm = torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True))
    return x / (norm + eps)


class LPIPS(nn.Module):
    """``forward(x0, x1)`` with ``[N, 3, H, W]`` tensors in [-1, 1] -> ``[N]`` distances (0 for equal images).

    Build with :func:`load_lpips` for the published weights; ``LPIPS(channels=...)`` gives a random network
    (tests). The module is put in eval mode."""

    def __init__(self, channels: tuple[int, ...] = ALEX_CHANNELS):
        super().__init__()
        self.net = AlexNetFeatures(channels)
        for k, c in enumerate(self.net.channels):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def lin_state_dict(self) -> dict:
        """The linear layers' weights under the lpips ``alex.pth`` keys."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("lin")}

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        for name, x in (("x0", x0), ("x1", x1)):
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"{name}: expected a tensor [N, 3, H, W], got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1: expected the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        val = None
        for k, (a, b) in enumerate(zip(f0, f1)):
            diff = (normalize_tensor(a) - normalize_tensor(b)) ** 2
            res = getattr(self, f"lin{k}")(diff).mean(dim=[2, 3], keepdim=True)
            val = res if val is None else val + res
        return val.view(-1)


def load_lpips(alexnet_weights=None, lin_weights=None, device: str | torch.device = "cpu",
               channels: tuple[int, ...] = ALEX_CHANNELS) -> LPIPS:
    """The published LPIPS-Alex v0.1 from the user's files (nothing is downloaded).

    ``alexnet_weights``: torchvision's ``alexnet-owt-7be5be79.pth`` (default: the torch hub cache).
    ``lin_weights``: lpips' ``weights/v0.1/alex.pth`` (default: inside an installed ``lpips`` package).
    A missing file raises :class:`~.weights.MissingWeightsError`; a file with other keys or shapes a ValueError.
    ``channels`` other than AlexNet's expect scaled-down files of the same layout (tests).
    """
    alex_path = resolve(alexnet_weights, ALEXNET_FILE, "LPIPS AlexNet weights", "--alexnet-weights")
    lin_path = resolve(lin_weights, LPIPS_LIN_FILE, "LPIPS linear-layer weights (lpips v0.1 alex.pth)",
                       "--lpips-weights", extra_candidates=(_lpips_package_file(),))
    model = LPIPS(channels)
    alex = load_state_dict(alex_path, "LPIPS AlexNet weights")
    alex = {k: v for k, v in alex.items() if not k.startswith("classifier.")}
    load_into(model.net, alex, alex_path, "LPIPS AlexNet weights (torchvision alexnet layout)")
    lin = load_state_dict(lin_path, "LPIPS linear-layer weights")
    holder = nn.Module()
    for k in range(5):
        setattr(holder, f"lin{k}", getattr(model, f"lin{k}"))
    load_into(holder, lin, lin_path, "LPIPS linear-layer weights (lpips v0.1 layout)")
    return model.to(device).eval()
