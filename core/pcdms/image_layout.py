"""Putting images of any size into the PCDMs square frame (512 x 512 at full size) and back.

Two modes (``FrameLayout.mode``):

* ``"squash"`` -- the official code: every image is resized to size x size with PIL bicubic, whatever its
  aspect ratio (DeepFashion's 256 x 176 becomes 512 x 512, people ~1.45x wider). Results come back squashed to
  the frame and are resized back to the original size.
* ``"pad"`` (default for users) -- aspect-preserving: the image is scaled so that its longer side is ``size``
  (PIL bicubic), centred, and the rest of the frame is filled (``fill``: ``"edge"`` repeats the border pixels --
  good for photographs, whose backgrounds then continue; ``"black"`` -- right for pose renderings, whose
  background is black; or a grey value in 0..1). Crop-back takes exactly the content box out of the frame and
  resizes it to the original size.

Resampling into the frame follows the official preprocessing bit for bit: float images are quantised to 8 bits
(``round(x * 255)``; exact for images read from 8-bit files), resized with PIL bicubic and returned as
``uint8 / 255`` in float32 -- the values ``ToTensor`` gives for the same PIL image. An image already at the
frame size is not resampled at all (PIL's ``resize`` returns a copy in that case too). Crop-back works on
floats (torch bicubic with antialiasing, clamped to 0..1).

Tensors are channels-last float images in 0..1, ``(B, H, W, C)`` (ComfyUI's IMAGE layout); a single
``(H, W, C)`` image is accepted as a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["FrameLayout", "LAYOUT_MODES", "plan_layout", "to_frame", "from_frame", "quantize_u8"]

LAYOUT_MODES = ("pad", "squash")


@dataclass(frozen=True)
class FrameLayout:
    """Where an image of ``source_hw`` lies inside a ``size`` x ``size`` frame.

    ``box`` = (top, left, height, width) of the image content inside the frame; for ``"squash"`` it is the whole
    frame. Everything else in the frame is fill.
    """

    mode: str
    source_hw: tuple[int, int]
    size: int
    box: tuple[int, int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.source_hw == (self.size, self.size)


def plan_layout(source_hw, size: int = 512, mode: str = "pad") -> FrameLayout:
    """The layout of an image of height x width ``source_hw`` in a ``size`` frame (see the module docstring)."""
    h, w = (int(v) for v in source_hw)
    if h < 1 or w < 1:
        raise ValueError(f"plan_layout: expected a positive image size, got {h} x {w}")
    if mode not in LAYOUT_MODES:
        raise ValueError(f"plan_layout: mode must be one of {LAYOUT_MODES}, got {mode!r}")
    size = int(size)
    if mode == "squash" or h == w:
        return FrameLayout(mode, (h, w), size, (0, 0, size, size))
    scale = size / max(h, w)
    ch = min(size, max(1, round(h * scale)))
    cw = min(size, max(1, round(w * scale)))
    return FrameLayout(mode, (h, w), size, ((size - ch) // 2, (size - cw) // 2, ch, cw))


def _as_batch(images, what: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise TypeError(f"{what}: expected a (B, H, W, C) tensor in 0..1, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected (B, H, W, C) with C in 1/3/4 (channels last), got {tuple(images.shape)}")
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    return images[..., :3]


def quantize_u8(images: torch.Tensor) -> torch.Tensor:
    """Float 0..1 -> uint8 as an 8-bit image file would hold it (``round(x * 255)``, clamped)."""
    return (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


def _fill_value(fill) -> float | str:
    if isinstance(fill, str):
        if fill not in ("edge", "black", "white"):
            raise ValueError(f"fill must be 'edge', 'black', 'white' or a value in 0..1, got {fill!r}")
        return {"black": 0.0, "white": 1.0}.get(fill, fill)
    return float(fill)


def to_frame(images, layout: FrameLayout | None = None, *, size: int = 512, mode: str = "pad",
             fill="edge") -> tuple[torch.Tensor, FrameLayout]:
    """Images (B, H, W, C) in 0..1 -> (frame (B, size, size, 3) float32, layout), PIL bicubic on 8 bits.

    ``layout`` fixes the placement (it must have been planned for this image size); otherwise one is planned
    from ``size`` and ``mode``.
    """
    images = _as_batch(images, "to_frame")
    b, h, w, _ = images.shape
    if layout is None:
        layout = plan_layout((h, w), size, mode)
    elif layout.source_hw != (h, w):
        raise ValueError(f"to_frame: the layout was planned for {layout.source_hw}, the images are {(h, w)}")
    fill = _fill_value(fill)
    u8 = quantize_u8(images).numpy()
    top, left, ch, cw = layout.box
    out = np.empty((b, layout.size, layout.size, 3), dtype=np.uint8)
    for i in range(b):
        if (ch, cw) == (h, w):
            content = u8[i]
        else:
            content = np.asarray(Image.fromarray(u8[i]).resize((cw, ch), Image.BICUBIC))
        if (ch, cw) == (layout.size, layout.size):
            out[i] = content
            continue
        pads = ((top, layout.size - top - ch), (left, layout.size - left - cw), (0, 0))
        if fill == "edge":
            out[i] = np.pad(content, pads, mode="edge")
        else:
            out[i] = np.pad(content, pads, mode="constant", constant_values=int(round(fill * 255)))
    frame = torch.from_numpy(out).float().div(255)  # = torchvision ToTensor of the same PIL image
    return frame, layout


def from_frame(frames: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Frames (B, size, size, C) in 0..1 -> the content box resized to ``layout.source_hw`` (B, H, W, C)."""
    frames = _as_batch(frames, "from_frame")
    if frames.shape[1:3] != (layout.size, layout.size):
        raise ValueError(f"from_frame: expected {layout.size} x {layout.size} frames, got {tuple(frames.shape)}")
    top, left, ch, cw = layout.box
    content = frames[:, top:top + ch, left:left + cw]
    if (ch, cw) == layout.source_hw:
        return content.contiguous()
    x = content.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=layout.source_hw, mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous().to(frames.dtype)
