"""train_pcdms: tiny CPU runs of the inpaint and prior stages lower the probe loss; resume continues exactly;
--init-unet widens conv_in (first 4 channels copied, the rest zero)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from posetransfer.training import train_pcdms
from test_train_common import check_the_output_dir_guard, plant

S = 32  # image frame; the tiny VAE is 8x, the tiny UNet 2x


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny PCDMs-layout dataset: 4 images, pose txt files, pairs.json."""
    root = tmp_path_factory.mktemp("pcdms_data")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(4):
        name = f"p{i}.png"
        img = np.zeros((S, S, 3), np.uint8)
        img[:, :] = rng.integers(0, 256, 3)
        img[8:24, 10 + i:20 + i] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(root / "images" / name)
        xy = rng.uniform(0.1, 0.9, (18, 2))
        lines = [f"{x} {y}" if k != 3 else "-1 -1" for k, (x, y) in enumerate(xy)]
        (root / "images" / f"p{i}.txt").write_text("\n".join(lines) + "\n")
        names.append(name)
    pairs = [{"source_image": names[i], "target_image": names[(i + 1) % 4]} for i in range(4)]
    (root / "pairs.json").write_text(json.dumps(pairs))
    return root


def _argv(data, out, stage, *extra):
    return ["--stage", stage, "--model-config", "tiny", "--data", str(data), "--resolution", f"{S}x{S}",
            "--vae", "tiny", "--clip", "tiny", "--dino", "tiny", "--output-dir", str(out), "--batch-size", "2",
            "--cpu", "--log-every", "1000", *extra]


def _run(argv):
    return train_pcdms.train(train_pcdms.parse_args(argv))


def test_inpaint_lowers_probe_loss(data, tmp_path):
    res = _run(_argv(data, tmp_path / "out", "inpaint", "--max-steps", "25", "--lr", "2e-3",
                     "--checkpoint-every", "0"))
    assert res["step"] == 25
    assert res["probe"][25] < 0.9 * res["probe"][0], res["probe"]
    records = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 26))
    from posetransfer.core.pcdms import PCDMsInpaintModel, load_pcdms

    assert isinstance(load_pcdms(res["model_path"]), PCDMsInpaintModel)


def test_prior_lowers_probe_loss(data, tmp_path):
    res = _run(_argv(data, tmp_path / "out", "prior", "--max-steps", "25", "--lr", "2e-3", "--mixed-precision", "bf16",
                     "--checkpoint-every", "0"))
    assert res["probe"][25] < 0.9 * res["probe"][0], res["probe"]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_continues_from_saved_step(data, tmp_path):
    common = ["--lr", "1e-3", "--gradient-accumulation-steps", "2", "--checkpoint-every", "2"]
    full = _run(_argv(data, tmp_path / "a", "simplified", "--max-steps", "4", *common))
    _run(_argv(data, tmp_path / "b", "simplified", "--max-steps", "2", *common))
    plant(tmp_path / "b" / "checkpoints" / "checkpoint-2", tmp_path / "pwned")  # accelerate's pickle file names
    resumed = _run(_argv(data, tmp_path / "b", "simplified", "--max-steps", "4", "--resume", "latest", *common))
    assert [r["step"] for r in resumed["history"]] == [3, 4] and not (tmp_path / "pwned").exists()
    for a, b in zip(full["history"][2:], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    wa, wb = _weights(full["model_path"]), _weights(resumed["model_path"])
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]


def test_init_unet_widens_conv_in(tmp_path):
    from diffusers import UNet2DConditionModel

    from posetransfer.core.pcdms import tiny_config

    cfg = tiny_config("inpaint")["unet_config"]
    sd_cfg = {k: v for k, v in cfg.items() if k != "projection_class_embeddings_input_dim"}
    torch.manual_seed(3)
    base = UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True, **sd_cfg)  # SD-2.1
    base.save_pretrained(tmp_path / "sd21" / "unet")
    args = train_pcdms.parse_args(["--stage", "inpaint", "--model-config", "tiny", "--data", "x", "--output-dir",
                                   "y", "--init-unet", str(tmp_path / "sd21")])
    model = train_pcdms._build_model(args, None)
    w = model.unet.conv_in.weight.detach()
    assert w.shape[1] == 9
    torch.testing.assert_close(w[:, :4], base.conv_in.weight.detach(), rtol=0, atol=0)
    assert torch.count_nonzero(w[:, 4:]) == 0
    torch.testing.assert_close(model.unet.conv_in.bias.detach(), base.conv_in.bias.detach(), rtol=0, atol=0)
    ref = base.state_dict()
    for k, v in model.unet.state_dict().items():
        if k in ref and not k.startswith("conv_in."):
            torch.testing.assert_close(v, ref[k], rtol=0, atol=0)
    # the prior has no UNet
    with pytest.raises(ValueError):
        train_pcdms._build_model(train_pcdms.parse_args(
            ["--stage", "prior", "--data", "x", "--output-dir", "y", "--init-unet", str(tmp_path / "sd21")]), None)


def test_main_reports_bad_input(tmp_path, capsys):
    code = train_pcdms.main(["--stage", "inpaint", "--model-config", "tiny", "--data", str(tmp_path / "none"),
                             "--vae", "tiny", "--clip", "tiny", "--dino", "tiny", "--output-dir",
                             str(tmp_path / "o"), "--cpu", "--resolution", "32x32"])
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_a_new_run_into_a_used_output_dir_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    check_the_output_dir_guard(train_pcdms.main, _argv(data, out, "simplified", "--max-steps", "1",
                                                       "--checkpoint-every", "0"), out, capsys)
