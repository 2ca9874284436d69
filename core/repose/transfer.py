"""RePoseDM from poses: a source photo and target :class:`~..pose.keypoints.Pose` -> images of the person in the target
poses. The one entry that the ComfyUI nodes (PoseAlign, Sampler), the command line (``transfer --method repose``,
``generate``) and :func:`posetransfer.transfer` call.

Frames: the target pose is re-scaled to a working frame ``resolution`` pixels high (the width follows the pose
canvas' aspect ratio; both multiples of the VAE factor) and rendered there as the OpenPose skeleton the model was
trained on (``training/train_repose.py`` renders the same way); the source photo is resized (stretched) to that
frame. Outputs are resized back to the target pose's canvas. RePose needs no source pose: PoseAlign finds the
correspondence from the photo and the target pose (eq 1-9).

The codec is the core's (:class:`.sampler.VaeCodec`: images in [-1, 1], latents scaled by the VAE's factor) or any
object with its ``encode`` / ``decode`` / ``factor`` (a ComfyUI VAE through ``nodes/adapters.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..pose.geometry import resize
from ..pose.keypoints import Pose
from ..pose.inputs import pose_frames, target_poses_on_one_canvas
from ..pose.render import render_skeleton
from ..schedulers import make_scheduler as _make_shared_scheduler
from ..schedulers import resolve_scheduler_name
from .denoiser import repose_noise_scheduler
from .guidance import PoseGuidance, PoseTarget, pose_heatmaps_coco17
from .pose_align import PoseAlignOutput
from .sampler import RePoseSampler

__all__ = ["DEFAULT_SCHEDULER", "GUIDANCE_TARGETS", "KEYPOINT_SIGMA", "AlignedSource", "working_size",
           "pose_images", "to_frame", "to_canvas", "keypoint_target", "make_scheduler", "align", "sample", "transfer"]

DEFAULT_SCHEDULER = "ddpm"  # ancestral with the learned variance: as trained
# What eq 11 compares the generated image with. "skeleton": the estimator's backbone features of the rendered target
# skeleton (the paper's letter: P is the pose image; a stick figure, another domain than the photo). "keypoints":
# the estimator's heatmaps of the generated image against Gaussian heatmaps drawn at the target keypoints (our
# option; sigma KEYPOINT_SIGMA px of the decoded image, about 3 px on HigherHRNet's stride-2 heatmap grid, between the
# sigma 2 its two resolutions were trained with).
GUIDANCE_TARGETS = ("skeleton", "keypoints")
KEYPOINT_SIGMA = 6.0


@dataclass
class AlignedSource:
    """PoseAlign's output for one call (``F_S^N`` and the flow, on the CPU) on the working frame ``size`` (H, W),
    with the source images (B, 3, H, W, 0..1), the target pose canvas (W, H), the frame count and the rendered
    target pose images (B, 3, H, W) it was computed for."""

    aligned: PoseAlignOutput
    source_images: torch.Tensor
    size: tuple[int, int]
    canvas: tuple[int, int]
    frames: int
    pose_images: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------ frames
def working_size(canvas_w: int, canvas_h: int, resolution: int, factor: int) -> tuple[int, int]:
    """(H, W): ``resolution`` high (a multiple of ``factor``), the width from the canvas' aspect ratio."""
    h = max(factor, int(round(resolution / factor)) * factor)
    w = max(factor, int(round(resolution * canvas_w / canvas_h / factor)) * factor)
    return h, w


def pose_images(target_poses, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The target skeleton(s) rendered on the working frame: (B, 3, H, W) 0..1 and the canvas (W, H)."""
    poses = target_poses_on_one_canvas(pose_frames(target_poses, "target_pose"))
    h, w = size
    images = [render_skeleton(resize(None, p, w, h)[1]) for p in poses]
    return (torch.from_numpy(np.stack(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2),
            (poses[0].width, poses[0].height))


def to_frame(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, 3) 0..1 -> (B, 3, h, w) on the working frame ``size`` (stretched, antialiased)."""
    x = torch.as_tensor(images).float()
    x = (x[None] if x.ndim == 3 else x)[..., :3].movedim(-1, 1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def to_canvas(images: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) 0..1 -> (B, h, w, 3) at the canvas (w, h)."""
    w, h = canvas
    x = images.float()
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).movedim(1, -1).contiguous().cpu()


def keypoint_target(poses: Sequence[Pose], size: tuple[int, int]) -> PoseTarget:
    """Gaussian COCO-17 heatmaps (B, 17, H, W) of the first person of each pose, on the working frame ``size``."""
    h, w = size
    return PoseTarget(heatmaps=torch.cat([pose_heatmaps_coco17(resize(None, p, w, h)[1], sigma=KEYPOINT_SIGMA)
                                          for p in poses]))


def make_scheduler(name: str | None = "default"):
    """A scheduler of the shared vocabulary (:mod:`...schedulers`) on RePose's training noise schedule (T = 1000,
    linear); ``ddpm`` (the default) uses the learned variance."""
    return _make_shared_scheduler(resolve_scheduler_name(name, DEFAULT_SCHEDULER), repose_noise_scheduler().config)


# ------------------------------------------------------------------------------------------------ stages
@torch.no_grad()
def align(pose_align, codec, source_image, target_poses, *, resolution: int = 256, iterations: int | None = None,
          device=None) -> AlignedSource:
    """PoseAlign (eq 1-9): the source photo's latent features aligned to each target pose. ``source_image``
    (B, H, W, 3) 0..1: 1 image or one per target pose frame."""
    poses = pose_frames(target_poses, "target_pose")
    size = working_size(poses[0].width, poses[0].height, int(resolution), codec.factor)
    rendered, canvas = pose_images(poses, size)
    source = to_frame(source_image, size)
    b = rendered.shape[0]
    if source.shape[0] not in (1, b):
        raise ValueError(f"source_image: expected 1 image or one per target pose frame ({b}), got "
                         f"{source.shape[0]}")
    source = source.expand(b, -1, -1, -1)
    p = next(pose_align.parameters())
    device, dtype = (p.device if device is None else device), p.dtype
    pose_latents = codec.encode(rendered.to(device) * 2 - 1).to(dtype)
    out = pose_align((source.to(device) * 2 - 1).to(dtype), pose_latents, lambda x: codec.encode(x).to(dtype),
                     num_iterations=iterations or None)
    aligned = type(out)(features=out.features.float().cpu(), flow=out.flow.float().cpu(),
                        image_flow=out.image_flow.float().cpu(), warped_image=out.warped_image.float().cpu())
    return AlignedSource(aligned, source.cpu(), size, canvas, b, rendered.cpu())


def _clone_aligned(aligned):
    return type(aligned)(features=aligned.features.clone(), flow=aligned.flow.clone(),
                         image_flow=aligned.image_flow.clone(), warped_image=aligned.warped_image.clone())


def sample(denoiser, codec, features: AlignedSource, target_poses, *, seed: int | None = 42, steps: int = 50,
           w_c: float = 2.0, scheduler: str | None = "default", pose_guidance: PoseGuidance | None = None,
           guidance_decode_scale: float = 1.0, callback: Callable | None = None,
           features_what: str = "the aligned features") -> torch.Tensor:
    """Sampling (eq 16 with ``w_c``; optional pose gradient guidance): the person in each target pose, (B, h, w, 3)
    0..1 at the target pose's canvas. ``target_poses`` must be those ``features`` were aligned to (errors name
    ``features`` as ``features_what``)."""
    rendered, canvas = pose_images(target_poses, features.size)
    if canvas != features.canvas:
        raise ValueError(f"target_pose: canvas {canvas[0]}x{canvas[1]}, but {features_what} were computed for "
                         f"{features.canvas[0]}x{features.canvas[1]}; give PoseAlign and the sampler the same "
                         f"target pose")
    if rendered.shape[0] != features.frames:
        raise ValueError(f"target_pose: {rendered.shape[0]} frame(s), but {features_what} were computed for "
                         f"{features.frames}; give PoseAlign and the sampler the same target pose")
    if features.pose_images is not None and not torch.equal(rendered.cpu(), features.pose_images):
        raise ValueError(f"target_pose: not the pose that PoseAlign aligned {features_what} to (the source would "
                         f"be sampled into one pose with features warped to another); give PoseAlign and the sampler "
                         f"the same target pose")
    latent_grid = (features.size[0] // codec.factor, features.size[1] // codec.factor)
    if tuple(features.aligned.features.shape[-2:]) != latent_grid:
        raise ValueError(f"{features_what}: computed with another VAE (latent grid mismatch)")
    sampler = RePoseSampler(denoiser, None, codec, make_scheduler(scheduler))
    out = sampler(features.source_images.clone(), rendered, num_inference_steps=int(steps),
                  guidance_scale=float(w_c), pose_guidance=pose_guidance, seed=None if seed is None else int(seed),
                  guidance_decode_scale=guidance_decode_scale, callback=callback,
                  aligned=_clone_aligned(features.aligned))
    return to_canvas(out.images, canvas)


def transfer(source_image, target_poses, denoiser, pose_align, codec, *, resolution: int = 256,
             iterations: int | None = None, seed: int | None = 42, steps: int = 50, w_c: float = 2.0,
             scheduler: str | None = "default", estimator=None, guidance_scale: float = 1.0,
             guidance_threshold: float = 0.1, guidance_target: str = "skeleton", num_samples: int = 1,
             callback: Callable | None = None) -> torch.Tensor:
    """PoseAlign then sampling: (B * num_samples, h, w, 3), target-major (``images[i * num_samples + k]``; sample k
    with seed ``seed + k``). ``estimator``: a pose estimator module (HigherHRNet) for pose gradient guidance
    (eq 11-16) at ``guidance_scale``; ``guidance_target`` as :data:`GUIDANCE_TARGETS`."""
    if guidance_target not in GUIDANCE_TARGETS:
        raise ValueError(f"guidance_target: expected one of {GUIDANCE_TARGETS}, got {guidance_target!r}")
    poses = pose_frames(target_poses, "target_pose")
    feats = align(pose_align, codec, source_image, poses, resolution=resolution, iterations=iterations)
    outs = []
    for k in range(int(num_samples)):
        guidance = None
        if estimator is not None and guidance_scale != 0:
            kw = dict(compare="heatmaps", target=keypoint_target(poses, feats.size)) \
                if guidance_target == "keypoints" else {}
            guidance = PoseGuidance(estimator, None, scale=guidance_scale, threshold=guidance_threshold, **kw)
        with torch.enable_grad() if guidance is not None else torch.no_grad():
            outs.append(sample(denoiser, codec, feats, poses, seed=None if seed is None else int(seed) + k,
                               steps=steps, w_c=w_c, scheduler=scheduler, pose_guidance=guidance, callback=callback))
    return torch.stack(outs, 1).reshape(-1, *outs[0].shape[1:])
