"""PCDMs from poses: a source photo and source / target :class:`~..pose.keypoints.Pose` -> images of the person in the
target poses. The one entry that the ComfyUI nodes, the command line (``transfer --method pcdms``, ``generate``),
:func:`posetransfer.transfer` and ``benchmarks/bench_pcdms.py`` call; it owns what turns poses into the pipelines'
inputs (the skeleton renderings both UNet stages see, the prior's pose vectors, the checks on canvases and
counts) and runs the pipelines of :mod:`.pipelines`.

Stages one at a time (:func:`prior_embed`, :func:`inpaint`, :func:`refine`: what the stage nodes run) or the whole
chain (:func:`transfer`: prior -> inpaint -> refine as the official scripts run one after the other, or the
simplified single-stage model). Images are (B, H, W, 3) float 0..1 (ComfyUI's IMAGE layout).

:data:`OFFICIAL` and :func:`official_dtypes` are what the released code did (squash to 512, its random-draw
order, its dtypes per part), so that a researcher gets the official set-up without knowing our defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..pose.keypoints import Pose
from ..pose.inputs import pose_frames, source_poses_for, target_poses_on_one_canvas
from ..pose.formats import pcdms_pose_vector
from ..pose.render import render_skeleton_batch
from .pipelines import (ChainOutput, ImageOutput, InpaintPipeline, PriorPipeline, RefinePipeline, SimplifiedPipeline,
                        run_pcdms)
from .schedulers import DEFAULT_SCHEDULERS
from ..schedulers import resolve_scheduler_name

__all__ = ["DEFAULT_STEPS", "OFFICIAL", "PCDMsModels", "pose_images", "pose_vectors", "prepare_poses",
           "prior_embed", "source_clip_embedding", "inpaint", "refine", "transfer", "official_dtypes", "kind_of"]

# Denoising steps of the official scripts (the prior, stages 2 and 3: 20; the simplified demo: 50)
DEFAULT_STEPS = {"prior": 20, "inpaint": 20, "refine": 20, "simplified": 50}
# Everything the official code did that differs from our defaults (``transfer(**OFFICIAL)``): images squashed to
# the 512 frame, the prior's per-step noise and the simplified model's VAE sample from torch's global RNG.
OFFICIAL = {"layout": "squash", "resolution": 512, "official_rng": True}


def kind_of(model) -> str:
    """'prior' | 'inpaint' | 'refine' | 'simplified' of a loaded PCDMs model."""
    from .kinds import _CLASS_TO_KIND

    kind = _CLASS_TO_KIND.get(type(model).__name__)
    if kind is None:
        raise ValueError(f"expected a PCDMs model (prior, inpaint, refine or simplified), got {type(model).__name__}")
    return kind


def _require_kind(model, kinds: tuple[str, ...], what: str) -> str:
    kind = kind_of(model)
    if kind not in kinds:
        raise ValueError(f"{what}: expected a PCDMs {' or '.join(kinds)} model, got a '{kind}' model")
    return kind


# ------------------------------------------------------------------------------------------- pose inputs
def pose_images(poses: Sequence[Pose]) -> torch.Tensor:
    """The OpenPose skeletons the UNet stages were trained on, (B, H, W, 3) float 0..1 at the poses' canvas."""
    return torch.from_numpy(render_skeleton_batch(poses).astype(np.float32) / 255.0)


def pose_vectors(poses: Sequence[Pose], what: str) -> torch.Tensor:
    """The prior's pose coordinates (B, 36) (:func:`~..pose.formats.pcdms_pose_vector`)."""
    return torch.from_numpy(np.stack([pcdms_pose_vector(p, what) for p in poses]))


def prepare_poses(source_image: torch.Tensor, source_poses, target_poses) -> tuple[list[Pose], list[Pose]]:
    """The checked poses of one call: every frame with a person, the target poses on one canvas, one source frame
    per source image (1 image, or one per target frame) fitted to the image's canvas."""
    targets = target_poses_on_one_canvas(pose_frames(target_poses, "target_pose"))
    sources = pose_frames(source_poses, "source_pose")
    sources = source_poses_for(tuple(source_image.shape[1:3]), source_image.shape[0], sources, len(targets))
    return sources, targets


def _images(images, what: str) -> torch.Tensor:
    x = torch.as_tensor(images)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] not in (3, 4) or not x.is_floating_point():
        raise ValueError(f"{what}: expected float (B, H, W, 3) images in 0..1, got {tuple(x.shape)} {x.dtype}")
    return x[..., :3]


# ----------------------------------------------------------------------------------------------- stages
def source_clip_embedding(clip, source_image, *, layout: str = "pad", resolution: int = 512) -> torch.Tensor:
    """CLIP image embedding of the source photo in the frame: stage 2's stand-in for the prior's prediction."""
    return PriorPipeline(None, clip, size=resolution, layout=layout).encode_source(_images(source_image,
                                                                                           "source_image"))


def prior_embed(prior, clip, source_image, source_poses, target_poses, *, steps: int = 20, cfg: float = 0.0,
                seed: int | None = 42, generator=None, layout: str = "pad", resolution: int = 512,
                official_rng: bool = False, source_embedding=None, callback: Callable | None = None
                ) -> torch.Tensor:
    """Stage 1: the predicted CLIP image embedding (N, D) of the person in each target pose. ``source_embedding``:
    the source's CLIP embedding computed elsewhere (then ``clip`` may be None; it still gives the unconditional
    branch's null embedding when ``cfg`` > 1)."""
    image = _images(source_image, "source_image")
    sources, targets = prepare_poses(image, source_poses, target_poses)
    _require_kind(prior, ("prior",), "prior")
    pipe = PriorPipeline(prior, clip, size=resolution, layout=layout)
    out = pipe(pose_vectors(sources, "source_pose"), pose_vectors(targets, "target_pose"), source_embedding,
               source_image=image, steps=steps, guidance_scale=cfg, seed=seed if generator is None else None, generator=generator,
               official_rng=official_rng, callback=callback)
    return out.embeddings


def _side_by_side(model, vae, dino, scheduler, resolution, layout):
    kind = _require_kind(model, ("inpaint", "simplified"), "model")
    name = resolve_scheduler_name(scheduler, DEFAULT_SCHEDULERS[kind])
    if kind == "simplified":  # None: the demo's own DDIM call (the same schedule as make_scheduler("ddim"))
        return kind, SimplifiedPipeline(model, vae, dino, None if name == "ddim" else name, resolution, layout)
    return kind, InpaintPipeline(model, vae, dino, name, resolution, layout)


def inpaint(model, vae, dino, source_image, source_poses, target_poses, *, target_embedding=None, clip=None,
            steps: int | None = None, cfg: float = 2.0, scheduler: str | None = "default", seed: int | None = 42,
            generator=None, layout: str = "pad", resolution: int = 512, num_samples: int = 1,
            official_rng: bool = False, pose_guidance=None, guidance_decode=None, image_features=None,
            decode: bool = True, callback: Callable | None = None) -> ImageOutput:
    """Stage 2 (or the simplified model): the person of ``source_image`` in each target pose, at the target pose's
    canvas size. Stage 2's global condition is ``target_embedding`` (the prior's output), else the source photo's
    CLIP embedding (``clip``) stands in. ``pose_guidance`` / ``guidance_decode``: RePoseDM pose guidance on the
    target half (see :meth:`.pipelines.InpaintPipeline.sample_prepared`). ``image_features``: DINOv2 tokens of the
    source frame computed elsewhere (then ``dino`` may be None); ``decode=False`` returns the final latents."""
    image = _images(source_image, "source_image")
    sources, targets = prepare_poses(image, source_poses, target_poses)
    kind, pipe = _side_by_side(model, vae, dino, scheduler, resolution, layout)
    kwargs = dict(steps=DEFAULT_STEPS[kind] if steps is None else steps, guidance_scale=cfg, num_samples=num_samples,
                  seed=seed if generator is None else None, generator=generator, callback=callback,
                  image_features=image_features, decode=decode)
    if pose_guidance is not None:
        kwargs.update(pose_guidance=pose_guidance, guidance_decode=guidance_decode)
    if kind == "simplified":
        return pipe(image, pose_images(sources), pose_images(targets), official_rng=official_rng, **kwargs)
    if target_embedding is None:
        if clip is None:
            raise ValueError("inpaint: stage 2 needs the prior's target embedding or a CLIP encoder (the source "
                             "photo's embedding then stands in)")
        target_embedding = source_clip_embedding(clip, image, layout=layout, resolution=resolution)
    elif torch.as_tensor(target_embedding).shape[0] not in (1, len(targets)):
        raise ValueError(f"target_embedding: expected one embedding per target pose frame ({len(targets)}), got "
                         f"{torch.as_tensor(target_embedding).shape[0]}")
    return pipe(image, pose_images(sources), pose_images(targets), target_embedding, **kwargs)


def refine(model, vae, dino, coarse_image, source_image, *, steps: int = 20, cfg: float = 2.0,
           scheduler: str | None = "default", seed: int | None = 42, generator=None, layout: str = "pad",
           resolution: int = 512, guidance_rescale="official", pose_guidance=None, guidance_decode=None,
           image_features=None, decode: bool = True, callback: Callable | None = None) -> ImageOutput:
    """Stage 3: ``coarse_image`` (stage 2's output, any size) refined with the source photo's DINOv2 tokens; output
    at the coarse image's size. ``source_image``: 1 image or one per coarse image; ``image_features`` / ``decode``
    as :func:`inpaint`."""
    coarse, source = _images(coarse_image, "coarse_image"), _images(source_image, "source_image")
    if source.shape[0] not in (1, coarse.shape[0]):
        raise ValueError(f"source_image: expected 1 or one per coarse_image ({coarse.shape[0]}), got "
                         f"{source.shape[0]}")
    _require_kind(model, ("refine",), "model")
    pipe = RefinePipeline(model, vae, dino, resolve_scheduler_name(scheduler, DEFAULT_SCHEDULERS["refine"]),
                          resolution, layout)
    kwargs = {} if pose_guidance is None else dict(pose_guidance=pose_guidance, guidance_decode=guidance_decode)
    return pipe(coarse, source, steps=steps, guidance_scale=cfg, guidance_rescale=guidance_rescale,
                seed=seed if generator is None else None, generator=generator, callback=callback,
                image_features=image_features, decode=decode, **kwargs)


# ------------------------------------------------------------------------------------------------ chain
@dataclass
class PCDMsModels:
    """What one PCDMs run needs: ``inpaint`` (stage 2, or the simplified model), optionally ``prior`` (stage 1) and
    ``refine`` (stage 3); the VAE codec (:class:`~.encoders.LatentCodec`), the DINOv2 token encoder and (for the
    prior, or stage 2 without it) the CLIP image encoder."""

    inpaint: torch.nn.Module
    vae: object
    dino: object
    prior: torch.nn.Module | None = None
    refine: torch.nn.Module | None = None
    clip: object | None = None
    extras: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return kind_of(self.inpaint)


def transfer(source_image, source_poses, target_poses, models: PCDMsModels, *, seed: int | None = 42,
             steps: int | None = None, cfg: float = 2.0, prior_cfg: float = 0.0, scheduler: str | None = "default",
             layout: str = "pad", resolution: int = 512, num_samples: int = 1, official_rng: bool = False,
             generator_device="cpu", callback: Callable | None = None,
             on_stage_done: Callable[[str], None] | None = None,
             make_pose_guidance: Callable[[], object] | None = None) -> ChainOutput:
    """The whole method: prior -> inpaint -> refine (each stage seeded with ``seed``, as the official scripts each
    seed 42; stage 3 gets stage 2's frame quantised to 8 bits, as the official stage 3 reads stage 2's PNG), or the
    simplified model alone. ``steps`` None: the official count per stage (20; 50 simplified). ``num_samples``
    samples per target pose (stage 2 draws them in one call, as the official scripts' 4), each refined once;
    outputs are ordered target-major: ``images[i * num_samples + k]``. Without a prior the source photo's CLIP
    embedding stands in for the target's (not the method: a warning is the caller's to give).
    ``make_pose_guidance``: makes a fresh RePoseDM pose guidance per UNet stage (None: unguided, unchanged)."""
    kind = models.kind
    image = _images(source_image, "source_image")
    if kind == "simplified":
        gen = None if seed is None else torch.Generator(generator_device).manual_seed(int(seed))
        out = inpaint(models.inpaint, models.vae, models.dino, image, source_poses, target_poses, steps=steps,
                      cfg=cfg, scheduler=scheduler, seed=None, generator=gen, layout=layout, resolution=resolution,
                      num_samples=num_samples, official_rng=official_rng, callback=callback,
                      pose_guidance=None if make_pose_guidance is None else make_pose_guidance())
        return ChainOutput(images=out.images, coarse=out, refined=None, target_embedding=None, prior=None)
    if models.prior is not None:
        _require_kind(models.prior, ("prior",), "prior")
        if models.clip is None:
            raise ValueError("the PCDMs prior needs a CLIP image encoder (clip)")
    if models.refine is not None:
        _require_kind(models.refine, ("refine",), "refine")
    sources, targets = prepare_poses(image, source_poses, target_poses)
    _, pipe = _side_by_side(models.inpaint, models.vae, models.dino, scheduler, resolution, layout)
    refine_pipe = None if models.refine is None else RefinePipeline(
        models.refine, models.vae, models.dino, resolve_scheduler_name(scheduler, DEFAULT_SCHEDULERS["refine"]),
        resolution, layout)
    prior_pipe = None if models.prior is None else PriorPipeline(models.prior, models.clip, size=resolution,
                                                                 layout=layout)
    target_embedding = None
    if prior_pipe is None:
        if models.clip is None:
            raise ValueError("PCDMs without a prior needs a CLIP image encoder (clip): the source photo's embedding "
                             "stands in for the target's")
        target_embedding = source_clip_embedding(models.clip, image, layout=layout, resolution=resolution)
    n = DEFAULT_STEPS["inpaint"] if steps is None else int(steps)
    return run_pcdms(image, pose_images(sources), pose_images(targets), pose_vectors(sources, "source_pose"),
                     pose_vectors(targets, "target_pose"), inpaint=pipe, prior=prior_pipe, refine=refine_pipe,
                     clip_encoder=models.clip, dino_encoder=models.dino, target_embedding=target_embedding,
                     num_samples=num_samples, seed=seed, generator_device=generator_device, steps=(n, n, n),
                     guidance_scale=(prior_cfg, cfg, cfg), layout=layout, official_rng=official_rng,
                     callback=callback, on_stage_done=on_stage_done, make_pose_guidance=make_pose_guidance)


def official_dtypes(kind: str, half: torch.dtype = torch.float16) -> dict[str, torch.dtype]:
    """The dtype of each part of a ``kind`` model in the official inference scripts (``shared/reference/pcdms/
    README.md``): stage 2 runs its UNet in fp16 next to an fp32 pose encoder and image projection; stage 3 its UNet
    in fp32; the simplified demo everything in fp16; the VAE in fp16 in every UNet stage, DINOv2 / CLIP in fp32
    except in the simplified demo. The prior's dtype is not documented: fp32. ``half``: the 16-bit type (bfloat16 as
    a stand-in where float16 kernels are missing, e.g. on some CPUs). Keys: the model's sub-module names, plus
    ``vae`` and ``encoders``."""
    f32 = torch.float32
    table = {
        "prior": {"": f32, "vae": f32, "encoders": f32},
        "inpaint": {"unet": half, "pose_proj": f32, "image_proj_model_p": f32, "vae": half, "encoders": f32},
        "refine": {"unet": f32, "image_proj_model_p": f32, "vae": half, "encoders": f32},
        "simplified": {"unet": half, "pose_proj": half, "image_proj_model": half, "vae": half, "encoders": half},
    }
    return dict(table[kind])


def apply_dtypes(model: torch.nn.Module, dtypes: dict[str, torch.dtype]) -> torch.nn.Module:
    """Cast each named sub-module of ``model`` to its dtype (``""``: the whole model); other keys are ignored."""
    for name, dtype in dtypes.items():
        if name == "":
            model.to(dtype)
        elif isinstance(getattr(model, name, None), torch.nn.Module):
            getattr(model, name).to(dtype)
    return model
