"""The one place that talks to ComfyUI. Every function falls back cleanly when ComfyUI is not installed.

ComfyUI modules are imported lazily, inside each function, so the nodes run (and tests can inject fake
``comfy`` / ``folder_paths`` modules) without ComfyUI.
"""

from __future__ import annotations

import importlib
import os

import torch

MODEL_FOLDER = "posetransfer"
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".onnx", ".json"}

_interrupt_callback = None


def _optional(name: str):
    """The module ``name``, or None when it cannot be imported (ComfyUI absent)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def comfy_available() -> bool:
    """True when running inside ComfyUI (its ``folder_paths`` and ``comfy.model_management`` import)."""
    return _optional("folder_paths") is not None and _optional("comfy.model_management") is not None


def get_device() -> torch.device:
    """ComfyUI's compute device, else CUDA when available, else the CPU."""
    mm = _optional("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ProgressBar:
    """Progress reporting: forwards to ``comfy.utils.ProgressBar`` when present; always counts in
    ``current`` / ``total`` so tests can inspect it."""

    def __init__(self, total: int):
        self.total = int(total)
        self.current = 0
        utils = _optional("comfy.utils")
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, n: int = 1) -> None:
        self.current += n
        if self._bar is not None:
            self._bar.update(n)


def set_interrupt_callback(callback) -> None:
    """Install a callable that :func:`check_interrupt` also runs (raise in it to cancel); None removes it."""
    global _interrupt_callback
    _interrupt_callback = callback


def check_interrupt() -> None:
    """Raise if the user cancelled the run (ComfyUI's interrupt, or the installed test callback)."""
    if _interrupt_callback is not None:
        _interrupt_callback()
    mm = _optional("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def input_directory() -> str:
    """ComfyUI's input folder; else ``$POSETRANSFER_INPUT_DIR``, default ``./input``."""
    fp = _optional("folder_paths")
    if fp is not None:
        return fp.get_input_directory()
    return os.environ.get("POSETRANSFER_INPUT_DIR") or os.path.join(os.getcwd(), "input")


def _fallback_models_dir() -> str:
    return os.environ.get("POSETRANSFER_MODELS_DIR") or os.path.join(os.getcwd(), "models", MODEL_FOLDER)


def register_model_folder() -> str:
    """Register ``models/posetransfer`` with ComfyUI (extensions :data:`MODEL_EXTENSIONS`); return its path.

    Without ComfyUI nothing is registered and the fallback folder is returned."""
    fp = _optional("folder_paths")
    if fp is None:
        return _fallback_models_dir()
    path = os.path.join(fp.models_dir, MODEL_FOLDER)
    fp.add_model_folder_path(MODEL_FOLDER, path)
    paths, exts = fp.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    if path not in paths:  # old ComfyUI only appends to folders it already knows
        paths = [*paths, path]
    fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | MODEL_EXTENSIONS)
    return path


def list_model_files(extensions=None) -> list[str]:
    """Sorted model file names (relative, ``/``-separated) in the posetransfer model folder(s)."""
    exts = {e.lower() for e in (extensions or MODEL_EXTENSIONS)}
    fp = _optional("folder_paths")
    if fp is not None:
        names = fp.get_filename_list(MODEL_FOLDER)
    else:
        root = _fallback_models_dir()
        names = [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                 for d, _, files in os.walk(root, followlinks=True) for f in files]
    return sorted(n for n in names if os.path.splitext(n)[1].lower() in exts)


def model_file_path(name: str) -> str:
    """Full path of model file ``name``; FileNotFoundError saying where it looked when it is missing."""
    fp = _optional("folder_paths")
    if fp is not None:
        path = fp.get_full_path(MODEL_FOLDER, name)
        where = fp.folder_names_and_paths.get(MODEL_FOLDER, ([],))[0]
    else:
        path = os.path.join(_fallback_models_dir(), name)
        where = [_fallback_models_dir()]
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"model file {name!r} not found in the posetransfer model folder(s) "
                                f"{list(where)}; put it there (or set POSETRANSFER_MODELS_DIR outside ComfyUI)")
    return path


__all__ = ["MODEL_FOLDER", "MODEL_EXTENSIONS", "comfy_available", "get_device", "ProgressBar",
           "set_interrupt_callback", "check_interrupt", "input_directory", "register_model_folder",
           "list_model_files", "model_file_path"]
