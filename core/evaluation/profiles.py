"""How each paper measured its published numbers, as data, plus the image pipelines that reproduce them.

Read from the authors' evaluation scripts (``shared/reference/formats.md``, "How the published numbers were
measured"): PCDMs ``metrics.py`` + ``caculate_metrics_256.py``, PIDM ``utils/metrics.py``, GFLA
``script/metrics.py``. Every paper reads images with imageio (RGB uint8), casts to float32 0..255, then:

============  ==========================  ==========================  ==========================
              PCDMs                       PIDM                        GFLA
============  ==========================  ==========================  ==========================
SSIM/PSNR/L1  cv2 INTER_CUBIC to 176x256  no resize                   no resize
SSIM          sigma 1.2, float32 (skimage sigma 1.2, float64          sigma 1.5, float64
              >= 0.19)                    (compare_ssim)              (compare_ssim)
LPIPS input   cv2 INTER_CUBIC, [0, 1]     cv2 bilinear, [-1, 1]       no resize, [-1, 1]
              (sic: lpips expects -1..1)
LPIPS mean    full batches of 64 only     full batches of 64 only     full batches of 64 only
FID input     cv2 INTER_CUBIC, [0, 1]     cv2 bilinear, [0, 1]        no resize, [0, 1]
FID batches   full batches of 128 only    full batches of 64 only     full batches of 64 only
FID reference training images             training images             training images
============  ==========================  ==========================  ==========================

All SSIMs: ``gaussian_weights=True, use_sample_covariance=False``, on 0..255 floats, ``data_range =
pred.max() - pred.min()``. PSNR: ``data_range=1`` on the 0..1 images; L1: mean absolute difference on 0..1.
"Full batches only": the scripts drop the last ``N mod batch`` images (all images when N < batch).
Note: PIDM scores SSIM/PSNR/L1 on the images as stored (only LPIPS and FID are resized), which differs from
the one-line summary in formats.md.

The other papers of this project released no evaluation code: RePoseDM copies its baseline rows from PIDM / PCDMs
and evaluates at 256x176 (closest: ``pidm``, an assumption); the structure-aware part flow follows GFLA at
256x256 (``gfla`` on the 256x256 images, FID against the training images); the single-spatial-transformation paper
reports an L1 around 15.5 that reads as a 0..255 scale (ours is on 0..1: multiply by 255) and an LPIPS with VGG,
which is not implemented here (AlexNet only).

All FIDs use torchvision's Inception-v3 (``inception_v3_google-0cc3c7bd.pth``) through the pytorch-fid-style
wrapper these scripts ship: bilinear resize to 299x299, then torchvision's ``transform_input`` arithmetic
applied to the 0..1 input (see :mod:`.inception`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

INTERPOLATIONS = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Resize:
    """``cv2.resize(float32 image, (width, height), interpolation)``; ``"linear"`` is cv2's default."""

    interpolation: str
    width: int
    height: int

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: expected one of {sorted(INTERPOLATIONS)}, got "
                             f"{_short(self.interpolation)}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"resize {name}: expected a positive integer, got {_short(v)}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image)
        if img.dtype != np.float32:
            raise ValueError(f"image: the papers resize float32 0..255 arrays, got dtype {img.dtype}")
        return cv2.resize(img, (self.width, self.height), interpolation=INTERPOLATIONS[self.interpolation])

    def describe(self) -> str:
        name = "INTER_CUBIC" if self.interpolation == "cubic" else "INTER_LINEAR (cv2 default)"
        return f"cv2.resize {name} to {self.width}x{self.height}"


@dataclass(frozen=True)
class Profile:
    """One paper's measuring conventions. Sizes are ``width x height`` as cv2 takes them."""

    name: str
    paper: str
    source: str
    rec_resize: Resize | None       # before SSIM / PSNR / L1
    lpips_resize: Resize | None
    fid_resize: Resize | None
    ssim_sigma: float
    ssim_float64: bool              # skimage < 0.19 (compare_ssim) computed in float64
    lpips_input: str                # "unit": x / 255 (0..1, sic);  "signed": x / 127.5 - 1
    lpips_batch: int                # the mean keeps full batches only
    fid_batch: int                  # the statistics keep full batches only
    fid_reference: str = "training images"
    masked_lpips_resized: bool = True  # False: masked LPIPS on the images as stored (PIDM's calculate_mask_lpips)
    best_of_selection: str = "profile"  # how best-of-N picks a sample: "profile" (this SSIM) or "pcdms-script"

    def ssim_kwargs(self) -> dict:
        """Keyword arguments of :func:`.metrics.structural_similarity` (``data_range`` comes per image)."""
        return {"gaussian_weights": True, "sigma": self.ssim_sigma, "use_sample_covariance": False,
                "channel_axis": 2}

    def with_size(self, width: int, height: int) -> "Profile":
        """The same profile resizing to another size (PCDMs' 512 setting: 352x512). Profiles that do not
        resize a metric keep not resizing it."""
        def swap(r):
            return None if r is None else Resize(r.interpolation, width, height)
        if all(r is None for r in (self.rec_resize, self.lpips_resize, self.fid_resize)):
            raise ValueError(f"size: the {self.name} profile does not resize images, so a size cannot be set")
        return dataclasses.replace(self, rec_resize=swap(self.rec_resize), lpips_resize=swap(self.lpips_resize),
                                   fid_resize=swap(self.fid_resize))

    def to_dict(self) -> dict:
        """JSON-ready description (written into the summary)."""
        def r(x):
            return None if x is None else x.describe()
        return {
            "name": self.name, "paper": self.paper, "source": self.source,
            "resize_ssim_psnr_l1": r(self.rec_resize), "resize_lpips": r(self.lpips_resize),
            "resize_fid": r(self.fid_resize),
            "ssim": (f"skimage structural_similarity, gaussian_weights=True, sigma={self.ssim_sigma}, "
                     f"use_sample_covariance=False, data_range=pred.max()-pred.min() on 0..255 "
                     f"{'float64 (skimage<0.19 compare_ssim)' if self.ssim_float64 else 'float32'}"),
            "psnr": "data_range=1 on 0..1 float32", "l1": "mean |gt - pred| on 0..1 float32",
            "lpips": (f"AlexNet LPIPS v0.1, input {'[0,1] (sic)' if self.lpips_input == 'unit' else '[-1,1]'}, "
                      f"mean over full batches of {self.lpips_batch}"),
            "masked_lpips": "as LPIPS" if self.masked_lpips_resized else "as LPIPS, on the images as stored",
            "best_of_selection": BEST_OF_SELECTIONS[self.best_of_selection],
            "fid": (f"torchvision Inception-v3 pool3 (2048), bilinear to 299, transform_input on 0..1 input, "
                    f"full batches of {self.fid_batch}, reference: {self.fid_reference}"),
        }

    # ------------------------------------------------------------------ the papers' image pipelines
    def rec_image(self, raw: np.ndarray) -> np.ndarray:
        """float32 0..255 RGB as read -> the float32 0..1 image SSIM/PSNR/L1 see (``resize(raw) / 255.0``)."""
        img = _check_raw(raw)
        if self.rec_resize is not None:
            img = self.rec_resize(img)
        return img / np.float32(255.0)

    def ssim_image(self, rec: np.ndarray) -> np.ndarray:
        """The 0..1 image of :meth:`rec_image` -> what the papers gave skimage (``* 255.0``; float64 for the
        skimage < 0.19 profiles, which cast internally)."""
        out = rec * np.float32(255.0)
        return out.astype(np.float64) if self.ssim_float64 else out

    def lpips_image(self, raw: np.ndarray, resize: bool = True) -> np.ndarray:
        """float32 0..255 RGB -> the float32 array the paper fed to lpips (``[0,1]`` or ``[-1,1]``);
        ``resize=False`` skips the profile's resize (masked LPIPS, see ``masked_lpips_resized``)."""
        img = _check_raw(raw)
        if resize and self.lpips_resize is not None:
            img = self.lpips_resize(img)
        if self.lpips_input == "unit":
            return img / np.float32(255.0)
        return img / np.float32(127.5) - np.float32(1.0)

    def fid_image(self, raw: np.ndarray) -> np.ndarray:
        """float32 0..255 RGB -> the float32 0..1 array the paper fed to its Inception wrapper."""
        img = _check_raw(raw)
        if self.fid_resize is not None:
            img = self.fid_resize(img)
        return img / np.float32(255.0)


def _check_raw(raw: np.ndarray) -> np.ndarray:
    img = np.asarray(raw)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) RGB array, got shape {tuple(img.shape)}")
    if img.dtype != np.float32:
        raise ValueError(f"image: expected float32 0..255 values (uint8 cast to float32), got dtype {img.dtype}")
    return img


DEEPFASHION_WH = (176, 256)

BEST_OF_SELECTIONS = {
    "profile": "highest SSIM with this profile's settings",
    # stage3_batchtest_refined_model.py: compare_ssim(np.array(t_img), np.array(gen_img), gaussian_weights=True,
    # sigma=1.2, channel_axis=2, ata_range=...) -- the misspelt data_range is ignored, so uint8's 255 applies,
    # with skimage's default use_sample_covariance=True; t_img is the ground truth resized by PIL bicubic to the
    # generated size.
    "pcdms-script": "highest SSIM as PCDMs' test script picks its best of 4: uint8 at the generated size, the "
                    "ground truth resized there with PIL bicubic, gaussian sigma 1.2, sample covariance, "
                    "data_range 255 (its data_range argument is misspelt and ignored)",
}

PROFILES: dict[str, Profile] = {
    "pcdms": Profile(
        name="pcdms", paper="PCDMs (Shen et al., ICLR 2024)",
        source="tencent-ailab/PCDMs metrics.py, caculate_metrics_256.py",
        rec_resize=Resize("cubic", *DEEPFASHION_WH), lpips_resize=Resize("cubic", *DEEPFASHION_WH),
        fid_resize=Resize("cubic", *DEEPFASHION_WH), ssim_sigma=1.2, ssim_float64=False,
        lpips_input="unit", lpips_batch=64, fid_batch=128, best_of_selection="pcdms-script"),
    "pidm": Profile(
        name="pidm", paper="PIDM (Bhunia et al., CVPR 2023)", source="ankanbhunia/PIDM utils/metrics.py",
        rec_resize=None, lpips_resize=Resize("linear", *DEEPFASHION_WH),
        fid_resize=Resize("linear", *DEEPFASHION_WH), ssim_sigma=1.2, ssim_float64=True,
        lpips_input="signed", lpips_batch=64, fid_batch=64, masked_lpips_resized=False),
    "gfla": Profile(
        name="gfla", paper="GFLA (Ren et al., CVPR 2020)",
        source="RenYurui/Global-Flow-Local-Attention script/metrics.py",
        rec_resize=None, lpips_resize=None, fid_resize=None, ssim_sigma=1.5, ssim_float64=True,
        lpips_input="signed", lpips_batch=64, fid_batch=64),
}


def get_profile(name: str | Profile) -> Profile:
    """A profile by name (``pcdms``, ``pidm``, ``gfla``), or the Profile itself."""
    if isinstance(name, Profile):
        return name
    if not isinstance(name, str) or name.lower() not in PROFILES:
        raise ValueError(f"profile: expected one of {sorted(PROFILES)}, got {_short(name)}")
    return PROFILES[name.lower()]


def used_count(n: int, batch: int) -> int:
    """How many of ``n`` items the papers' loops score: full batches only, or all when ``n < batch``."""
    if n <= 0:
        return 0
    if batch > n:
        return n
    return (n // batch) * batch


# ------------------------------------------------------------------------------------------------ reading

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def read_rgb_uint8(path) -> np.ndarray:
    """An image file -> ``(H, W, 3)`` uint8 RGB as imageio/Pillow decode it (the papers' reader). Grey is
    repeated to RGB, alpha is dropped (not composited), 16-bit is scaled to 8-bit. Pillow when installed
    (JPEG decoders differ by a grey level or so between libraries), else OpenCV."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r}: no such file")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with diffusers
        Image = None
    if Image is not None:
        try:
            with Image.open(path) as im:
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
                    return np.repeat(arr[:, :, None], 3, axis=2)
                if im.mode != "RGB":
                    im = im.convert("RGB")
                return np.array(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ValueError(f"image file {path!r}: expected an image Pillow can decode, got unreadable data "
                             f"({exc})") from None
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"image file {path!r}: expected an image OpenCV can decode, got unreadable data")
    if img.dtype == np.uint16:
        img = np.clip(np.round(img / 257.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])


def read_raw(path) -> np.ndarray:
    """``imread(path).astype(np.float32)``: float32 0..255 RGB, the papers' starting point."""
    return read_rgb_uint8(path).astype(np.float32)
