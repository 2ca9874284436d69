"""The loader nodes' shared helpers: file stamps notice changed files, the cache reuses and evicts, dtypes resolve."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from posetransfer.nodes.loaded_models import LoadCache, file_stamp, resolve_dtype


def test_file_stamp_changes_with_any_file_in_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"1234")
    (tmp_path / "config.json").write_text("{}")
    before = file_stamp(str(tmp_path))
    assert file_stamp(str(tmp_path)) == before
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"12345")            # a nested file grows
    assert file_stamp(str(tmp_path)) != before
    f = tmp_path / "config.json"
    stamp = file_stamp(str(f))
    os.utime(f, ns=(1, 1))
    assert file_stamp(str(f)) != stamp
    assert file_stamp(None) is None


def test_load_cache_reuses_and_drops_the_oldest():
    built = []
    cache = LoadCache(2)

    def build(name):
        built.append(name)
        return object()

    a = cache.get("a", lambda: build("a"))
    assert cache.get("a", lambda: build("a")) is a and built == ["a"]
    cache.get("b", lambda: build("b"))
    cache.get("c", lambda: build("c"))                                     # drops "a"
    assert len(cache) == 2
    assert cache.get("a", lambda: build("a")) is not a and built == ["a", "b", "c", "a"]


def test_resolve_dtype(monkeypatch):
    for name in ("comfy", "comfy.model_management"):
        monkeypatch.setitem(sys.modules, name, None)
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("auto") is (torch.float16 if torch.cuda.is_available() else torch.float32)
    with pytest.raises(ValueError, match="dtype: expected one of .*got 'half'"):
        resolve_dtype("half")
