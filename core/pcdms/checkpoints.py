"""Loading the released PCDMs checkpoints (and our safetensors conversions of them).

Accepted inputs (``load_pcdms``):

* The official DeepSpeed files (``mp_rank_00_model_states.pt``, ``PCDMs_ckpt.pt``): a dict whose ``"module"``
  entry is the state dict, next to DeepSpeed bookkeeping (lists, dicts, ints, strings, a ``set``, None). They
  are read with ``torch.load(weights_only=True)`` only -- never with pickle's arbitrary-code path; torch 2.13's
  restricted unpickler accepts all of those types. Tensors may be fp16 (DeepSpeed fp16 engine) or fp32; they
  are cast to the requested dtype. A DeepSpeed checkpoint *folder* works too (the file is found inside).
* A plain state dict saved with torch.save, a ``.safetensors`` file (ours carry kind and config in their
  metadata), or a ``save_pretrained`` folder (config.json + diffusion_pytorch_model.safetensors).

Our models use the official wrappers' attribute names, so the file's keys (``image_proj_model_p.``,
``unet.``, ``pose_proj.``, ``image_proj_model.``, none for the prior) load as they are; the prefixes are also
used to tell the kind from the keys and to summarise a mismatch. Before anything is loaded, the file is compared
with the model built on the meta device (nothing allocated): a file of the wrong kind or size raises
:class:`PCDMsCheckpointError` (a ``ValueError``) whose message names the file and kind and lists missing keys,
unexpected keys and shape mismatches -- never a stack trace from ``load_state_dict``.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .kinds import KINDS, _CLASS_TO_KIND, canonical_kind, model_class

__all__ = [
    "CheckpointReport",
    "PCDMsCheckpointError",
    "read_checkpoint",
    "detect_kind",
    "check_state_dict",
    "load_pcdms",
    "convert_pcdms",
    "save_pcdms_safetensors",
]

DEEPSPEED_FILE = "mp_rank_00_model_states.pt"
_SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
_META_KIND = "pcdms_kind"
_META_CONFIG = "pcdms_config"


@dataclass
class CheckpointReport:
    """How a state dict compares with the model a kind + config builds."""

    path: str
    kind: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, in file, in model
    detected_kind: str | None = None
    config_note: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def fits(self, strict: bool = True) -> bool:
        return not (self.missing or self.mismatched or (strict and self.unexpected))

    def format(self, limit: int = 8) -> str:
        lines = [f"{self.path}: does not fit a PCDMs '{self.kind}' model{self.config_note}."]

        def keys_summary(title, keys):
            if not keys:
                return
            groups = Counter(k.split(".", 1)[0] if "." in k else k for k in keys)
            grouped = ", ".join(f"{g}.* ({n})" if n > 1 else g for g, n in groups.most_common(6))
            lines.append(f"  {title} ({len(keys)}): under {grouped}")
            lines.append("    first: " + ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else ""))

        keys_summary("missing keys", self.missing)
        keys_summary("unexpected keys", self.unexpected)
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):")
            for key, got, want in self.mismatched[:limit]:
                lines.append(f"    {key}: file {list(got)} vs model {list(want)}")
            if len(self.mismatched) > limit:
                lines.append("    ...")
        if self.detected_kind and self.detected_kind != self.kind:
            lines.append(f"  The keys look like a '{self.detected_kind}' checkpoint (kind={self.detected_kind}).")
        elif self.mismatched and not self.missing and not self.unexpected:
            lines.append("  Same keys, other sizes: the file was made with another config (pass config=...).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return "checkpoint fits" if self.ok else self.format()


class PCDMsCheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; ``.report`` holds the comparison when there is one."""

    def __init__(self, message: str, report: CheckpointReport | None = None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------------------- reading
def _torch_load(path: Path) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e).lower() and "zip" not in str(e).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PCDMsCheckpointError(
            f"{path}: refused by torch.load(weights_only=True); this file holds Python objects beyond tensors "
            f"and plain containers, and it is never loaded with weights_only=False here. torch said: {e}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise PCDMsCheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("module", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                if any(torch.is_tensor(v) for v in inner.values()):
                    obj = inner
                    break
        if obj and all(isinstance(k, str) for k in obj) and any(torch.is_tensor(v) for v in obj.values()):
            sd = dict(obj)
            for wrap in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
                if sd and all(k.startswith(wrap) for k in sd):
                    sd = {k[len(wrap):]: v for k, v in sd.items()}
            return sd
        top = ", ".join(map(repr, list(obj)[:12]))
        raise PCDMsCheckpointError(f"{path}: no state dict found (top-level entries: {top})")
    raise PCDMsCheckpointError(f"{path}: expected a dict of tensors or a DeepSpeed dict with 'module', got "
                               f"{type(obj).__name__}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types
        raise PCDMsCheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _find_deepspeed_file(folder: Path) -> Path | None:
    direct = folder / DEEPSPEED_FILE
    if direct.is_file():
        return direct
    latest = folder / "latest"  # DeepSpeed writes the newest tag here
    if latest.is_file():
        cand = folder / latest.read_text().strip() / DEEPSPEED_FILE
        if cand.is_file():
            return cand
    found = sorted(folder.glob(f"*/{DEEPSPEED_FILE}"))
    return found[0] if len(found) == 1 else None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read any accepted input -> (state_dict, info). ``info`` may hold ``kind`` and ``config`` (from our
    safetensors metadata or a save_pretrained folder) and ``file`` (the file actually read)."""
    path = Path(path)
    info: dict[str, Any] = {"file": str(path)}
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():  # save_pretrained folder
            cfg = json.loads(cfg_file.read_text())
            cls_name = cfg.get("_class_name")
            if cls_name in _CLASS_TO_KIND:
                info["kind"] = _CLASS_TO_KIND[cls_name]
            info["config"] = {k: v for k, v in cfg.items() if not k.startswith("_")}
            single = path / _SAFETENSORS_NAME
            index = path / (_SAFETENSORS_NAME + ".index.json")
            if single.is_file():
                sd, _ = _read_safetensors(single)
                info["file"] = str(single)
            elif index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                sd = {}
                for shard in sorted(set(weight_map.values())):
                    sd.update(_read_safetensors(path / shard)[0])
                info["file"] = str(index)
            else:
                raise PCDMsCheckpointError(f"{path}: config.json but no {_SAFETENSORS_NAME}")
            return sd, info
        ds = _find_deepspeed_file(path)
        if ds is None:
            raise PCDMsCheckpointError(f"{path}: folder holds neither config.json nor a {DEEPSPEED_FILE}")
        path = ds
        info["file"] = str(path)
    if not path.is_file():
        raise PCDMsCheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
        if _META_KIND in meta:
            info["kind"] = meta[_META_KIND]
        if _META_CONFIG in meta:
            info["config"] = json.loads(meta[_META_CONFIG])
        return sd, info
    return _extract_state_dict(_torch_load(path), path), info


# -------------------------------------------------------------------------------------------- comparing
def detect_kind(keys) -> str | None:
    """Tell the kind from the top-level key names (None when they fit none)."""
    roots = {k.split(".", 1)[0] for k in keys}
    if {"prd_embedding", "pose_encoder", "transformer_blocks"} & roots and "unet" not in roots:
        return "prior"
    if "image_proj_model" in roots and "unet" in roots:
        return "simplified"
    if "image_proj_model_p" in roots and "unet" in roots:
        return "inpaint" if "pose_proj" in roots else "refine"
    return None


def _meta_model(kind: str, config: Mapping | None):
    cls = model_class(kind)
    with torch.device("meta"):
        return cls.from_config(dict(config)) if config else cls()


def check_state_dict(state_dict: Mapping[str, Any], kind: str, config: Mapping | None = None,
                     path: str = "<state dict>", model: torch.nn.Module | None = None) -> CheckpointReport:
    """Compare keys and shapes with the model of ``kind`` + ``config`` (built on the meta device)."""
    kind = canonical_kind(kind)
    if model is None:
        model = _meta_model(kind, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = CheckpointReport(path=str(path), kind=kind,
                              config_note=" (config given)" if config else " (full-size released config)")
    for key, value in state_dict.items():
        if key not in expected:
            report.unexpected.append(key)
        elif not torch.is_tensor(value):
            report.mismatched.append((key, (type(value).__name__,), expected[key]))
        elif tuple(value.shape) != expected[key]:
            report.mismatched.append((key, tuple(value.shape), expected[key]))
    report.missing = [k for k in expected if k not in state_dict]
    if not report.ok:
        report.detected_kind = detect_kind(state_dict.keys())
    return report


# --------------------------------------------------------------------------------------------- loading
def _prepare_tensor(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    # DeepSpeed fp16 modules are views into one flat buffer; give each parameter its own storage.
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        return t.clone(memory_format=torch.contiguous_format)
    return t


def load_pcdms(
    path: str | os.PathLike,
    kind: str | None = None,
    config: Mapping | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
    strict: bool = True,
):
    """Load a PCDMs checkpoint as our model (eval mode).

    Args:
        path: an official ``.pt`` / DeepSpeed folder, a ``.safetensors`` file, or a save_pretrained folder.
        kind: 'prior' | 'inpaint' | 'refine' | 'simplified' (aliases accepted); None = from the file's
            metadata/config, else from its keys.
        config: model config; None = the file's own (our conversions) or the full-size released config.
        dtype: cast floating tensors to this dtype (default float32); None keeps the file's dtype.
        strict: False ignores unexpected keys (missing keys and shape mismatches always raise).
    Raises:
        PCDMsCheckpointError (a ValueError) with the report when the file does not fit.
    """
    state_dict, info = read_checkpoint(path)
    file_kind = info.get("kind")
    if kind is None:
        kind = file_kind or detect_kind(state_dict.keys())
        if kind is None:
            roots = sorted({k.split(".", 1)[0] for k in state_dict})[:10]
            raise PCDMsCheckpointError(
                f"{path}: cannot tell the PCDMs kind from the keys (top-level names: {', '.join(roots)}); "
                f"give the kind (kind=, or --kind on the command line): one of {', '.join(KINDS)}")
    kind = canonical_kind(kind)
    if file_kind is not None and canonical_kind(file_kind) != kind:
        raise PCDMsCheckpointError(f"{path}: holds a '{file_kind}' model, not '{kind}'")
    if config is None:
        config = info.get("config")

    model = _meta_model(kind, config)
    report = check_state_dict(state_dict, kind, config, path=info["file"], model=model)
    if not report.fits(strict):
        raise PCDMsCheckpointError(report.format(), report)
    state_dict = {k: _prepare_tensor(v, dtype) for k, v in state_dict.items() if k not in report.unexpected}
    model.load_state_dict(state_dict, strict=True, assign=True)
    if hasattr(model, "reset_non_persistent_buffers"):
        model.reset_non_persistent_buffers(device="cpu")
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # a non-persistent buffer we do not know how to rebuild
        raise RuntimeError(f"PCDMs {kind}: tensors left on the meta device after loading: {leftovers[:5]}")
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------- converting
def save_pcdms_safetensors(model, path: str | os.PathLike) -> Path:
    """One .safetensors file with the kind and config in its metadata (what ComfyUI users keep in
    models/posetransfer); :func:`load_pcdms` reads it back without further arguments."""
    from safetensors.torch import save_file

    kind = _CLASS_TO_KIND[type(model).__name__]
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", _META_KIND: kind, _META_CONFIG: json.dumps(config)})
    return path


def convert_pcdms(
    in_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str | None = None,
    *,
    config: Mapping | None = None,
    dtype: torch.dtype | None = None,
    single_file: bool = False,
) -> Path:
    """Convert an official checkpoint to safetensors + config.

    Writes ``out_dir`` as a diffusers save_pretrained folder (config.json + diffusion_pytorch_model.safetensors,
    loadable with ``<Class>.from_pretrained(out_dir)`` or :func:`load_pcdms`), or with ``single_file=True`` one
    file ``out_dir/pcdms_<kind>.safetensors`` with the config in its metadata. ``dtype`` None keeps the file's
    dtype (fp16 files stay fp16). Returns the folder (or file) written. Raises PCDMsCheckpointError when the
    input does not fit ``kind``.
    """
    model = load_pcdms(in_path, kind, config, dtype=dtype)
    out_dir = Path(out_dir)
    if single_file:
        return save_pcdms_safetensors(model, out_dir / f"pcdms_{_CLASS_TO_KIND[type(model).__name__]}.safetensors")
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
