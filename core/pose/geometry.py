"""Geometry applied to an image and its pose together: resize, crop, pad, flip, canvas fitting, normalisation.

Conventions:

* Images are numpy ``(H, W)`` or ``(H, W, C)`` arrays of any real or bool dtype; the result keeps the dtype.
  Either ``image`` or ``pose`` may be None to transform only the other; when both are given the image must be
  ``pose.height`` x ``pose.width``.
* Pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and its keypoint coordinate is ``(x=j, y=i)`` (OpenPose/cv2).
  Hence a resize by factor ``s`` maps ``x -> (x + 0.5) * s - 0.5`` (pixel centres, as ``cv2.resize``), a
  horizontal flip maps ``x -> W - 1 - x``, crop and pad are pure translations.
* Only present keypoints (confidence > 0) are moved; missing ones keep their stored values. Keypoints may
  end up outside the canvas (after a crop, a ``cover`` fit...): they stay present, coordinates outside the
  canvas are legal.
"""

from __future__ import annotations

import cv2
import numpy as np

from .keypoints import FACE_FLIP_PERMUTATION, FLIP_PERMUTATION, NUM_FACE, NUM_JOINTS, Person, Pose, check_canvas_size

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "area", "nearest")
_CV2_FLAGS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
FIT_MODES: tuple[str, ...] = ("stretch", "contain", "cover")
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _positive_int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not np.isfinite(value) or int(value) != value or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{what}: expected a {kind} integer number of pixels, got {value!r}")
    return int(value)


def _check(image: np.ndarray | None, pose: Pose | None) -> tuple[int, int]:
    """``(height, width)`` of the canvas; validates the image and that image and pose agree."""
    if image is None and pose is None:
        raise ValueError("image and pose are both None: nothing to transform")
    if image is not None:
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise ValueError(f"image: expected a numpy array (H, W) or (H, W, C), got "
                             f"{getattr(image, 'shape', type(image).__name__)}")
        if pose is not None and image.shape[:2] != (pose.height, pose.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the pose canvas is "
                             f"{pose.width}x{pose.height}; they must match")
        return image.shape[0], image.shape[1]
    return pose.height, pose.width


def _scale_map(sx: float, sy: float, ox: float = 0.0, oy: float = 0.0):
    """Point map of a resize by ``(sx, sy)`` followed by a translation ``(ox, oy)``."""
    def fn(xy: np.ndarray) -> np.ndarray:
        return (xy + 0.5) * (sx, sy) - 0.5 + (ox, oy)
    return fn


def _resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest pixel centre (cv2's INTER_NEAREST_EXACT), in numpy so that every dtype works."""
    rows = np.minimum(((np.arange(height) + 0.5) * image.shape[0] / height).astype(np.intp), image.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * image.shape[1] / width).astype(np.intp), image.shape[1] - 1)
    return image[rows[:, None], cols[None, :]]


def _resize_cv2(image: np.ndarray, width: int, height: int, flag: int) -> np.ndarray:
    """cv2.resize for any dtype and channel count (cv2 takes 5 dtypes and at most 4 channels for some modes)."""
    dtype = image.dtype
    if dtype.kind not in "biuf":
        raise ValueError(f"image: unsupported dtype {dtype}")
    work = image if dtype in _CV2_DTYPES else image.astype(np.float32 if dtype.kind in "bf" and
                                                             dtype.itemsize <= 4 else np.float64)
    src = work if work.ndim == 3 else work[:, :, None]
    chunks = [cv2.resize(np.ascontiguousarray(src[:, :, c:c + 4]), (width, height), interpolation=flag)
              for c in range(0, src.shape[2], 4)]
    out = np.concatenate([c.reshape(height, width, -1) for c in chunks], axis=2)
    out = out if image.ndim == 3 else out[:, :, 0]
    if dtype == work.dtype:
        return out
    if dtype.kind == "b":
        return out >= 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


def resize(image: np.ndarray | None, pose: Pose | None, width: int, height: int,
           interpolation: str = "bilinear") -> tuple[np.ndarray | None, Pose | None]:
    """Resize to ``width`` x ``height`` (aspect ratio not kept: a non-uniform resize squashes).

    ``interpolation``: ``bilinear``, ``bicubic``, ``area`` (cv2's, for shrinking) or ``nearest`` (pixel-centre
    rule, i.e. cv2's INTER_NEAREST_EXACT). Keypoints map by ``x -> (x + 0.5) * width / W - 0.5`` (same for y).
    """
    width, height = _positive_int(width, "width"), _positive_int(height, "height")
    check_canvas_size(width, height, "resize")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    h, w = _check(image, pose)
    if image is not None:
        image = _resize_nearest(image, width, height) if interpolation == "nearest" \
            else _resize_cv2(image, width, height, _CV2_FLAGS[interpolation])
    if pose is not None:
        pose = pose.map_points(_scale_map(width / w, height / h), width, height)
    return image, pose


def crop(image: np.ndarray | None, pose: Pose | None, x0: int, y0: int, x1: int, y1: int
         ) -> tuple[np.ndarray | None, Pose | None]:
    """Keep the pixels ``[x0, x1) x [y0, y1)`` (integer box, end exclusive, inside the canvas).

    Keypoints are translated by ``(-x0, -y0)``; joints that fall outside the crop stay present with
    coordinates outside the new canvas (nothing is dropped). A ValueError for an empty or out-of-range box.
    """
    x0, y0 = _positive_int(x0, "x0", 0), _positive_int(y0, "y0", 0)
    x1, y1 = _positive_int(x1, "x1", 0), _positive_int(y1, "y1", 0)
    h, w = _check(image, pose)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box ({x0}, {y0}, {x1}, {y1}) is empty: need x0 < x1 and y0 < y1")
    if x1 > w or y1 > h:
        raise ValueError(f"crop box ({x0}, {y0}, {x1}, {y1}) leaves the {w}x{h} canvas")
    if image is not None:
        image = image[y0:y1, x0:x1].copy()
    if pose is not None:
        pose = pose.map_points(lambda xy: xy - (x0, y0), x1 - x0, y1 - y0)
    return image, pose


def pad(image: np.ndarray | None, pose: Pose | None, left: int, top: int, right: int, bottom: int,
        value: float | tuple[float, ...] = 0) -> tuple[np.ndarray | None, Pose | None]:
    """Add borders of the given widths (non-negative integers) filled with ``value`` (a scalar or one value per
    channel). Keypoints are translated by ``(left, top)``."""
    left, top = _positive_int(left, "left", 0), _positive_int(top, "top", 0)
    right, bottom = _positive_int(right, "right", 0), _positive_int(bottom, "bottom", 0)
    h, w = _check(image, pose)
    check_canvas_size(w + left + right, h + top + bottom, "pad")
    if image is not None:
        out = np.empty((h + top + bottom, w + left + right) + image.shape[2:], image.dtype)
        out[...] = value
        out[top:top + h, left:left + w] = image
        image = out
    if pose is not None:
        pose = pose.map_points(lambda xy: xy + (left, top), w + left + right, h + top + bottom)
    return image, pose


def _flip_person(person: Person, width: int) -> Person:
    out = person.map_points(lambda xy: np.column_stack([width - 1 - xy[:, 0], xy[:, 1]]))
    out.body = out.body[list(FLIP_PERMUTATION)]
    if out.face is not None and len(out.face) == NUM_FACE:
        out.face = out.face[list(FACE_FLIP_PERMUTATION)]
    out.left_hand, out.right_hand = out.right_hand, out.left_hand
    return out


def hflip(image: np.ndarray | None, pose: Pose | None) -> tuple[np.ndarray | None, Pose | None]:
    """Mirror left-right: ``x -> W - 1 - x``.

    The person's left and right swap: body joints by ``FLIP_PERMUTATION``, the two hands, and the 70 face
    points by ``FACE_FLIP_PERMUTATION`` (a face of any other length is only mirrored). A missing joint moves to
    its mirror slot with its stored values unchanged. Flipping twice is the identity.
    """
    h, w = _check(image, pose)
    if image is not None:
        image = image[:, ::-1].copy()
    if pose is not None:
        pose = Pose([_flip_person(p, w) for p in pose.people], pose.width, pose.height, dict(pose.extra))
    return image, pose


def fit_pose(pose: Pose, width: int, height: int, mode: str = "stretch") -> Pose:
    """Move a pose onto a ``width`` x ``height`` canvas.

    ``stretch``: x and y scaled independently (as :func:`resize`); ``contain``: one scale ``min(width / W,
    height / H)``, the scaled canvas centred (letterboxed); ``cover``: one scale ``max(...)``, centred, the
    overflow cropped (keypoints there stay present, outside the canvas). Pixel-centre rule as :func:`resize`.
    """
    width, height = _positive_int(width, "width"), _positive_int(height, "height")
    if mode not in FIT_MODES:
        raise ValueError(f"mode: expected one of {FIT_MODES}, got {mode!r}")
    sx, sy = width / pose.width, height / pose.height
    if mode == "stretch":
        return pose.map_points(_scale_map(sx, sy), width, height)
    s = min(sx, sy) if mode == "contain" else max(sx, sy)
    ox, oy = (width - pose.width * s) / 2, (height - pose.height * s) / 2
    return pose.map_points(_scale_map(s, s, ox, oy), width, height)


def to_normalized(pose: Pose) -> np.ndarray:
    """``(P, 18, 3)`` body joints as ``(x / W, y / H, confidence)``; missing joints are ``(0, 0, 0)``.

    This is controlnet_aux's normalisation (plain division, no pixel-centre shift)."""
    out = np.zeros((len(pose.people), NUM_JOINTS, 3))
    for k, person in enumerate(pose.people):
        present = person.present
        out[k, present] = person.body[present] / (pose.width, pose.height, 1.0)
    return out


def from_normalized(array: np.ndarray, width: int, height: int) -> Pose:
    """Inverse of :func:`to_normalized`: ``(P, 18, 3)`` (or one person ``(18, 3)``) to a pixel Pose on a
    ``width`` x ``height`` canvas. Joints with confidence <= 0 become ``(0, 0, 0)``. Body joints only."""
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"array: expected shape (P, {NUM_JOINTS}, 3) or ({NUM_JOINTS}, 3), got {np.shape(array)}")
    width, height = _positive_int(width, "width"), _positive_int(height, "height")
    body = np.where(arr[..., 2:] > 0, arr * (width, height, 1.0), 0.0)
    return Pose([Person(b) for b in body], width, height)


def same_frame(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether canvases ``a`` and ``b`` (width, height) show the same frame at two resolutions: one is the other
    scaled uniformly, each side within one pixel (any rounding of a resize)."""
    for (w1, h1), (w2, h2) in ((a, b), (b, a)):
        if max((w2 - 1) / w1, (h2 - 1) / h1) <= min((w2 + 1) / w1, (h2 + 1) / h1):
            return True
    return False


def fit_source_pose(pose: Pose, width: int, height: int, what: str = "source_pose") -> Pose:
    """A source pose on its ``width`` x ``height`` image: unchanged on the image's canvas; rescaled (pixel-centre
    rule, :func:`resize`) when its canvas is the same frame at another resolution (:func:`same_frame`:
    a pose detected on a resized copy of the photo); a ValueError naming ``what`` otherwise (another frame: a
    crop, a pad, another photo)."""
    if (pose.width, pose.height) == (width, height):
        return pose
    if not same_frame((pose.width, pose.height), (width, height)):
        raise ValueError(f"{what}: canvas {pose.width}x{pose.height} is not the frame of its image {width}x{height} "
                         f"(another aspect ratio, beyond a pixel of rounding); detect the source pose on this image, "
                         f"or crop / pad image and pose together")
    return resize(None, pose, width, height)[1]
