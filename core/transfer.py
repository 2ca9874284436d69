"""One call for every method: ``posetransfer.transfer(image, source_pose, target_pose, method=...)``.

Methods (:data:`METHODS`):

* ``parts`` -- training-free FlowWarp (:func:`..flowwarp.flow_warp`); ``single`` / ``structure`` -- FlowWarp with a
  learned flow model (``model=``: the single-transformation or the structure-aware part-flow model that
  ``posetransfer train-flow`` writes).
* ``pcdms`` -- prior -> inpaint -> refine (``prior=``, ``inpaint=``, ``refine=``: the released checkpoint files or
  converted folders; ``clip=``, ``dino=``, ``vae=``: local transformers / diffusers folders); ``pcdms-simplified``
  -- the single-stage release (``model=``, ``dino=``, ``vae=``). Through :mod:`.pcdms.transfer`, the entry the
  nodes run.
* ``repose`` -- RePoseDM (``model=``: a folder written by train_repose; ``vae=``), through :mod:`.repose.transfer`.

``pose_guidance=`` (a HigherHRNet ``.pth``) adds RePoseDM's pose gradient guidance to the diffusion methods. Model
arguments take a path or an already loaded object; :func:`load_models` loads once for many calls (the command
line's ``generate`` does). Images: a path or an (H, W, 3) array (uint8, or float in 0..1); poses: a
:class:`~.pose.keypoints.Pose`, a list of them, an OpenPose JSON path or a POSE_KEYPOINT value. Returns a list of
(H, W, 3) float32 images in 0..1, one per target frame (times ``samples``, target-major) at the target's canvas.

``official=True`` (PCDMs): what the released code did -- images squashed to the 512 frame, its random-draw order
(torch's global RNG, seeded with ``seed``, for the prior's per-step noise and the simplified model's VAE sample;
the generators on the model's device), its dtype per part (:func:`.pcdms.transfer.official_dtypes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .pose.keypoints import Pose

__all__ = ["METHODS", "FLOWWARP_METHODS", "DIFFUSION_METHODS", "LoadedModels", "load_models", "transfer",
           "as_image", "as_poses"]

FLOWWARP_METHODS = ("parts", "single", "structure")
DIFFUSION_METHODS = ("pcdms", "pcdms-simplified", "repose")
METHODS = FLOWWARP_METHODS + DIFFUSION_METHODS
_NEEDS = {"single": ("model",), "structure": ("model",), "pcdms": ("inpaint", "dino", "vae", "clip"),
          "pcdms-simplified": ("model", "dino", "vae"), "repose": ("model", "vae")}


# ------------------------------------------------------------------------------------------------ inputs
def as_image(image) -> np.ndarray:
    """A path or an (H, W, 3) / (1, H, W, 3) array or tensor (uint8, or float in 0..1) -> float32 (H, W, 3)."""
    from .images import load_image

    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    a = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected an (H, W, 3) picture, got shape {a.shape}")
    a = a[..., :3].astype(np.float32) / 255.0 if a.dtype == np.uint8 else a[..., :3].astype(np.float32)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError("image: expected values in 0..1 (or uint8)")
    return a


def as_poses(poses, what: str, size_hw: tuple[int, int] | None = None) -> list[Pose]:
    """A Pose, a list of them, an OpenPose JSON path or a POSE_KEYPOINT value -> a non-empty list of Pose."""
    from .pose.formats import load_pose_keypoint, read_openpose_json

    if isinstance(poses, Pose):
        out = [poses]
    elif isinstance(poses, (str, os.PathLike)):
        if not os.path.isfile(poses):
            raise FileNotFoundError(f"{what}: no such file: {poses}")
        out = read_openpose_json(poses, default_size=size_hw)
    elif isinstance(poses, (list, tuple)) and poses and all(isinstance(p, Pose) for p in poses):
        out = list(poses)
    else:
        out = load_pose_keypoint(poses, what=what)
    if not out:
        raise ValueError(f"{what}: expected at least one frame, got none")
    return out


# ------------------------------------------------------------------------------------------------ models
@dataclass
class LoadedModels:
    """The models of one method, loaded (:func:`load_models`); pass as ``models=`` to :func:`transfer`."""

    method: str
    parts: dict[str, Any] = field(default_factory=dict)
    official: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _load_autoencoder(path, dtype, device):
    from diffusers import AutoencoderKL

    path = os.fspath(path)
    for sub in (None, "vae"):
        folder = path if sub is None else os.path.join(path, sub)
        if os.path.isfile(os.path.join(folder, "config.json")):
            return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True).to(device).eval()
    raise FileNotFoundError(f"vae: {path}: expected a diffusers AutoencoderKL folder (config.json + weights), or a "
                            f"model folder with vae/ in it")


def _estimator(value, device):
    if value is None or isinstance(value, torch.nn.Module):
        return value
    from .repose.pose_estimator import load_pose_estimator

    if not os.path.isfile(value):
        raise FileNotFoundError(f"pose_guidance: no such file: {value}")
    return load_pose_estimator(value).to(device).eval()


def load_models(method: str, *, model=None, prior=None, inpaint=None, refine=None, clip=None, dino=None, vae=None,
                pose_guidance=None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                official: bool = False, half: torch.dtype = torch.float16) -> LoadedModels:
    """Load what ``method`` needs (paths, or objects already loaded, which are used as they are). ``dtype``: the
    weights' dtype (default float32); ``official`` (PCDMs): the official dtype per part, 16-bit parts in ``half``."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if official and method not in ("pcdms", "pcdms-simplified"):
        raise ValueError(f"official: only PCDMs has released code to follow; method {method!r} has no official "
                         f"set-up")
    given = dict(model=model, prior=prior, inpaint=inpaint, refine=refine, clip=clip, dino=dino, vae=vae)
    missing = [k for k in _NEEDS.get(method, ()) if given[k] is None]
    if missing:
        raise ValueError(f"method {method}: needs {', '.join(missing)} (model files or folders); see "
                         f"posetransfer.core.transfer")
    if method == "parts" and model is not None:
        raise ValueError("model: method 'parts' is training-free; use method 'structure' (part-flow model) or "
                         "'single' with a trained flow model")
    device = torch.device(device)
    loaded = LoadedModels(method, official=official, device=device)
    p = loaded.parts
    if method in ("single", "structure"):
        from .flow_models.model_files import detect_model_kind, load_flow_model

        kind = "single" if method == "single" else "parts"
        if isinstance(model, (str, os.PathLike)):
            found = detect_model_kind(model)
            if found != kind:
                names = {"single": "single-transformation", "parts": "structure-aware part-flow"}
                right = "single" if found == "single" else "structure"
                raise ValueError(f"model: {model} holds a {names[found]} model; use method {right!r} with it")
            model = load_flow_model(model, kind, device=device)
        p["estimator"] = model
    elif method in ("pcdms", "pcdms-simplified"):
        from .pcdms import load_pcdms
        from .pcdms.encoders import CLIPImageEmbedder, DINOv2TokenEncoder, DiffusersVAE
        from .pcdms.transfer import apply_dtypes, kind_of, official_dtypes

        def unet_model(value, kind):
            if value is None:
                return None
            m = value if isinstance(value, torch.nn.Module) else load_pcdms(value, kind, dtype=torch.float32,
                                                                           device="cpu")
            if kind_of(m) != kind:
                raise ValueError(f"{kind if method == 'pcdms' else 'model'}: expected a PCDMs {kind} checkpoint, "
                                 f"got a {kind_of(m)} model")
            if official:
                apply_dtypes(m, official_dtypes(kind, half))
            elif dtype is not None:
                m.to(dtype)
            return m.to(device).eval()

        stages = {"inpaint": inpaint, "prior": prior, "refine": refine} if method == "pcdms" \
            else {"inpaint": model}
        for stage, value in stages.items():
            p[stage] = unet_model(value, "simplified" if method == "pcdms-simplified" else stage)
        kind = "simplified" if method == "pcdms-simplified" else "inpaint"
        enc_dtype = official_dtypes(kind, half)["encoders"] if official else (dtype or torch.float32)
        vae_dtype = official_dtypes(kind, half)["vae"] if official else (dtype or torch.float32)
        p["dino"] = dino if not isinstance(dino, (str, os.PathLike)) else \
            DINOv2TokenEncoder.from_pretrained(dino, device=device, dtype=enc_dtype)
        p["clip"] = clip if not isinstance(clip, (str, os.PathLike)) else \
            CLIPImageEmbedder.from_pretrained(clip, device=device, dtype=enc_dtype)
        p["vae"] = vae if not isinstance(vae, (str, os.PathLike)) else \
            DiffusersVAE(_load_autoencoder(vae, vae_dtype, device))
        p["estimator"] = _estimator(pose_guidance, device)
    elif method == "repose":
        from .repose.model_files import load_repose_model
        from .repose.sampler import VaeCodec

        if isinstance(model, (str, os.PathLike)):
            denoiser, pose_align, info = load_repose_model(model, device=device, dtype=dtype)
        else:
            denoiser, pose_align, info = model
        p.update(denoiser=denoiser, pose_align=pose_align, info=info)
        p["vae"] = vae if not isinstance(vae, (str, os.PathLike)) else \
            VaeCodec(_load_autoencoder(vae, dtype or torch.float32, device))
        p["estimator"] = _estimator(pose_guidance, device)
    return loaded


# -------------------------------------------------------------------------------------------------- run
def transfer(image, source_pose, target_pose, method: str = "parts", *, models: LoadedModels | None = None,
             seed: int | None = 42, steps: int | None = None, cfg: float | None = None,
             scheduler: str | None = "default", layout: str | None = None, resolution: int | None = None,
             samples: int = 1, official: bool | None = None, guidance_scale: float = 1.0,
             guidance_threshold: float = 0.1, guidance_target: str = "skeleton", callback=None,
             **options) -> list[np.ndarray]:
    """The person of ``image`` in each target pose by ``method`` (see the module docstring). FlowWarp options
    (``retarget``, ``segmentation``, ``background``, ...) go in ``options``, as do the model paths for
    :func:`load_models` (``model``, ``prior``, ``inpaint``, ``refine``, ``clip``, ``dino``, ``vae``,
    ``pose_guidance``, ``device``, ``dtype``). ``steps`` / ``cfg`` None: the method's defaults (PCDMs 20 steps
    per stage, 50 simplified, cfg 2; RePose 50 steps, w_c 2). ``layout`` / ``resolution``: PCDMs' frame (pad / 512;
    official: squash / 512); RePose's working-frame height (256). ``official`` None: as ``models`` were loaded
    (official dtypes come with the official frame and draws); False with official ``models``: their dtypes, our
    settings. ``guidance_scale`` / ``guidance_threshold`` /
    ``guidance_target``: the pose guidance's eta, W_h threshold and comparison (with ``pose_guidance``)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if int(samples) < 1:
        raise ValueError(f"samples: expected 1 or more, got {samples!r}")
    load_keys = ("model", "prior", "inpaint", "refine", "clip", "dino", "vae", "pose_guidance", "device", "dtype")
    load_kw = {k: options.pop(k) for k in load_keys if k in options}
    if models is None:
        models = load_models(method, official=bool(official), **load_kw)
    elif load_kw:
        raise ValueError(f"give either models= or model paths ({', '.join(load_kw)}), not both")
    elif models.method != method:
        raise ValueError(f"models: loaded for method {models.method!r}, not {method!r}")
    img = as_image(image)
    size = img.shape[:2]
    sources = as_poses(source_pose, "source_pose", size) if source_pose is not None else None
    targets = as_poses(target_pose, "target_pose", size)
    if method in FLOWWARP_METHODS:
        return _flowwarp(img, sources, targets, method, models, options)
    if options:
        raise ValueError(f"method {method}: unknown option(s) {', '.join(sorted(options))}")
    if method == "repose":
        return _repose(img, targets, models, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler,
                       resolution=resolution, samples=samples, guidance=(guidance_scale, guidance_threshold),
                       guidance_target=guidance_target, callback=callback)
    if sources is None:
        raise ValueError("source_pose: PCDMs needs the source photo's pose")
    return _pcdms(img, sources, targets, models, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler, layout=layout,
                  resolution=resolution, samples=samples, official=models.official if official is None else official,
                  guidance=(guidance_scale, guidance_threshold), guidance_target=guidance_target, callback=callback)


def _hwc_list(images: torch.Tensor) -> list[np.ndarray]:
    return [im.detach().float().clamp(0, 1).cpu().numpy() for im in images]


def _flowwarp(img, sources, targets, method, models, options) -> list[np.ndarray]:
    from .warp.flowwarp import FlowWarpOptions, flow_warp

    if sources is None:
        raise ValueError("source_pose: FlowWarp needs the source photo's pose")
    if len(sources) != 1:
        raise ValueError(f"source_pose: expected one frame (the source photo's pose), got {len(sources)}")
    estimator = models.parts.get("estimator")
    opts = FlowWarpOptions(method=method, **options)
    results = flow_warp([img], sources[:1], targets, opts, estimator=estimator)
    return [r.image.permute(1, 2, 0).detach().cpu().numpy().astype(np.float32) for r in results]


def _guidance_factory(estimator, scale, threshold):
    """A fresh PoseGuidance per stage (each compares with the target its pipeline gives it)."""
    if estimator is None or scale == 0:
        return None
    from .repose.guidance import PoseGuidance

    def make():
        return PoseGuidance(estimator, None, scale=float(scale), threshold=float(threshold))

    return make


def _pcdms(img, sources, targets, models, *, seed, steps, cfg, scheduler, layout, resolution, samples, official,
           guidance, guidance_target, callback) -> list[np.ndarray]:
    from .pcdms.transfer import OFFICIAL, PCDMsModels
    from .pcdms.transfer import transfer as pcdms_transfer

    p = models.parts
    if guidance_target != "skeleton" and p.get("estimator") is not None:
        raise ValueError(f"guidance_target: {guidance_target!r} works with RePose only; PCDMs compares with its "
                         f"framed target skeleton (skeleton)")
    settings = dict(layout=layout or "pad", resolution=resolution or 512, official_rng=False)
    generator_device = "cpu"
    if official:
        if (layout, resolution) not in ((None, None), (OFFICIAL["layout"], OFFICIAL["resolution"])):
            raise ValueError("official: the official code squashes to a 512 frame; leave layout / resolution unset")
        settings.update(OFFICIAL)
        generator_device = models.device
        if seed is not None:
            torch.manual_seed(int(seed))  # the official code draws some numbers from torch's global RNG
    chain = PCDMsModels(inpaint=p["inpaint"], vae=p["vae"], dino=p["dino"], prior=p.get("prior"),
                        refine=p.get("refine"), clip=p.get("clip"))
    out = pcdms_transfer(torch.from_numpy(img)[None], sources, targets, chain, seed=seed, steps=steps,
                         cfg=2.0 if cfg is None else float(cfg), scheduler=scheduler, num_samples=int(samples),
                         generator_device=generator_device, callback=callback,
                         make_pose_guidance=_guidance_factory(p.get("estimator"), *guidance),
                         **settings)
    return _hwc_list(out.images)


def _repose(img, targets, models, *, seed, steps, cfg, scheduler, resolution, samples, guidance, guidance_target,
            callback) -> list[np.ndarray]:
    from .repose.transfer import transfer as repose_transfer

    p = models.parts
    images = repose_transfer(torch.from_numpy(img)[None], targets, p["denoiser"], p["pose_align"], p["vae"],
                             resolution=resolution or 256, seed=seed, steps=50 if steps is None else int(steps),
                             w_c=2.0 if cfg is None else float(cfg), scheduler=scheduler,
                             estimator=p.get("estimator"), guidance_scale=guidance[0],
                             guidance_threshold=guidance[1], guidance_target=guidance_target,
                             num_samples=int(samples), callback=callback)
    return _hwc_list(images)
