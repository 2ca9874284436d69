"""Put a generated picture back over a warped one where, and only where, the warp had to make content up.

FlowWarp moves real pixels and marks the rest in ``generate_mask`` (1 = made up, 0 = real). An inpainting
model then repaints the image; :func:`composite_where_real` takes the repainted pixels inside the mask and keeps
every pixel FlowWarp marked real exactly as FlowWarp produced it (bit for bit: the model's VAE round trip never
touches them).

Inpainting encoders crop their input to a multiple of the VAE's factor (ComfyUI's VAEEncodeForInpaint and
InpaintModelConditioning cut ``H % 8`` rows, centred: offset ``(H % 8) // 2``), so the decoded picture can be a
few pixels smaller than the warped one. Such a picture is placed back at that centred offset, not stretched;
pixels it does not cover keep the warped image. Any other size is resized (bilinear) to the warped image.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# A generated picture at most this much smaller (per side) than the warped one is taken for a VAE crop and
# placed centred; the largest VAE factor ComfyUI's inpainting encoders use is 16 (8 for SD / SDXL / FLUX).
MAX_VAE_CROP = 64


def _batch(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    raise ValueError(f"{what}: expected 1 or {n} frames, got {t.shape[0]}")


def fit_generated(generated: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``generated`` (B, h, w, C) on the (height, width) canvas -> (picture (B, H, W, C), covered (B, H, W)).

    Same size: unchanged. Smaller by less than :data:`MAX_VAE_CROP` per side (an inpainting encoder's crop):
    placed at the centred offset the encoder cut, ``covered`` 0 outside it. Otherwise: resized bilinearly."""
    b, h, w, c = generated.shape
    covered = torch.ones((b, height, width), dtype=generated.dtype)
    if (h, w) == (height, width):
        return generated, covered
    if 0 <= height - h < MAX_VAE_CROP and 0 <= width - w < MAX_VAE_CROP:
        top, left = (height - h) // 2, (width - w) // 2
        canvas = torch.zeros((b, height, width, c), dtype=generated.dtype)
        canvas[:, top:top + h, left:left + w] = generated
        covered = torch.zeros_like(covered)
        covered[:, top:top + h, left:left + w] = 1
        return canvas, covered
    resized = F.interpolate(generated.movedim(-1, 1), size=(height, width), mode="bilinear", align_corners=False)
    return resized.movedim(1, -1).clamp(0, 1), covered


def feather_inside(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """The blend weight: ``mask`` (B, H, W) ramped from 0 at the edge of the real area up to its own value
    ``feather`` pixels inside the area to generate (Euclidean distance). Never above ``mask`` and exactly 0
    wherever ``mask`` is 0, so real pixels stay real; ``feather`` 0 returns ``mask``."""
    if feather <= 0:
        return mask
    ramps = []
    for m in mask.cpu().numpy():
        inside = (m > 0).astype(np.uint8)
        # Distance of every to-generate pixel to the nearest real pixel (1 for a pixel touching one); an
        # all-generated frame has no real pixel: distances come out huge, i.e. no ramp.
        dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        ramps.append(np.clip(dist / float(feather), 0.0, 1.0))
    return mask * torch.from_numpy(np.stack(ramps)).to(mask.dtype)


def composite_where_real(warped: torch.Tensor, generated: torch.Tensor, generate_mask: torch.Tensor,
                         feather: int = 0) -> torch.Tensor:
    """``generated`` over ``warped`` inside ``generate_mask``; ``warped`` itself wherever the mask is 0.

    ``warped`` (B, H, W, 3) and ``generated`` (B or 1, h, w, 3) in 0..1, ``generate_mask`` (B or 1, H, W) with
    1 = generate. The blend weight is :func:`feather_inside` of the mask (times the area ``generated`` covers,
    see :func:`fit_generated`); pixels of weight 0 are copied from ``warped`` unchanged (``torch.where``, not
    arithmetic, so they are bit-identical). Returns (B, H, W, 3) float32."""
    n, height, width = warped.shape[0], warped.shape[1], warped.shape[2]
    n = max(n, generated.shape[0], generate_mask.shape[0])
    warped = _batch(warped.float(), n, "warped")
    generated = _batch(generated.float(), n, "generated")
    mask = _batch(generate_mask.float(), n, "generate_mask")
    if tuple(mask.shape[1:]) != (height, width):
        raise ValueError(f"generate_mask: expected the warped image's size {height}x{width} (H x W), got "
                         f"{mask.shape[1]}x{mask.shape[2]}; connect the mask that came with the warped image")
    picture, covered = fit_generated(generated, height, width)
    weight = (feather_inside(mask, feather) * covered)[..., None]
    blend = warped * (1 - weight) + picture * weight
    return torch.where(weight > 0, blend, warped).contiguous()


__all__ = ["MAX_VAE_CROP", "fit_generated", "feather_inside", "composite_where_real"]
