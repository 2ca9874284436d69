"""Saved RePose models: what ``training/train_repose.py`` writes and what the loader node and scripts read.

A model is a folder with two diffusers ``save_pretrained`` sub-folders, ``denoiser/`` (:class:`RePoseDenoiser`)
and ``pose_align/`` (:class:`PoseAlign`), plus a marker file :data:`MARKER` (JSON: ``{"kind": "repose", ...}`` and
free-form info such as the training step). A training run folder (with ``model/``) or a checkpoint folder is
accepted too, as is the path of the marker file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .denoiser import RePoseDenoiser
from .pose_align import PoseAlign

__all__ = ["MARKER", "KIND", "DENOISER_DIR", "POSE_ALIGN_DIR", "save_repose_model", "load_repose_model",
           "is_repose_model", "repose_model_root"]

MARKER = "posetransfer_repose_model.json"
KIND = "repose"
DENOISER_DIR = "denoiser"
POSE_ALIGN_DIR = "pose_align"
MODEL_DIR = "model"


def save_repose_model(folder: str | Path, denoiser: RePoseDenoiser, pose_align: PoseAlign,
                      info: dict | None = None, safe_serialization: bool = True) -> Path:
    """Write ``denoiser/`` + ``pose_align/`` (save_pretrained, safetensors) and the marker; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    denoiser.save_pretrained(folder / DENOISER_DIR, safe_serialization=safe_serialization)
    pose_align.save_pretrained(folder / POSE_ALIGN_DIR, safe_serialization=safe_serialization)
    meta = {"kind": KIND, **(info or {})}
    (folder / MARKER).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return folder


def repose_model_root(path: str | Path) -> Path:
    """The model folder for ``path`` (a model folder, its marker file, or a run / checkpoint folder with
    ``model/``); FileNotFoundError when none is there."""
    path = Path(path)
    if path.is_file() and path.name == MARKER:
        path = path.parent
    for candidate in (path, path / MODEL_DIR):
        if (candidate / MARKER).is_file() or ((candidate / DENOISER_DIR / "config.json").is_file()
                                              and (candidate / POSE_ALIGN_DIR / "config.json").is_file()):
            return candidate
    raise FileNotFoundError(f"{path}: not a RePose model (expected {MARKER} with {DENOISER_DIR}/ and "
                            f"{POSE_ALIGN_DIR}/ save_pretrained folders, as train_repose writes to OUT/model)")


def is_repose_model(path: str | Path) -> bool:
    try:
        repose_model_root(path)
        return True
    except FileNotFoundError:
        return False


def load_repose_model(path: str | Path, device: str | torch.device | None = None,
                      dtype: torch.dtype | None = None) -> tuple[RePoseDenoiser, PoseAlign, dict]:
    """``(denoiser, pose_align, info)`` in eval mode, on ``device`` / ``dtype`` when given."""
    root = repose_model_root(path)
    info = {}
    if (root / MARKER).is_file():
        try:
            info = json.loads((root / MARKER).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{root / MARKER}: not valid JSON ({exc})") from None
        if info.get("kind", KIND) != KIND:
            raise ValueError(f"{root}: the marker names a {info.get('kind')!r} model, not a RePose model")
    for sub in (DENOISER_DIR, POSE_ALIGN_DIR):
        if not (root / sub / "config.json").is_file():
            raise FileNotFoundError(f"{root}: missing {sub}/ (a save_pretrained folder)")
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    denoiser = RePoseDenoiser.from_pretrained(root / DENOISER_DIR, **kwargs)
    pose_align = PoseAlign.from_pretrained(root / POSE_ALIGN_DIR, **kwargs)
    for m in (denoiser, pose_align):
        m.eval().requires_grad_(False)
        if device is not None:
            m.to(device)
    return denoiser, pose_align, info
