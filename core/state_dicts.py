"""Plain weights files -> ``{name: tensor}``: safetensors, or PyTorch files read with ``torch.load(weights_only=True)``
(never unpickling code); anything else is one ValueError line naming the file."""

from __future__ import annotations

from pathlib import Path

import torch


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors of ``path`` (``.safetensors`` by its suffix, else a PyTorch file; a ``state_dict`` entry
    is unwrapped), or a ValueError ``"PATH: ..."`` saying why not."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors errors; torch's message is many lines
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: not a plain weights file (torch.load(weights_only=True) / safetensors refused "
                         f"it: {first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: expected a state dict of named tensors, got {type(state).__name__}")
    return state
