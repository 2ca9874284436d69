"""What the loader nodes share: weight dtypes, a file stamp that notices a changed file, and a small cache so a
model loaded once is reused across runs (and keeps its one ComfyUI ModelPatcher) until its files change."""

from __future__ import annotations

import os
from typing import Callable

import torch

from . import bridge

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_TOOLTIP = "Weights' precision. auto: float16 on a CUDA GPU, float32 otherwise."


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

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["DTYPES", "DTYPE_TOOLTIP", "resolve_dtype", "file_stamp", "LoadCache"]
