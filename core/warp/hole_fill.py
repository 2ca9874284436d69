"""Filling holes in images without a model: a fast pull-push pyramid, or cv2's Telea inpainting."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

INPAINT_METHODS = ("pyramid", "telea")


def pyramid_fill(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill where ``known`` is 0 with a smooth extension of the known pixels (pull-push).

    ``image`` ``(B, C, H, W)``, ``known`` ``(B, 1, H, W)`` weights in 0..1. Known pixels are kept (soft
    weights blend). Each coarser level averages the known pixels (weighted); holes take the upsampled
    coarser value, so a hole gets the colours around it, smoothly. Linear in the pixel count.
    """
    known = known.clamp(0, 1)
    # A 0/1 mask (the usual hole mask) keeps the known pixels and takes the upsampled fill in the holes
    # exactly, so the finest level needs no blending (3 full-size operations instead of about 10).
    binary = bool(((known == 0) | (known == 1)).all())
    levels = [(image * known, known)]
    while min(levels[-1][1].shape[-2:]) > 1 and (levels[-1][1] < 1e-3).any():
        s, k = levels[-1]
        levels.append((_half(s), _half(k)))
    s, k = levels[-1]
    filled = s / k.clamp_min(1e-6)
    if (k < 1e-6).all():  # nothing known at all: leave the image as it is
        return image
    filled = torch.where(k > 1e-6, filled, filled.mean(dim=(-2, -1), keepdim=True))
    for i in range(len(levels) - 2, -1, -1):
        s, k = levels[i]
        up = F.interpolate(filled, size=s.shape[-2:], mode="bilinear", align_corners=False)
        if i == 0 and binary:  # what the general blend below and the final line give for w in {0, 1}
            return s + (1 - known) * up
        w = k.clamp(max=1)
        own = s / k.clamp_min(1e-6)
        # A pixel with weight w is w parts its own (normalised) value and 1 - w parts the coarser fill.
        filled = w * own + (1 - w) * up
    return known * image + (1 - known) * filled


def _half(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, ceil_mode=True)``: on even sizes as four strided slices summed in the pool's order
    (the same values, several times faster on CPU than the pooling kernel)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        return F.avg_pool2d(x, 2, ceil_mode=True)
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 4


def telea_fill(image: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
    """cv2's Telea inpainting; ``image`` float (H, W, 3) 0..1, ``hole`` (H, W) bool/0..1."""
    u8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.inpaint(u8, (hole > 0.5).astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return out.astype(np.float32) / 255


def fill_holes(image: torch.Tensor, hole: torch.Tensor, method: str = "pyramid") -> torch.Tensor:
    """Fill ``hole`` (``(B, 1, H, W)``, 1 = fill) in ``image`` ``(B, C, H, W)`` with ``method``."""
    if method == "pyramid":
        return pyramid_fill(image, 1 - hole)
    if method == "telea":
        out = [torch.from_numpy(telea_fill(im.permute(1, 2, 0).cpu().numpy(), h[0].cpu().numpy())).permute(2, 0, 1)
               for im, h in zip(image, hole)]
        return torch.stack(out).to(image)
    raise ValueError(f"method: expected one of {INPAINT_METHODS}, got {method!r}")
