"""Every model / weights loader of the project with networking disabled (:mod:`no_network`: each connection or
name lookup raises and is recorded; a test fails if any was attempted): train_flow ``--vgg``, train_pcdms /
train_repose ``--vae`` (folder and single file, diffusers and original layout), the transformers encoders, the
SD UNet start, RePose / flow / PCDMs model files and the official PCDMs checkpoint conversion, HigherHRNet, the
evaluation weights. The loaders' own tests live beside their code; the ones reused here run again offline."""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys

import pytest
import torch

import no_network
import test_evaluation
import test_pcdms_models
import test_pcdms_pipelines
import test_repose
import test_repose_nodes
import test_single_transform
import test_train_pcdms
from posetransfer.training import train_flow, train_pcdms, train_repose, vae_files


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    with no_network.guard(monkeypatch) as attempts:
        yield attempts
    torch.set_num_threads(n)
    assert attempts == [], f"network access: {attempts}"


def sub(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_the_guard_blocks_and_records(offline):
    with pytest.raises(OSError, match="network access in a test"):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(OSError), socket.socket() as s:
        s.connect(("127.0.0.1", 9))
    assert len(offline) == 2
    offline.clear()


# ------------------------------------------------------------------------------------------ the VAE
def tiny_vae_config():
    from posetransfer.core.repose import TINY_VAE_CONFIG

    return dict(TINY_VAE_CONFIG)


def to_ldm(state: dict, n_blocks: int) -> dict:
    """A diffusers AutoencoderKL state dict in the original (CompVis / LDM) layout, inside a whole SD checkpoint
    (``first_stage_model.``): the inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct = DIFFUSERS_TO_LDM_MAPPING["vae"]
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        k = direct.get(key, key)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        match = re.match(r"(.*)mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
        if match:
            k = f"{match[1]}mid.attn_1.{attn[match[2]]}.{match[3]}"
            if match[2] != "group_norm" and match[3] == "weight":
                value = value[:, :, None, None]                     # 1x1 convolutions in the original
        out["first_stage_model." + k.replace("conv_shortcut", "nin_shortcut")] = value
    out["model.diffusion_model.conv_in.weight"] = torch.zeros(1)  # the rest of an SD checkpoint
    return out


@pytest.fixture
def vae_files_on_disk(tmp_path):
    from diffusers import AutoencoderKL

    cfg = tiny_vae_config()
    torch.manual_seed(3)
    vae = AutoencoderKL(**cfg)
    sd = vae.state_dict()
    vae.save_pretrained(sub(tmp_path, "folder"))
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "vae.safetensors"))
    torch.save({"state_dict": to_ldm(sd, len(cfg["block_out_channels"]))}, tmp_path / "sd-model.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path, sd


def test_vae_from_a_folder_or_a_single_file_never_downloads(vae_files_on_disk):
    root, sd = vae_files_on_disk
    for spec, config in ((root / "folder", None), (root / "vae.safetensors", root / "config.json"),
                         (root / "sd-model.ckpt", root)):
        vae = vae_files.load_vae(str(spec), None if config is None else str(config))
        got = vae.state_dict()
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), spec
    assert vae_files.vae_config(None)["block_out_channels"] == [128, 256, 512, 512]
    with pytest.raises(ValueError, match="does not fit the VAE config.*--vae-config"):     # the SD config: too big
        vae_files.load_vae(str(root / "vae.safetensors"))
    (root / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    torch.save(test_single_transform.torch.nn.Linear(1, 1), root / "module.pt")
    with pytest.raises(ValueError, match=r"--vae: .*module\.pt: not a plain weights file"):
        vae_files.load_vae(str(root / "module.pt"), str(root / "config.json"))


def test_train_repose_with_a_vae_file_runs_offline(vae_files_on_disk, tmp_path):
    """The reported case: ``train_repose --vae FILE`` asked the hub for a config (diffusers from_single_file)."""
    root, _ = vae_files_on_disk
    data = tmp_path / "data"
    from test_train_flow import make_gfla

    make_gfla(data, people=2, views=2, seed=1)
    for vae in ("vae.safetensors", "sd-model.ckpt"):
        code = train_repose.main(["--model-config", "tiny", "--vae", str(root / vae), "--vae-config",
                                  str(root / "config.json"), "--data", str(data), "--resolution", "16x12",
                                  "--output-dir", str(tmp_path / f"run-{vae}"), "--max-steps", "1", "--batch-size", "2",
                                  "--cpu", "--checkpoint-every", "0"])
        assert code == 0, vae


def test_pcdms_training_loaders(vae_files_on_disk, tmp_path):
    root, sd = vae_files_on_disk
    vae = train_pcdms._load_vae(str(root / "vae.safetensors"), "cpu", str(root / "config.json"))
    assert torch.equal(vae.vae.state_dict()["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])
    assert train_pcdms._load_vae(str(root / "folder"), "cpu").latent_channels == 4
    test_train_pcdms.test_init_unet_widens_conv_in(sub(tmp_path, "unet"))           # --init-unet (diffusers folder)
    test_pcdms_pipelines.test_transformers_encoders_from_a_folder(sub(tmp_path, "enc"))  # CLIP / DINOv2 folders
    enc = train_pcdms._load_encoder(str(tmp_path / "enc" / "clip"), "clip", 0, "cpu")
    assert enc.model.training is False and not any(p.requires_grad for p in enc.model.parameters())
    assert train_pcdms._load_encoder(str(tmp_path / "enc" / "dino"), "dino", 0, "cpu") is not None


@pytest.mark.parametrize("kind", ["inpaint", "prior"])
def test_pcdms_checkpoints_and_conversion(tmp_path, kind):
    test_pcdms_models.test_deepspeed_fp32_file_loads_identically(sub(tmp_path, "ds"), kind)
    test_pcdms_models.test_converter_round_trip(sub(tmp_path, "conv"), kind)


def test_repose_model_files_and_higher_hrnet(tmp_path):
    test_repose_nodes.test_model_files_round_trip(sub(tmp_path, "repose"))            # train_repose --init, the node
    test_repose.test_higher_hrnet_checkpoint_loads_with_weights_only(sub(tmp_path, "hrnet"))


def test_flow_model_files_and_vgg(tmp_path):
    cfg = train_flow.resolve_model_config("single", "tiny", "deepfashion")
    torch.manual_seed(0)
    modules = train_flow.build_modules("single", cfg)
    train_flow.export_model("single", modules, tmp_path / "model", {"step": 1})
    train_flow.save_model_file("single", modules, tmp_path / "flow.safetensors")
    for path in (tmp_path / "model", tmp_path / "flow.safetensors"):
        _, loaded = train_flow.load_flow_modules(path)
        for name in ("flow_net", "refiner"):
            a, b = modules[name].state_dict(), loaded[name].state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert train_flow.load_flow_model(path) is not None
    from posetransfer.core.flow_models.model_files import model_file_kind
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert model_file_kind(tmp_path / "flow.safetensors") == "single"  # what the loader node lists
    for foreign in ("other.safetensors", "junk.safetensors", "missing.safetensors", "model"):
        assert model_file_kind(tmp_path / foreign) is None, foreign
    test_single_transform.test_vgg19_layout_and_torchvision_state_dict(sub(tmp_path, "vgg"))
    args = argparse.Namespace(vgg=str(tmp_path / "vgg" / "vgg19.pth"), seed=0, vgg_width_divisor=1)
    assert train_flow.build_extractor(args, ("relu1_1",)) is not None                # train_flow --vgg


def test_evaluation_weights(tmp_path, monkeypatch):
    test_evaluation.test_lpips_loader_maps_torchvision_and_lpips_keys(sub(tmp_path, "lpips"))
    test_evaluation.test_inception_loader_by_key_and_transform(sub(tmp_path, "inception"))
    test_evaluation.test_missing_weight_files_are_clear_errors(sub(tmp_path, "missing"), monkeypatch)
