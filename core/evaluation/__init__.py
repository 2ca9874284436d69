"""Evaluation as the papers measured (SSIM, PSNR, L1, LPIPS, FID, masked variants, pose accuracy) and dataset
tools. No lpips / torchvision / scikit-image import: LPIPS-Alex and Inception-v3 are rewritten in plain torch
and load the user's published weight files by key.

* :mod:`.metrics` -- SSIM exactly as scikit-image, PSNR, L1, masked variants.
* :mod:`.profiles` -- the PCDMs / PIDM / GFLA measuring conventions and image pipelines.
* :mod:`.lpips`, :mod:`.inception`, :mod:`.fid` -- the networks and the Fréchet distance.
* :mod:`.pose_accuracy` -- PCK / keypoint error of a detector's pose against the target.
* :mod:`.evaluate` -- ``posetransfer evaluate``; :mod:`.datasets` -- ``posetransfer dataset``.
"""

from .metrics import l1, masked_l1, masked_psnr, masked_ssim, psnr, structural_similarity
from .profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "get_profile", "l1", "masked_l1", "masked_psnr", "masked_ssim", "psnr",
           "structural_similarity"]
