"""Image files and ComfyUI-layout tensors (no ComfyUI import here).

Conventions: images are RGB float32 in 0..1, channels last. A batch of images is ``[B, H, W, C]`` (ComfyUI's
IMAGE), a batch of masks ``[B, H, W]`` (ComfyUI's MASK). Alpha channels are DROPPED, not composited: the
RGB values are kept as stored.
"""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import torch

from .pose.keypoints import MAX_PIXELS, check_canvas_size

_TOLERANCE = 1e-2  # float values this far outside 0..1 are clipped; further out is an error


def _to_unit_float(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 / uint16 / bool / float array -> float32 in 0..1 (floats are checked, then clipped)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: expected float values in 0..1 or uint8, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: expected finite values in 0..1, got NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
            raise ValueError(f"{what}: expected values in 0..1, got values from {lo:.4g} to {hi:.4g}")
    return np.clip(arr, 0.0, 1.0)


def _rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """``(..., H, W, C)`` with C in {1, 3, 4} -> ``(..., H, W, 3)``: grey repeated, alpha dropped."""
    c = arr.shape[-1]
    if c not in (1, 3, 4):
        raise ValueError(f"{what}: expected 1, 3 or 4 channels (last axis), got {c}")
    return np.repeat(arr, 3, axis=-1) if c == 1 else arr[..., :3]


def _check_header_size(path: str) -> None:
    """Refuse an image too large for :func:`~.pose.keypoints.check_canvas_size` from its header alone (PIL opens
    lazily); formats PIL does not know are left to OpenCV."""
    import warnings

    from PIL import Image

    what = f"image file {path!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
    except Image.DecompressionBombError as exc:  # beyond PIL's own limit (179 Mpx), so beyond ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "more than 179 Mpx"
        raise ValueError(f"{what}: {size} is larger than the {MAX_PIXELS // 2**20} Mpx in all this package "
                         f"accepts (memory); resize it first") from None
    except Exception:  # noqa: BLE001 - not a format PIL knows (or not an image): OpenCV decides
        return
    check_canvas_size(*size, what)


def load_image(path) -> np.ndarray:
    """Read an image file -> float32 ``(H, W, 3)`` RGB in 0..1. Grey is repeated to RGB; alpha is dropped.
    Images beyond :data:`~.pose.keypoints.MAX_SIDE` / :data:`~.pose.keypoints.MAX_PIXELS` are refused from their header,
    before decoding."""
    path = os.fspath(path)
    if os.path.isfile(path):
        _check_header_size(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also reads non-ASCII paths on Windows
    except OSError as exc:
        raise FileNotFoundError(f"image file {path!r}: cannot read it ({exc})") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"image file {path!r}: expected an image OpenCV can decode, got unreadable data")
    if img.ndim == 2:
        img = img[:, :, None]
    img = _rgb(img, f"image file {path!r}")
    return _to_unit_float(np.ascontiguousarray(img[..., ::-1]), f"image file {path!r}")


def save_image(path, image) -> None:
    """Write an RGB image (float 0..1 or uint8; ``(H, W)``, ``(H, W, 1|3|4)``); the format follows the
    extension. Alpha is dropped."""
    path = os.fspath(path)
    encode_image(path, image).tofile(path)


def encode_image(path, image) -> np.ndarray:
    """The bytes :func:`save_image` would write to ``path`` (format from its extension), as a uint8 array;
    nothing is written."""
    path = os.fspath(path)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image: expected (H, W) or (H, W, C), got shape {tuple(arr.shape)}")
    arr = _rgb(arr, "image")
    if arr.dtype != np.uint8:
        arr = np.round(_to_unit_float(arr, "image") * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(os.path.splitext(path)[1] or ".png", np.ascontiguousarray(arr[..., ::-1]))
    if not ok:
        raise ValueError(f"path: cannot encode an image for {path!r}; expected an extension such as .png")
    return buf


def images_to_tensor(images, what: str = "images") -> torch.Tensor:
    """One image ``(H, W[, C])``, a batch ``(B, H, W, C)`` or a list of same-size images -> ComfyUI IMAGE
    (torch float32 ``[B, H, W, 3]`` in 0..1)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{what}: expected at least one image, got an empty list")
        items = [np.asarray(im) for im in images]
        items = [im[:, :, None] if im.ndim == 2 else im for im in items]
        if any(im.ndim != 3 for im in items):
            raise ValueError(f"{what}: expected images of shape (H, W) or (H, W, C), got shapes "
                             f"{[tuple(im.shape) for im in items]}")
        items = [_to_unit_float(_rgb(im, what), what) for im in items]
        if len({im.shape for im in items}) > 1:
            raise ValueError(f"{what}: expected images of one size, got {sorted({im.shape[:2] for im in items})}")
        arr = np.stack(items)
    else:
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"{what}: expected (H, W, C) or (B, H, W, C), got shape {tuple(arr.shape)}")
        arr = _to_unit_float(_rgb(arr, what), what)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def tensor_to_images(tensor, what: str = "image") -> np.ndarray:
    """Check a ComfyUI IMAGE (torch ``[B, H, W, C]``, C in {1, 3, 4}, float 0..1) -> float32 ``[B, H, W, 3]``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{what}: expected an IMAGE (torch tensor [B, H, W, C]), got {type(tensor).__name__}")
    if tensor.ndim != 4:
        raise ValueError(f"{what}: expected an IMAGE of shape [B, H, W, C], got shape {tuple(tensor.shape)}")
    if 0 in tensor.shape[:3]:
        raise ValueError(f"{what}: expected a non-empty IMAGE, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{what}: expected a float IMAGE in 0..1, got dtype {tensor.dtype}")
    check_canvas_size(int(tensor.shape[2]), int(tensor.shape[1]), what)
    arr = _rgb(tensor.detach().float().cpu().numpy(), what)
    return np.ascontiguousarray(_to_unit_float(arr, what))


def mask_to_tensor(masks, what: str = "masks") -> torch.Tensor:
    """One mask ``(H, W)``, a batch ``(B, H, W)`` or a list of same-size masks -> ComfyUI MASK
    (torch float32 ``[B, H, W]`` in 0..1; bool and uint8 are accepted)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, (list, tuple)):
        if not masks:
            raise ValueError(f"{what}: expected at least one mask, got an empty list")
        items = [np.asarray(m) for m in masks]
        if any(m.ndim != 2 for m in items) or len({m.shape for m in items}) > 1:
            raise ValueError(f"{what}: expected masks of one size (H, W), got shapes {[m.shape for m in items]}")
        arr = np.stack(items)
    else:
        arr = np.asarray(masks)
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.ndim != 3:
            raise ValueError(f"{what}: expected (H, W) or (B, H, W), got shape {tuple(arr.shape)}")
    return torch.from_numpy(np.ascontiguousarray(_to_unit_float(arr, what)))


def tensor_to_mask(tensor, what: str = "mask") -> np.ndarray:
    """Check a ComfyUI MASK (torch ``[B, H, W]``, or ``[H, W]`` as some nodes send, float 0..1)
    -> float32 ``[B, H, W]``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{what}: expected a MASK (torch tensor [B, H, W]), got {type(tensor).__name__}")
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"{what}: expected a MASK of shape [B, H, W], got shape {tuple(tensor.shape)}")
    if 0 in tensor.shape:
        raise ValueError(f"{what}: expected a non-empty MASK, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{what}: expected a float MASK in 0..1, got dtype {tensor.dtype}")
    check_canvas_size(int(tensor.shape[2]), int(tensor.shape[1]), what)
    return np.ascontiguousarray(_to_unit_float(tensor.detach().float().cpu().numpy(), what))


__all__ = ["load_image", "save_image", "encode_image", "images_to_tensor", "tensor_to_images", "mask_to_tensor", "tensor_to_mask"]
