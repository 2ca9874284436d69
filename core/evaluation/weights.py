"""Finding and loading the backbone weight files the user already has. Nothing is ever downloaded.

* torchvision AlexNet (LPIPS backbone): ``alexnet-owt-7be5be79.pth`` in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``).
* LPIPS v0.1 linear layers: ``alex.pth`` shipped inside the ``lpips`` package (``lpips/weights/v0.1/alex.pth``)
  or the PerceptualSimilarity repository (``weights/v0.1/alex.pth``).
* torchvision Inception-v3 (FID): ``inception_v3_google-0cc3c7bd.pth`` in the torch hub cache.

Files are read with ``torch.load(..., weights_only=True)`` (or as safetensors) by the one plain-weights reader, core/state_dicts.py.
"""

from __future__ import annotations

import importlib.util
import os

import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_LIN_FILE = "alex.pth"
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


class MissingWeightsError(FileNotFoundError):
    """A backbone weight file is not where it was looked for (nothing is downloaded)."""


def hub_checkpoints_dir() -> str:
    """torch's hub cache folder for checkpoints (honours ``$TORCH_HOME``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _lpips_package_file() -> str | None:
    try:
        spec = importlib.util.find_spec("lpips")  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "weights", "v0.1", LPIPS_LIN_FILE)
        if os.path.isfile(path):
            return path
    return None


def resolve(path, default_name: str, what: str, flag: str, extra_candidates=()) -> str:
    """The file to load: ``path`` when given (it must exist), else the first existing default location.
    Raises :class:`MissingWeightsError` naming every place looked at."""
    if path is not None:
        path = os.fspath(path)
        if os.path.isdir(path):
            candidate = os.path.join(path, default_name)
            if os.path.isfile(candidate):
                return candidate
            raise MissingWeightsError(f"{what} ({flag}): {path} is a folder without {default_name}")
        if not os.path.isfile(path):
            raise MissingWeightsError(f"{what} ({flag}): no such file: {path}. Nothing is downloaded; point "
                                      f"{flag} at your copy of {default_name}")
        return path
    looked = [os.path.join(hub_checkpoints_dir(), default_name), *[c for c in extra_candidates if c]]
    for candidate in looked:
        if os.path.isfile(candidate):
            return candidate
    raise MissingWeightsError(f"{what}: {default_name} not found (looked in {', '.join(looked)}). Nothing is "
                              f"downloaded; pass {flag} PATH to your copy")


def load_state_dict(path: str, what: str) -> dict:
    """``path``'s named tensors (:func:`..state_dicts.read_state_dict`: safetensors, or ``torch.load(weights_only=True)``),
    or a ValueError naming ``what`` and the file."""
    from ..state_dicts import read_state_dict

    try:
        return read_state_dict(path)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def load_into(module: torch.nn.Module, state: dict, path: str, what: str, optional_prefixes=()) -> None:
    """Load ``state`` into ``module`` by key: every parameter/buffer must be there with its shape (BatchNorm's
    ``num_batches_tracked`` and keys under ``optional_prefixes`` may be absent), no unknown key is allowed."""
    own = module.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked")
                     and not any(k.startswith(p) for p in optional_prefixes))
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{what}: {path}: the keys do not match the expected layout: {'; '.join(parts)}")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{what}: {path}: tensor shapes do not match: {'; '.join(bad[:3])}")
    module.load_state_dict(state, strict=False)
