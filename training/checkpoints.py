"""Training checkpoints that cannot run code and are never half-written.

``OUT/checkpoints/checkpoint-N/`` holds only JSON and safetensors (nothing is unpickled on ``--resume``):

* ``weights/NAME.safetensors``: every trained module (unwrapped from accelerate / DDP), by the script's names.
* ``state.json`` + ``state.safetensors``: the rest of the training state as a JSON tree whose tensors live in the
  safetensors file: the step, optimisers, LR schedulers, the fp16 GradScaler, stateful extras (RePose's EMA), the
  RNG states of python / numpy / torch (/ CUDA) of every process, and the data order's inputs (examples, seed).
* ``train_config.json`` (kind, step, model config, arguments) and the script's model export (``model/`` or
  ``model.safetensors``, loadable as a finished model).
* ``manifest.json``, written last: the size and sha256 of every other file.

Writing: everything goes to ``checkpoints/.tmp-checkpoint-N`` (main process only; the other processes send their
RNG states to it), each file is fsynced, the manifest is written and fsynced, then the folder is renamed to
``checkpoint-N`` (an older ``checkpoint-N`` is moved aside first and removed after). A run killed at any point
leaves every ``checkpoint-N`` complete or absent; leftovers of a killed save are removed by the next save.

Reading: ``--resume latest`` takes the newest checkpoint whose manifest matches its files (sizes and sha256), and
says which newer ones it skipped and why; a named checkpoint that does not match raises one error naming the file.
Checkpoints of older versions (accelerate's ``save_state``: pickled optimiser, RNG and custom-object files) have no
manifest: they are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"
TRAIN_CONFIG = "train_config.json"
WEIGHTS_DIR = "weights"
FORMAT = "posetransfer-training-checkpoint"
VERSION = 1
_TMP, _OLD = ".tmp-", ".old-"


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete, corrupt or not of this format; the message names the file."""


@dataclass
class Resumable:
    """What a checkpoint restores, by name: the trained modules (as prepared; saved unwrapped), the optimisers and
    LR schedulers (accelerate's wrappers or plain ones), other objects with ``state_dict`` / ``load_state_dict``
    (e.g. an EMA), and ``data``: the data order's inputs (``{"examples": n, "seed": s}``), checked on resume."""

    models: dict
    optimizers: dict = field(default_factory=dict)
    schedulers: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ the JSON + tensors tree
_MARKERS = ("__tensor__", "__tuple__", "__items__", "__ndarray__")


def encode_tree(value, tensors: dict, path: str = "state"):
    """``value`` (state dicts: dicts, lists, tuples, numbers, strings, None, tensors, numpy arrays) -> a JSON-able
    tree; tensors go into ``tensors`` under their path and are referenced by it. Tuples and dicts with non-string
    keys (an optimiser's ``state``) are tagged, so that :func:`decode_tree` gives back the same types."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _MARKERS for k in value):
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__items__": [[encode_tree(k, tensors, f"{path}.key{i}"), encode_tree(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__} at {path} (only numbers, strings, lists, "
                    f"dicts, tensors and numpy arrays)")


def decode_tree(value, tensors: dict):
    """The inverse of :func:`encode_tree`."""
    if isinstance(value, list):
        return [decode_tree(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(decode_tree(v, tensors) for v in value["__tuple__"])
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if "__items__" in value:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in value["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in value.items()}


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- file layer
def _durable(path: Path) -> None:
    """fsync one written file (every file of a checkpoint passes here before the manifest is written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    try:  # not possible on every OS (Windows): the rename is still atomic there
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def _save_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None


# ------------------------------------------------------------------------------------------------ folders
def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` folder, else None."""
    try:
        return int(path.name.split("-", 1)[1]) if path.name.startswith("checkpoint-") else None
    except ValueError:
        return None


def list_checkpoints(out: Path) -> list[Path]:
    """The run's ``checkpoint-N`` folders (complete or not), oldest first."""
    root = Path(out) / CHECKPOINTS
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None] if root.is_dir() else []
    return sorted(found, key=checkpoint_step)


def verify(folder: Path, hashes: bool = True) -> dict:
    """The manifest of ``folder`` after checking that every file it lists is there with its size (and sha256);
    a :class:`CheckpointError` naming the first file that is not."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (an unfinished checkpoint, or one of an older version, whose "
                              f"pickled state is never loaded)")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                            dict):
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {manifest.get('version')!r}, this version reads "
                              f"{VERSION}")
    for name, entry in manifest["files"].items():
        file = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise CheckpointError(f"{path}: lists a file outside the checkpoint ({name!r})")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(f"{file}: {size} bytes, the manifest records {entry.get('size')} (truncated or "
                                  f"changed)")
        if hashes and _sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file}: contents differ from the manifest's sha256 (corrupt or changed)")
    for required in (STATE_JSON, STATE_TENSORS, TRAIN_CONFIG):
        if required not in manifest["files"]:
            raise CheckpointError(f"{path}: does not list {required}")
    return manifest


def is_complete(folder: Path) -> bool:
    try:
        verify(folder, hashes=False)
        return True
    except CheckpointError:
        return False


def latest(out: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint of ``out`` (None when the run has no checkpoint folder at all); newer
    incomplete or corrupt ones are skipped, each reported through ``log``; a CheckpointError when folders exist
    but none is complete."""
    found = list_checkpoints(out)
    skipped = []
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        for reason in skipped:
            if log is not None:
                log(f"skipped {reason}")
        return path
    if found:
        raise CheckpointError(f"no complete checkpoint in {Path(out) / CHECKPOINTS}: " + "; ".join(skipped))
    return None


def read_train_config(folder: Path, kind: str) -> dict:
    """``train_config.json`` of a verified checkpoint, checked to be of ``kind``."""
    config = _read_json(Path(folder) / TRAIN_CONFIG)
    if not isinstance(config, dict) or config.get("kind") != kind:
        got = config.get("kind") if isinstance(config, dict) else None
        raise CheckpointError(f"{Path(folder) / TRAIN_CONFIG}: a {got!r} checkpoint, this run trains {kind!r}")
    return config


def _remove_leftovers(root: Path) -> None:
    for p in root.iterdir() if root.is_dir() else ():
        if p.name.startswith((_TMP, _OLD)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ save / load
def save(accelerator, out: Path, step: int, train_config: dict, export: Callable[[Path], None],
         resumable: Resumable, keep: int | None = None) -> Path:
    """Write ``OUT/checkpoints/checkpoint-STEP`` atomically (module docstring); only the main process writes, all
    processes must call it. ``export(folder)`` writes the script's model files; only the newest ``keep``
    checkpoints are kept (None or 0: all)."""
    from safetensors.torch import save_model

    root = Path(out) / CHECKPOINTS
    final = root / f"checkpoint-{step}"
    rng = [rng_state()]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rng = gather_object(rng)  # every process's generators, in process order
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp = root / f"{_TMP}{final.name}"
        (tmp / WEIGHTS_DIR).mkdir(parents=True)
        for name, module in resumable.models.items():
            save_model(accelerator.unwrap_model(module), str(tmp / WEIGHTS_DIR / f"{name}.safetensors"),
                       metadata={"format": "pt"}, force_contiguous=True)
        scaler = getattr(accelerator, "scaler", None)
        state = {"kind": train_config.get("kind"), "step": int(step), "num_processes": accelerator.num_processes,
                 "optimizers": {n: o.state_dict() for n, o in resumable.optimizers.items()},
                 "schedulers": {n: s.state_dict() for n, s in resumable.schedulers.items()},
                 "extras": {n: e.state_dict() for n, e in resumable.extras.items()},
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "rng": rng, "data": dict(resumable.data)}
        tensors: dict = {}
        tree = encode_tree(state, tensors)
        _save_tensors(tmp / STATE_TENSORS, tensors)
        _write_json(tmp / STATE_JSON, tree)
        _write_json(tmp / TRAIN_CONFIG, train_config)
        export(tmp)
        files = {}
        for file in _files(tmp):
            _durable(file)
            files[file.relative_to(tmp).as_posix()] = {"size": file.stat().st_size, "sha256": _sha256(file)}
        _write_json(tmp / MANIFEST, {"format": FORMAT, "version": VERSION, "step": int(step), "files": files})
        _durable(tmp / MANIFEST)
        for sub in sorted({p.parent for p in _files(tmp)}, key=lambda p: len(p.parts), reverse=True):
            _sync_dir(sub)
        old = root / f"{_OLD}{final.name}"
        if final.exists():  # a checkpoint of this step from before a resume: moved aside, removed once replaced
            _rename(final, old)
        _rename(tmp, final)
        _sync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
        if keep is not None and keep > 0:
            for stale in list_checkpoints(out)[:-keep]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, folder: Path, resumable: Resumable, log: Callable[[str], None] | None = None) -> int:
    """Restore ``resumable``, the GradScaler and this process's RNG states from a verified checkpoint; returns its
    step. Every tensor comes from safetensors, everything else from JSON."""
    from safetensors.torch import load_model

    folder = Path(folder)
    say = log if (log is not None and accelerator.is_main_process) else (lambda _msg: None)
    state = decode_tree(_read_json(folder / STATE_JSON), _load_tensors(folder / STATE_TENSORS))
    for section, names in (("optimizers", resumable.optimizers), ("schedulers", resumable.schedulers),
                           ("extras", resumable.extras)):
        if set(state.get(section, {})) != set(names):
            raise CheckpointError(f"{folder / STATE_JSON}: {section} {sorted(state.get(section, {}))}, this run has "
                                  f"{sorted(names)}")
    for name, module in resumable.models.items():
        path = folder / WEIGHTS_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        try:
            load_model(accelerator.unwrap_model(module), str(path), strict=True)
        except Exception as exc:  # noqa: BLE001 - safetensors' header errors, torch's key / shape errors
            raise CheckpointError(f"{path}: does not load into the {name} of this run "
                                  f"({' '.join(str(exc).split())[:300]})") from None
    for name, opt in resumable.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    for name, sched in resumable.schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    for name, extra in resumable.extras.items():
        extra.load_state_dict(state["extras"][name])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    elif (scaler is None) != (state.get("scaler") is None):
        say("the loss scaler's state is not restored (the checkpoint was saved with another --mixed-precision)")
    rng = state.get("rng") or []
    if accelerator.process_index < len(rng):
        set_rng_state(rng[accelerator.process_index])
    if len(rng) != accelerator.num_processes:
        say(f"the checkpoint was saved by {len(rng)} process(es), this run has {accelerator.num_processes}: "
            f"random states of the missing processes stay seeded by --seed")
    saved_data = state.get("data") or {}
    for key, value in resumable.data.items():
        if key in saved_data and saved_data[key] != value:
            say(f"data {key} is {value}, the checkpoint's run had {saved_data[key]}: the data order differs from "
                f"the uninterrupted run's")
    return int(state["step"])
