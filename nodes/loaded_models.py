"""What the loader nodes share: their model-file widgets (the file list with its ``(none)`` entry, dtype, kind), the
``_class_name`` of a listed config.json, weight dtypes, a file stamp that notices a changed file, and a small cache
so a model loaded once is reused across runs (and keeps its one ComfyUI ModelPatcher) until its files change."""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import torch

from . import bridge

NO_MODEL = "(none)"  # the one entry of a file list when the model folder holds no file of that kind
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_TOOLTIP = "Weights' precision. auto: float16 on a CUDA GPU, float32 otherwise."


# ------------------------------------------------------------------------------------------------ widgets
def model_input(names: Iterable[str], tooltip: str) -> tuple:
    """A COMBO of the listed model files (``names``), or of :data:`NO_MODEL` alone when there are none."""
    return (list(names) or [NO_MODEL], {"tooltip": tooltip})


def dtype_input() -> tuple:
    return (list(DTYPES), {"default": "auto", "tooltip": DTYPE_TOOLTIP})


def kind_input(kinds: Iterable[str], tooltip: str) -> tuple:
    """A COMBO of ``auto`` (the kind read from the files) and ``kinds``."""
    return (["auto", *kinds], {"default": "auto", "tooltip": tooltip})


def chosen_model(name, what: str, missing: str) -> str:
    """``name`` (a value of :func:`model_input`); ValueError ``what: missing`` when no file was chosen."""
    if not name or name == NO_MODEL:
        raise ValueError(f"{what}: {missing}")
    return name


def chosen_kind(kind, kinds: Iterable[str]) -> str:
    """``kind`` (a value of :func:`kind_input`); ValueError naming the choices otherwise."""
    choices = ("auto", *kinds)
    if kind not in choices:
        raise ValueError(f"kind: expected one of {choices}, got {kind!r}")
    return kind


def config_class(name: str) -> str | None:
    """The ``_class_name`` of the listed config.json ``name`` (relative to the model folder, as
    :func:`bridge.list_model_files` gives it); None when it is gone, unreadable or not a JSON object."""
    try:
        with open(bridge.model_file_path(name), encoding="utf-8") as f:
            return json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------ loading
def resolve_dtype(dtype: str) -> torch.dtype:
    """A ``dtype`` input of :data:`DTYPES` -> the torch dtype (auto: float16 on CUDA, else float32)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    return torch.float16 if bridge.get_device().type == "cuda" else torch.float32


def file_stamp(path: str | None) -> tuple | None:
    """``path`` with the modification time and size of the file, or of every file under the folder (None: None)."""
    if path is None:
        return None
    if os.path.isdir(path):
        stamps = []
        for root, _, files in os.walk(path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                stamps.append((os.path.relpath(os.path.join(root, f), path), st.st_mtime_ns, st.st_size))
        return path, tuple(sorted(stamps))
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


class LoadCache:
    """At most ``size`` loaded objects by key, the oldest dropped first."""

    def __init__(self, size: int):
        self.size = int(size)
        self._items: dict = {}

    def get(self, key, build: Callable[[], object]):
        """The object for ``key``, built (by ``build()``) when absent."""
        if key not in self._items:
            value = build()
            while len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
        return self._items[key]

    def load(self, path: str, options: tuple, load: Callable[[], object], what: str, errors=(OSError, ValueError)):
        """What ``load()`` makes of the files at ``path`` with ``options``, reused while those files are unchanged
        (:func:`file_stamp`). ``load`` runs outside inference mode -- ComfyUI runs nodes in it, and inference
        tensors can later be neither updated in place nor saved for backward (pose guidance, training) -- and an
        exception of ``errors`` (a corrupt file: diffusers raises OSError, torch RuntimeError) becomes a ValueError
        ``what: <the error>``."""
        def build():
            try:
                with torch.inference_mode(False):
                    return load()
            except errors as exc:
                raise ValueError(f"{what}: {exc}") from None

        return self.get((file_stamp(path), *options), build)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["NO_MODEL", "DTYPES", "DTYPE_TOOLTIP", "model_input", "dtype_input", "kind_input", "chosen_model",
           "chosen_kind", "config_class", "resolve_dtype", "file_stamp", "LoadCache"]
