"""The loader nodes' shared helpers: file stamps notice changed files, the cache reuses and evicts (and loads outside
inference mode, naming the input on a corrupt file), dtypes resolve, the model-file widgets and their checks."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from posetransfer.nodes.loaded_models import (NO_MODEL, LoadCache, chosen_kind, chosen_model, config_class,
                                              file_stamp, kind_input, model_input, resolve_dtype)


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


def test_load_cache_loads_files_outside_inference_mode_until_they_change(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"1234")
    cache, seen = LoadCache(2), []

    def load():
        seen.append(torch.is_inference_mode_enabled())
        return torch.ones(1)

    with torch.inference_mode():  # as ComfyUI runs a loader node
        first = cache.load(str(f), ("auto",), load, "model_name")
        assert cache.load(str(f), ("auto",), load, "model_name") is first and seen == [False]
        assert not first.is_inference()  # a plain tensor: autograd and offloading can use it
        assert cache.load(str(f), ("float16",), load, "model_name") is not first  # other options: another object
        f.write_bytes(b"12345")
        assert cache.load(str(f), ("auto",), load, "model_name") is not first and seen == [False] * 3


def test_load_cache_names_the_input_when_a_file_is_corrupt(tmp_path):
    def corrupt():
        raise OSError("unexpected end of file")

    with pytest.raises(ValueError, match="^model_name: cannot load 'x': unexpected end of file$"):
        LoadCache(1).load(str(tmp_path), (), corrupt, "model_name: cannot load 'x'")
    with pytest.raises(OSError):  # errors=(): the loader's own errors, unchanged
        LoadCache(1).load(str(tmp_path), (), corrupt, "model_name", errors=())


def test_model_widgets_and_their_checks(tmp_path, monkeypatch):
    assert model_input([], "t") == ([NO_MODEL], {"tooltip": "t"})
    assert model_input(iter(["a.pt", "b"]), "t")[0] == ["a.pt", "b"]
    assert kind_input({"prior": 1, "refine": 2}, "t") == (["auto", "prior", "refine"], {"default": "auto",
                                                                                        "tooltip": "t"})
    assert chosen_model("a.pt", "model_name", "none there") == "a.pt"
    for empty in (NO_MODEL, "", None):
        with pytest.raises(ValueError, match="^model_name: none there$"):
            chosen_model(empty, "model_name", "none there")
    assert chosen_kind("refine", ("prior", "refine")) == "refine" and chosen_kind("auto", ()) == "auto"
    with pytest.raises(ValueError, match=r"kind: expected one of \('auto', 'prior'\), got 'stage2'"):
        chosen_kind("stage2", ("prior",))


def test_config_class_reads_the_class_name_of_a_listed_config(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", None)
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(tmp_path))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"_class_name": "PCDMsInpaint", "x": 1}')
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert config_class("m/config.json") == "PCDMsInpaint"
    assert config_class("bad.json") is None and config_class("list.json") is None
    assert config_class("gone/config.json") is None
