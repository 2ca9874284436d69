"""Saved flow models: what ``train-flow`` writes and what the CLI, the loader node and scripts read.

A model is a folder of diffusers ``save_pretrained`` sub-folders (safetensors + config.json) plus a marker
file ``posetransfer_flow_model.json`` naming its kind, or one safetensors file whose metadata holds the kind
and the configs. ``"single"`` = single spatial transformation (``flow_net`` + optional ``refiner``),
``"parts"`` = structure-aware part flow (``PartFlowNet``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

KINDS = ("single", "parts")
MARKER = "posetransfer_flow_model.json"
FILE_KEY = "posetransfer_flow_model"
MODEL_DIR = "model"

def _class_name(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _model_root(path: Path) -> Path:
    """``path`` itself, or its ``model/`` export (a run folder or a checkpoint folder)."""
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "flow_net").is_dir() \
            and (path / MODEL_DIR).is_dir():
        return path / MODEL_DIR
    return path


def _file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: expected a safetensors file, could not read its header ({exc})") from None


def model_file_kind(path: str | os.PathLike) -> str | None:
    """The kind a one-file export (:func:`save_model_file`) records in its safetensors metadata, or None when
    ``path`` is not such a file (unreadable, not safetensors, or another model's file): for listing model
    folders, where foreign files are skipped rather than reported."""
    try:
        kind = _file_metadata(Path(path)).get(FILE_KEY)
    except (OSError, ValueError):
        return None
    return kind if kind in KINDS else None


def detect_model_kind(path: str | os.PathLike) -> str:
    """``"single"`` or ``"parts"`` from what :func:`export_model` / :func:`save_model_file` wrote (the marker
    file, else the configs' ``_class_name``). A ValueError / FileNotFoundError says what was expected."""
    path = _model_root(Path(path))
    if path.is_file():
        meta = _file_metadata(path)
        if meta.get(FILE_KEY) in KINDS:
            return meta[FILE_KEY]
        raise ValueError(f"{path}: not a posetransfer flow model file (its metadata has no {FILE_KEY!r}); "
                         f"expected a file written by train-flow --single-file, or a model folder")
    if not path.is_dir():
        raise FileNotFoundError(f"flow model: no such file or folder: {path}")
    marker = path / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind in KINDS:
            return kind
    if (path / "flow_net" / "config.json").is_file():
        return "single"
    name = _class_name(path / "config.json")
    if name == "SingleTransformFlowNet":
        return "single"
    if name == "PartFlowNet":
        return "parts"
    raise ValueError(f"{path}: not a flow model folder; expected flow_net/config.json (single transformation) or "
                     f"config.json of a PartFlowNet (part flow), as train-flow writes in OUT/model")


def _from_config(cls, config: dict):
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls.from_config(config)


def load_flow_modules(path: str | os.PathLike, kind: str | None = None) -> tuple[str, dict[str, nn.Module]]:
    """``(kind, modules)``: single -> ``flow_net`` (and ``refiner`` when saved); parts -> ``model``. In eval
    mode, on the CPU."""
    from .part_flow_net import PartFlowNet
    from .single_transform import SingleTransformFlowNet, SingleTransformRefiner

    path = _model_root(Path(path))
    found = detect_model_kind(path)
    if kind is not None and kind != found:
        raise ValueError(f"{path}: holds a {_KIND_NAMES[found]} model, not a {_KIND_NAMES[kind]} one")
    classes = {"flow_net": SingleTransformFlowNet, "refiner": SingleTransformRefiner, "model": PartFlowNet}
    modules: dict[str, nn.Module] = {}
    if path.is_file():
        from safetensors.torch import load_file

        meta = _file_metadata(path)
        tensors = load_file(str(path))
        for name in json.loads(meta.get("modules", "[]")):
            module = _from_config(classes[name], json.loads(meta[f"config.{name}"]))
            prefix = name + "."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(state, strict=True)
            modules[name] = module
    elif found == "single":
        root = path / "flow_net" if (path / "flow_net" / "config.json").is_file() else path
        modules["flow_net"] = SingleTransformFlowNet.from_pretrained(root)
        if (path / "refiner" / "config.json").is_file():
            modules["refiner"] = SingleTransformRefiner.from_pretrained(path / "refiner")
    else:
        modules["model"] = PartFlowNet.from_pretrained(path)
    needed = "flow_net" if found == "single" else "model"
    if needed not in modules:
        raise ValueError(f"{path}: a {_KIND_NAMES.get(found, found)} flow model file without its {needed!r} module "
                         f"(it holds {sorted(modules) or 'no modules'}); export it again with --single-file")
    for m in modules.values():
        m.eval()
    return found, modules


_KIND_NAMES = {"single": "single-transformation", "parts": "part-flow"}


def load_flow_model(path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"):
    """A FlowWarp flow estimator (:class:`~..warp.flowwarp.FlowEstimator`) from a saved model: a folder
    (``OUT/model``, a checkpoint's ``model/``, the run folder itself) or a ``--single-file`` export. ``kind``
    (``"single"`` / ``"parts"``) is checked when given; otherwise read from the files."""
    from .part_flow_net import PartFlowEstimator
    from .single_transform import SingleTransformEstimator

    kind, modules = load_flow_modules(path, kind)
    if kind == "single":
        return SingleTransformEstimator(modules["flow_net"], modules.get("refiner"), device=device)
    return PartFlowEstimator(modules["model"].to(device))


def export_model(kind: str, modules: dict[str, nn.Module], out_dir: str | os.PathLike, info: dict | None = None
                 ) -> Path:
    """``save_pretrained`` folders (safetensors + config.json) and the marker; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "single":
        for name in ("flow_net", "refiner"):
            modules[name].save_pretrained(out / name)
    else:
        modules["model"].save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"kind": kind, **(info or {})}, indent=2) + "\n", encoding="utf-8")
    return out


def save_model_file(kind: str, modules: dict[str, nn.Module], path: str | os.PathLike, info: dict | None = None
                    ) -> Path:
    """One safetensors file: ``{module}.{key}`` tensors, configs in the metadata."""
    from safetensors.torch import save_file

    names = ["flow_net", "refiner"] if kind == "single" else ["model"]
    tensors, meta = {}, {FILE_KEY: kind, "modules": json.dumps(names), "info": json.dumps(info or {})}
    for name in names:
        m = modules[name]
        meta[f"config.{name}"] = m.to_json_string()
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


