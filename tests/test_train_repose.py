"""training/train_repose.py on accelerate: gradient accumulation equals the unsplit batch, bf16 autocast trains,
resume with accumulation continues exactly, and the core training_loss is what training_step optimises.
(The 20-step run + resume without accumulation is in test_repose_nodes.py, the 30-step core run in
test_repose.py.)"""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from posetransfer.training import train_repose
from test_train_common import check_the_output_dir_guard, plant


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gfla(tmp_path_factory):
    from test_train_flow import make_gfla

    root = tmp_path_factory.mktemp("repose_train_deepfashion")
    make_gfla(root, people=2, views=2, seed=1)                            # 4 pairs
    return root


def run(root, out, steps, batch, *extra):
    return train_repose.train(train_repose.parse_args(
        ["--model-config", "tiny", "--vae", "tiny", "--data", str(root), "--dataset", "deepfashion",
         "--resolution", "16x12", "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", str(batch),
         "--lr", "1e-3", "--seed", "0", "--cpu", "--log-every", "1000", *extra]))


def weights(out, step):
    """The raw (not EMA) weights of both trained models in the checkpoint of ``step``."""
    folder = out / "checkpoints" / f"checkpoint-{step}" / "weights"
    return {f"{name}.{k}": v for name in ("denoiser", "pose_align")
            for k, v in load_file(str(folder / f"{name}.safetensors")).items()}


def test_accumulation_equals_the_unsplit_batch(gfla, tmp_path, monkeypatch):
    """4 examples in one batch, or 2 x 2 accumulated: the same data, the same draws (made for the whole step and
    sliced), the same averaged gradient, clipped the same way (condition dropout 10% and clipping stay on): the
    same update. Checked with SGD, whose update is linear in the gradient; AdamW's first update,
    lr * g / (|g| + 1e-8), turns float rounding of near-zero gradients into differences of ~1% of lr."""
    from posetransfer.core import repose
    from posetransfer.core.repose.denoiser import _parameters

    monkeypatch.setattr(repose, "make_optimizer", lambda modules, cfg: torch.optim.SGD(_parameters(modules),
                                                                                     lr=cfg.learning_rate))
    sgd = ("--lr", "1", "--checkpoint-every", "0")
    run(gfla, tmp_path / "init", 0, 4, *sgd)
    one = run(gfla, tmp_path / "b4", 1, 4, *sgd)
    two = run(gfla, tmp_path / "b2x2", 1, 2, "--gradient-accumulation-steps", "2", *sgd)
    run(gfla, tmp_path / "b2", 1, 2, *sgd)                               # the control: 2 examples, no accumulation
    assert one["history"][0]["loss"] == pytest.approx(two["history"][0]["loss"], rel=1e-6)
    w = weights(tmp_path / "init", 0)
    u0, u1, u2 = ({k: v - w[k] for k, v in weights(tmp_path / name, 1).items()} for name in ("b4", "b2x2", "b2"))
    size = max(float(v.abs().max()) for v in u0.values())
    off = max(float((u1[k] - u0[k]).abs().max()) for k in u0)
    control = max(float((u2[k] - u0[k]).abs().max()) for k in u0)
    print(f"largest update {size:.3g}, accumulated vs unsplit {off:.3g}, control {control:.3g}")
    assert size > 1e-3 and off < 1e-5 * size and control > 0.1 * size


def test_bf16_autocast_lowers_the_loss(gfla, tmp_path):
    res = run(gfla, tmp_path / "bf16", 6, 2, "--mixed-precision", "bf16", "--gradient-accumulation-steps", "2",
              "--checkpoint-every", "0")
    print("probe", res["probe"])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert res["probe"][6] < 0.95 * res["probe"][0]


def test_eq15_guidance_with_accumulation_and_bf16(gfla, tmp_path):
    res = run(gfla, tmp_path / "g", 2, 2, "--pose-guidance", "tiny", "--gradient-accumulation-steps", "2",
              "--mixed-precision", "bf16", "--checkpoint-every", "0")
    assert res["step"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert res["probe"][2] != res["probe"][0]


def test_resume_with_accumulation_continues_exactly(gfla, tmp_path):
    extra = ("--gradient-accumulation-steps", "2", "--checkpoint-every", "2")
    full = run(gfla, tmp_path / "full", 4, 2, *extra)
    run(gfla, tmp_path / "part", 2, 2, *extra)
    plant(tmp_path / "part" / "checkpoints" / "checkpoint-2", tmp_path / "pwned")  # accelerate's pickle file names
    resumed = run(gfla, tmp_path / "part", 4, 2, *extra, "--resume", "latest")
    assert [r["step"] for r in resumed["history"]] == [3, 4] and not (tmp_path / "pwned").exists()
    for a, b in zip(full["history"][2:], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    wa, wb = weights(tmp_path / "full", 4), weights(tmp_path / "part", 4)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def test_a_new_run_into_a_used_output_dir_is_refused(gfla, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model-config", "tiny", "--vae", "tiny", "--data", str(gfla), "--dataset", "deepfashion", "--resolution",
            "16x12", "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2", "--cpu", "--checkpoint-every",
            "0"]
    check_the_output_dir_guard(train_repose.main, argv, out, capsys)


def test_training_step_is_training_loss_then_one_update():
    """The core split: training_step = training_loss + backward + clip + AdamW step, same draws."""
    from posetransfer.core.repose import (TINY_POSE_ALIGN_CONFIG, TINY_UNET_CONFIG, PoseAlign, RePoseDenoiser,
                                          RePoseTrainConfig, make_optimizer, repose_noise_scheduler, training_step)
    from posetransfer.core.repose.denoiser import training_loss

    def build():
        torch.manual_seed(0)
        return RePoseDenoiser(unet_config=TINY_UNET_CONFIG), PoseAlign(**dict(TINY_POSE_ALIGN_CONFIG,
                                                                              num_iterations=1))

    g = torch.Generator().manual_seed(1)
    batch = {"target_latents": torch.randn(2, 4, 8, 6, generator=g),
             "pose_latents": torch.randn(2, 4, 8, 6, generator=g),
             "aligned_features": torch.randn(2, 4, 8, 6, generator=g)}
    sched, cfg = repose_noise_scheduler(), RePoseTrainConfig(learning_rate=1e-3, cond_drop_prob=0.5)
    den_a, pa_a = build()
    den_b, _ = build()
    opt_a, opt_b = make_optimizer([den_a], cfg), make_optimizer([den_b], cfg)
    logs = training_step(den_a, batch, scheduler=sched, optimizer=opt_a, config=cfg,
                         generator=torch.Generator().manual_seed(5))
    losses = training_loss(den_b, batch, scheduler=sched, config=cfg, generator=torch.Generator().manual_seed(5))
    assert {k: float(v.detach()) for k, v in losses.items()} == pytest.approx(logs, rel=1e-6)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(list(den_b.parameters()), cfg.max_grad_norm)
    opt_b.step()
    for (k, a), b in zip(den_a.state_dict().items(), den_b.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)
    assert any(not torch.equal(a, b) for a, b in zip(den_a.state_dict().values(), build()[0].state_dict().values()))
