"""The frozen VAE of the diffusion trainings (``--vae``), from local files only: nothing asks the Hugging Face Hub.

``--vae`` is a diffusers AutoencoderKL folder (``config.json`` + weights, or a pipeline folder with ``vae/``), or one
weights file: a diffusers-layout VAE state dict, an original (LDM) VAE checkpoint such as ``vae-ft-mse-840000``, or
a whole Stable Diffusion checkpoint (its ``first_stage_model.`` weights). A file has no config: the network is built
from :data:`SD_VAE_CONFIG` (the Stable Diffusion 1.x / 2.x VAE, e.g. ``stabilityai/sd-vae-ft-mse``) or from
``--vae-config`` (a diffusers ``config.json``, or the folder holding it). diffusers' ``from_single_file`` is not
used: without a local config it downloads one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# stabilityai/sd-vae-ft-mse's config.json (the same network as SD 1.x / 2.x's VAE); scaling 0.18215.
SD_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

_LDM_KEY = "encoder.down.0.block.0.conv1.weight"  # original (LDM / CompVis) layout


def vae_config(spec: str | None, flag: str = "--vae-config") -> dict:
    """:data:`SD_VAE_CONFIG` (``spec`` None) or a diffusers ``config.json`` file / the folder holding it."""
    if spec is None:
        return dict(SD_VAE_CONFIG)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag}: {path}: expected an AutoencoderKL config.json ({exc})") from None
    if not isinstance(config, dict) or "block_out_channels" not in config:
        raise ValueError(f"{flag}: {path}: not an AutoencoderKL config (no block_out_channels)")
    return config


def load_vae(spec: str, config: str | None = None, flag: str = "--vae"):
    """An ``AutoencoderKL`` from a local folder or weights file (module docstring), float32, never downloading."""
    from diffusers import AutoencoderKL

    from ..core.state_dicts import read_state_dict

    path = Path(spec)
    if path.is_dir():
        sub = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (sub / "config.json").is_file():
            raise FileNotFoundError(f"{flag}: {path} is not a diffusers AutoencoderKL folder (no config.json)")
        return AutoencoderKL.from_pretrained(str(sub), local_files_only=True, torch_dtype=torch.float32)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {spec} is neither a diffusers AutoencoderKL folder nor a file")
    cfg = vae_config(config)
    vae = AutoencoderKL.from_config(cfg)
    try:
        state = read_state_dict(path)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
    if any(k.endswith(_LDM_KEY) for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, dict(vae.config))
    own = vae.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{flag}: {path}: does not fit the VAE config ({config or 'the SD VAE'}): "
                         f"{len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} of another shape, e.g. "
                         f"{(missing + unexpected + bad)[:3]}; pass --vae-config with the file's config.json")
    vae.load_state_dict({k: v.float() for k, v in state.items()})
    return vae
