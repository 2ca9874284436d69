"""RePoseDM PoseGuidance: gradient guidance from pose interaction fields (sections 3.3-3.4, eq 11-16).

:class:`PoseGuidance` is a model-independent guidance object. Its one operation is a function of
``(x_t, t, eps prediction, alpha_bar_t, decode)``; it never calls the denoiser, so the same object serves the RePose
sampler and any other epsilon-prediction latent sampler (PCDMs Inpaint/Refine: pass a ``decode`` that returns the
image the estimator should see, e.g. the target half of the side-by-side canvas).

* Eq 11, pose interaction field: ``G(P~_t) = sum_x W_h(x) * ||P_phi(P~_t)(x) - P_phi(P)(x)||^2`` (squared L2 over
  the feature channels at each location, summed over locations, one value per sample). ``P_phi`` = the estimator's
  backbone ``features``; ``W_h`` = 1 where the sum over joints of the heatmaps exceeds ``threshold`` (0.1), else 0,
  resized to the feature grid. Following the paper, the heatmaps are those of the generated image
  (``mask_from="generated"``); ``"target"`` and ``"union"`` are options (see below).
* Eq 13, Tweedie: ``y^_0 = (y_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (``a_t`` = alpha_bar_t), ``P~_t = decode(y^_0)``.
* Eq 15: ``eps~ = eps + eta * sqrt(1 - a_t) * grad G`` (``eta`` = ``scale``, 1 = the paper's eq 15). The paper's
  eq 14 -> 15 step is not consistent: eq 14 with its stated ``eta = sqrt(1 - a_t)`` would give
  ``eps + sqrt(a_t) grad G``; we implement eq 15 as printed (the sign lowers ``G``: checked numerically).
* Eq 16 (:meth:`PoseGuidance.guide_cfg`): ``eps = eps_u + w_c * ((eps_c - eps_u) + eta sqrt(1 - a_t) grad G)``.
  An interpretation: eq 16 writes ``eps_u + w_c (eps_interaction + ...)``; read literally with ``eps_interaction =
  eps_c`` it would add ``w_c eps_c`` to ``eps_u`` (about 3 eps for w_c = 2), so ``eps_interaction`` is read as the
  classifier-free difference ``eps_c - eps_u`` (Ho & Salimans, whom the paper cites for it).

Why Tweedie (eq 13) instead of eq 10's literal ``VAE_decoder(eps - eps_theta)``: ``eps - eps_theta`` is a noise
residual, not an image -- at sampling time the true ``eps`` does not exist, and during training the residual is
(up to the factor ``sqrt(1 - a_t) / sqrt(a_t)``) the *error* of the clean-image estimate, which contains no person
to estimate a pose from. The paper's own derivation (eq 12-14, after universal guidance [1]) is written around
Tweedie's estimate ``y^_{0,t}``, and HumanSD (the inspiration for eq 10) decodes the predicted clean latent too. So
``P~_t = decode(y^_0(y_t))``, which exists at training and sampling time alike.

Which gradient: eq 15 writes ``grad_{P~_t} G``, the gradient with respect to the denoised estimate, while ``eps``
lives in latent space. We take it with respect to the latent Tweedie estimate ``y^_0`` (``P~_t = decode(y^_0)``):
``grad = J_decode^T dG/dP~`` -- eq 15's image-space gradient brought to the latent through the decoder, nothing
else. Differentiating with respect to ``y_t`` instead while holding ``eps`` fixed would add a factor
``1 / sqrt(a_t)`` (about 160 at t = T on the linear schedule) and blow the first steps up; differentiating through
the denoiser as well (universal guidance) would cancel that factor but costs a UNet backward and ties the guidance
to one model. With the gradient at ``y^_0``, eq 15 moves the clean estimate by ``-(1 - a_t) / sqrt(a_t) eta grad``
(eq 13-14), and the sampler's update of ``y_{t-1}`` by a bounded multiple of ``eta grad`` (about ``beta_t eta grad``
for DDPM). Cost: one decoder + estimator forward and backward per step; the denoiser is not called. The target's
features ``P_phi(P)`` are computed once and cached; the backward computes gradients for the latent only (no parameter
gradients, no retained graph) and is skipped when ``W_h`` is empty (the gradient is then exactly 0). With
:class:`~.sampler.VaeCodec`'s decode the decoder's upsamplers run as exact transposed convolutions
(``fused_upsample``); ``guidance_decode_scale < 1`` in the sampler is the only approximation offered, opt-in
(benchmarks/RESULTS_repose.md).

What ``P`` is: eq 11 applies ``P_phi`` to "the valid pose" ``P``, which in RePoseDM is the target pose image that
conditions the denoiser -- a rendered skeleton. We follow that letter (the samplers pass their skeleton images as
the target), so with ``compare="features"`` a photo's backbone features are compared with a stick figure's: the
two images differ in domain, ``G`` is not zero even for a perfectly posed person, and inside ``W_h`` the gradient
also pulls towards the skeleton's look. The paper does not say more; guidance measurably lowers the pose error only
on the toy with a same-domain exact estimator (tests), nothing is measured on real weights here. A target given as
keypoint heatmaps (:func:`pose_heatmaps_coco17`, ``PoseTarget(heatmaps=...)``) with ``compare="heatmaps"`` avoids the
domain gap: our option, not the paper's (the PoseGuidance node's ``target=keypoints``, RePose Sampler only).

``mask_from``: with ``"generated"`` (the paper) the weight marks where the generated image shows joints, so
guidance corrects joints that appear but are misplaced/deformed. ``"target"`` uses the heatmaps of the target
(where joints should be), ``"union"`` both. ``compare="heatmaps"`` compares heatmaps instead of backbone features
(useful with a target given as keypoint heatmaps, see :func:`pose_heatmaps_coco17`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..pose.keypoints import COCO17_FROM_COCO18, Pose
from ..pose.render import render_heatmaps
from .pose_estimator import PoseEstimate, PoseEstimator, as_pose_estimator

__all__ = ["PoseGuidance", "PoseTarget", "tweedie_x0", "guided_eps", "pose_heatmaps_coco17", "percent_timestep_range"]

Decode = Callable[[torch.Tensor], torch.Tensor]


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor -> (B or 1, 1, 1, 1) on ``like``'s device and dtype."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def tweedie_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """Eq 13 (Tweedie): ``y^_0 = (y_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a = _per_sample(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def guided_eps(eps: torch.Tensor, grad: torch.Tensor, alpha_bar, scale: float = 1.0) -> torch.Tensor:
    """Eq 15: ``eps~ = eps + scale * sqrt(1 - a_t) * grad G``."""
    a = _per_sample(alpha_bar, eps)
    return eps + scale * (1 - a).sqrt() * grad.to(eps.dtype)


def percent_timestep_range(start_percent: float, end_percent: float,
                           num_train_timesteps: int = 1000) -> tuple[float, float] | None:
    """ComfyUI's ``start_percent`` / ``end_percent`` (0 = the first, noisiest step; 1 = the last) as the
    ``timestep_range`` of :class:`PoseGuidance`: percent ``p`` is timestep ``(1 - p) (T - 1)``, as ComfyUI's
    ``percent_to_sigma`` maps it. ``(0, 1)`` -> None (every step)."""
    start, end = float(start_percent), float(end_percent)
    if not (0.0 <= start <= end <= 1.0):
        raise ValueError(f"start_percent / end_percent: expected 0 <= start <= end <= 1, got {start_percent!r} / "
                         f"{end_percent!r}")
    if start == 0.0 and end == 1.0:
        return None
    last = num_train_timesteps - 1
    return (1.0 - end) * last, (1.0 - start) * last


def pose_heatmaps_coco17(pose: Pose, sigma: float = 2.0, person: int = 0,
                         size: tuple[int, int] | None = None) -> torch.Tensor:
    """Gaussian heatmaps of one person in COCO-17 order, ``(1, 17, H, W)`` (``size`` resizes the canvas)."""
    hm = render_heatmaps(pose, sigma=sigma, person=person)[list(COCO17_FROM_COCO18)]
    t = torch.from_numpy(np.ascontiguousarray(hm))[None]
    if size is not None and tuple(size) != tuple(t.shape[-2:]):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t


@dataclass
class PoseTarget:
    """What eq 11 compares against: ``features`` = ``P_phi(P)``; ``heatmaps`` = the target's heatmaps (for
    ``mask_from`` "target"/"union" and ``compare="heatmaps"``). Either may be None when not needed."""

    features: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None


class PoseGuidance:
    """Pose gradient guidance (eq 11, 13, 15, 16) around a differentiable pose estimator.

    Args:
        estimator: a :class:`~.pose_estimator.PoseEstimator` or any torch module (see
            :func:`~.pose_estimator.as_pose_estimator`); put in eval mode. It sees images in 0..1.
        target_image: the target pose image ``P`` (B or 1, 3, H, W) in 0..1; ``P_phi(P)`` is computed lazily at the
            decoded image's size and cached. Or give ``target`` (a :class:`PoseTarget`) directly.
        scale: ``eta`` of eq 15 (1.0 = the paper).
        threshold: heatmap-sum threshold of ``W_h`` (0.1).
        mask_from: "generated" (paper), "target" or "union".
        compare: "features" (paper, backbone features) or "heatmaps".
        image_range: the range of what ``decode`` returns (VAE: (-1, 1)); mapped to 0..1 for the estimator.
        estimator_size: resize the decoded image to (H, W) before the estimator (e.g. its training size).
        timestep_range: ``(t_min, t_max)``: guide only when ``t_min <= t <= t_max`` (None: always).
    """

    def __init__(self, estimator, target_image: torch.Tensor | None = None, *, target: PoseTarget | None = None,
                 scale: float = 1.0, threshold: float = 0.1, mask_from: str = "generated",
                 compare: str = "features", image_range: tuple[float, float] = (-1.0, 1.0),
                 estimator_size: tuple[int, int] | None = None,
                 timestep_range: tuple[float, float] | None = None):
        if mask_from not in ("generated", "target", "union"):
            raise ValueError(f"mask_from: expected 'generated', 'target' or 'union', got {mask_from!r}")
        if compare not in ("features", "heatmaps"):
            raise ValueError(f"compare: expected 'features' or 'heatmaps', got {compare!r}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"threshold: expected a number, got {threshold!r}")
        self.estimator: PoseEstimator = as_pose_estimator(estimator).eval()
        self.scale = float(scale)
        self.threshold = float(threshold)
        self.mask_from = mask_from
        self.compare = compare
        self.image_range = (float(image_range[0]), float(image_range[1]))
        self.estimator_size = None if estimator_size is None else tuple(int(s) for s in estimator_size)
        self.timestep_range = timestep_range
        self._target_image = None
        self._target = target
        self._cache: dict = {}
        if target_image is not None:
            self.set_target(target_image)

    # ------------------------------------------------------------------------------------------------ target
    def set_target(self, target_image: torch.Tensor | None = None, *, target: PoseTarget | None = None) -> None:
        """Set the target pose: an image ``P`` in 0..1 (B or 1, 3, H, W), or a :class:`PoseTarget`."""
        if target_image is not None and (not torch.is_tensor(target_image) or target_image.ndim != 4
                                         or target_image.shape[1] != 3):
            raise ValueError("target_image: expected a (B, 3, H, W) tensor in 0..1")
        self._target_image = target_image
        self._target = target
        self._cache = {}

    @property
    def has_target(self) -> bool:
        return self._target is not None or self._target_image is not None

    def estimate(self, image01: torch.Tensor) -> PoseEstimate:
        """The estimator on an image in 0..1 (resized to ``estimator_size`` first when set)."""
        if self.estimator_size is not None and tuple(image01.shape[-2:]) != self.estimator_size:
            image01 = F.interpolate(image01, size=self.estimator_size, mode="bilinear", align_corners=False)
        return self.estimator(image01)

    def target_for(self, image01: torch.Tensor, target: PoseTarget | torch.Tensor | None = None) -> PoseTarget:
        """The :class:`PoseTarget` for a generated image of this size (computing ``P_phi(P)`` without gradient)."""
        if isinstance(target, PoseTarget):
            return target
        if torch.is_tensor(target):
            image = target
        elif self._target is not None:
            return self._target
        elif self._target_image is not None:
            image = self._target_image
        else:
            raise ValueError("PoseGuidance: no target pose (call set_target or pass target=)")
        key = (tuple(image01.shape[-2:]), image01.device, image01.dtype)
        cached = self._cache
        if cached.get("image") is image and cached.get("key") == key:      # one entry; holds the image alive
            return cached["target"]
        img = image.to(device=image01.device, dtype=image01.dtype)
        if img.shape[-2:] != image01.shape[-2:]:
            img = F.interpolate(img, size=image01.shape[-2:], mode="bilinear", align_corners=False)
        with torch.no_grad():
            est = self.estimate(img)
        tgt = PoseTarget(est.features.detach(), est.heatmaps.detach())
        self._cache = {"image": image, "key": key, "target": tgt}
        return tgt

    # ------------------------------------------------------------------------------------------------ eq 11
    def weight(self, generated_heatmaps: torch.Tensor | None, target: PoseTarget,
               size: tuple[int, int]) -> torch.Tensor:
        """``W_h`` (B, 1, h, w) on the compared grid: joint-heatmap sum > threshold (no gradient)."""
        def mask(hm):
            if hm is None:
                raise ValueError(f"PoseGuidance: mask_from={self.mask_from!r} needs target heatmaps")
            s = hm.detach().sum(1, keepdim=True)
            if tuple(s.shape[-2:]) != tuple(size):
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            return s > self.threshold

        if self.mask_from == "generated":
            m = mask(generated_heatmaps)
        elif self.mask_from == "target":
            m = mask(target.heatmaps)
        else:
            m = mask(generated_heatmaps) | mask(target.heatmaps)
        return m.float()

    def energy(self, image: torch.Tensor, target: PoseTarget | torch.Tensor | None = None) -> torch.Tensor:
        """Eq 11 for a decoded image (in ``image_range``): ``G`` per sample, shape (B,)."""
        return self._energy(image, target)[0]

    def _energy(self, image: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G per sample, W_h)``."""
        lo, hi = self.image_range
        image01 = (image - lo) / (hi - lo)
        tgt = self.target_for(image01, target)
        est = self.estimate(image01)
        if self.compare == "features":
            gen, ref = est.features, tgt.features
        else:
            gen, ref = est.heatmaps, tgt.heatmaps
        if ref is None:
            raise ValueError(f"PoseGuidance: the target has no {self.compare}")
        ref = ref.to(device=gen.device, dtype=gen.dtype)
        if tuple(ref.shape[-2:]) != tuple(gen.shape[-2:]):
            ref = F.interpolate(ref, size=gen.shape[-2:], mode="bilinear", align_corners=False)
        w = self.weight(est.heatmaps, tgt, tuple(gen.shape[-2:])).to(gen.dtype)
        sq = (gen - ref).pow(2).sum(1, keepdim=True)             # ||P_phi(P~_t) - P_phi(P)||^2 per location
        return (w * sq).flatten(1).sum(1), w                     # eq 11

    # ------------------------------------------------------------------------------------------- eq 13, 15
    def active(self, timestep) -> bool:
        if self.timestep_range is None:
            return True
        t = float(torch.as_tensor(timestep).float().flatten()[0])
        return self.timestep_range[0] <= t <= self.timestep_range[1]

    def gradient(self, latents: torch.Tensor, timestep, eps: torch.Tensor, alpha_bar, decode: Decode,
                 target: PoseTarget | torch.Tensor | None = None) -> torch.Tensor:
        """``grad G`` (eq 11) with respect to the Tweedie estimate ``y^_0(y_t, eps)`` (eq 13), shape of ``latents``.

        One decoder + estimator forward, one backward to ``y^_0`` only (``torch.autograd.grad`` with ``inputs=y^_0``
        computes no parameter gradients). When ``W_h`` is zero everywhere (no joint above the threshold), ``G`` is
        constant and the gradient is exactly zero: the backward is skipped."""
        with torch.enable_grad():
            x0 = tweedie_x0(latents.detach(), eps.detach().to(latents.dtype), alpha_bar)   # eq 13
            x0 = x0.detach().requires_grad_(True)
            g, w = self._energy(decode(x0), target)                                        # eq 11, P~_t = D(y^_0)
            if not bool(w.any()):
                return torch.zeros_like(x0).detach()
            (grad,) = torch.autograd.grad(g.sum(), x0)
        return grad.detach()

    def __call__(self, latents: torch.Tensor, timestep, eps: torch.Tensor, alpha_bar, decode: Decode,
                 target: PoseTarget | torch.Tensor | None = None) -> torch.Tensor:
        """Eq 15: the guided noise prediction ``eps + eta sqrt(1 - a_t) grad G`` (``eps`` unchanged if inactive)."""
        if not self.active(timestep) or self.scale == 0:
            return eps
        grad = self.gradient(latents, timestep, eps, alpha_bar, decode, target)
        return guided_eps(eps, grad, alpha_bar, self.scale)

    guide = __call__

    def guide_cfg(self, eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float,
                  latents: torch.Tensor, timestep, alpha_bar, decode: Decode,
                  target: PoseTarget | torch.Tensor | None = None) -> torch.Tensor:
        """Eq 16: ``eps_u + w_c ((eps_c - eps_u) + eta sqrt(1 - a_t) grad G)``.

        The gradient is taken at the Tweedie estimate of the classifier-free combination
        ``eps_u + w_c (eps_c - eps_u)`` (our best clean-image estimate at this step)."""
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        if not self.active(timestep) or self.scale == 0:
            return eps
        grad = self.gradient(latents, timestep, eps, alpha_bar, decode, target)
        return eps + guidance_scale * self.scale * (1 - _per_sample(alpha_bar, eps)).sqrt() * grad.to(eps.dtype)
