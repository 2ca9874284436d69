"""fp16 training with accelerate's GradScaler, run on the CPU (:mod:`fp16_cpu` gives the CPU Accelerator the scaler
and autocast that accelerate only sets up on GPUs): the scripts' fp16 runs complete with finite losses and
changed weights, a forced overflow skips the step (weights and optimiser state untouched, the scale halves), and
the GAN step's two optimisers each unscale and step their own gradients with one ``update()`` per optimisation
step, also under gradient accumulation. CPU float16 kernels are not CUDA's: GPU runs remain unverified."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import fp16_cpu
from posetransfer.training import common as train_common
from posetransfer.training import train_flow, train_pcdms, train_repose
from test_train_flow import PARTS, SINGLE, make_gfla
from test_train_flow import common as flow_argv
from test_train_pcdms import _argv as pcdms_argv
from test_train_pcdms import data  # noqa: F401  (pytest fixture)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; the machine is shared
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gfla4(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16_deepfashion4")
    make_gfla(root, people=2, views=2, seed=1)  # 4 pairs: one batch of 4
    return root


def states(made):
    """Entries in each prepared optimiser's state (Adam has none until its first real step)."""
    return [len(opt.optimizer.state) for opt in made.accelerator._optimizers]


def scales(history):
    return [r["loss_scale"] for r in history]


# ------------------------------------------------------------------------------ the GAN step's order (toy)

class _StepNow(train_flow._DeferredStep):
    """The order before the fix: each step function's ``step`` went straight to accelerate's optimiser step
    (``GradScaler.step`` + ``update()`` at once)."""

    def step(self, closure=None):
        return self.optimizer.step()


def _toy_gan(monkeypatch, proxy):
    """Two micro-batches (accumulation 2) of a G step then a D step, the order of ``stage2_step`` and
    ``train_step``; G's loss overflows in the second micro-batch. SGD, so the update is the averaged gradient."""
    from accelerate.utils import GradientAccumulationPlugin

    made = fp16_cpu.install(monkeypatch, init_scale=16.0)
    acc = train_common.make_accelerator(
        mixed_precision="fp16", cpu=True,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False))
    try:
        torch.manual_seed(0)
        g_net, d_net = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        g0 = [p.detach().clone() for p in g_net.parameters()]
        d0 = [p.detach().clone() for p in d_net.parameters()]
        xs = [torch.randn(5, 3, generator=torch.Generator().manual_seed(k)) for k in range(2)]
        g_net, d_net, opt_g, opt_d = acc.prepare(g_net, d_net, torch.optim.SGD(g_net.parameters(), lr=0.1),
                                                 torch.optim.SGD(d_net.parameters(), lr=0.1))
        train_common.plain_forward(acc, g_net, d_net)  # float32 forward: scaling by 2**k is then exact
        g_step, d_step = proxy(opt_g), proxy(opt_d)
        for k, x in enumerate(xs):
            with acc.accumulate(g_net, d_net):
                g_step.zero_grad()
                g_loss = g_net(x).pow(2).mean() * (1e38 if k == 1 else 1.0)  # x scale 16: inf in float32
                acc.backward(g_loss)
                g_step.step()
                d_step.zero_grad()
                acc.backward((d_net(x) - 1).pow(2).mean())
                d_step.step()
                train_flow._step_due(acc, [g_step, d_step])
        # D's reference: plain float32 autograd of the mean of the two micro-batch losses, one SGD step.
        ref = torch.nn.Linear(3, 1)
        with torch.no_grad():
            for p, v in zip(ref.parameters(), d0):
                p.copy_(v)
        (sum((ref(x) - 1).pow(2).mean() for x in xs) / 2).backward()
        d_expected = [v - 0.1 * p.grad for p, v in zip(ref.parameters(), d0)]
        return {"g": [p.detach() for p in g_net.parameters()], "g0": g0, "d_expected": d_expected,
                "d": [p.detach() for p in d_net.parameters()], "scale": acc.scaler.get_scale(),
                "skipped": (opt_g.step_was_skipped, opt_d.step_was_skipped, acc.optimizer_step_was_skipped),
                "made": made}
    finally:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_gan_step_under_the_scaler_steps_each_optimizer_on_its_own_gradients(monkeypatch):
    r = _toy_gan(monkeypatch, train_flow._DeferredStep)
    assert all(torch.equal(a, b) for a, b in zip(r["g"], r["g0"]))            # G overflowed: its step skipped
    for got, want in zip(r["d"], r["d_expected"]):                              # D stepped on its own gradient
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert r["scale"] == 8.0                                                    # one update(): 16 -> 8
    assert r["skipped"] == (True, False, True)


def test_the_old_order_unscaled_the_discriminator_with_the_wrong_scale(monkeypatch):
    """The control: accelerate's per-optimiser step (update() right after G's step) let D's last micro-batch be
    scaled by 8 and its first by 16, then unscaled both by 1/8: D moved on (2 g1 + g2) / 2, not (g1 + g2) / 2."""
    r = _toy_gan(monkeypatch, _StepNow)
    assert all(torch.equal(a, b) for a, b in zip(r["g"], r["g0"]))
    assert not all(torch.allclose(got, want, rtol=1e-3, atol=1e-5) for got, want in zip(r["d"], r["d_expected"]))


# ------------------------------------------------------------------------------ train_flow, parts model

def _flow(root, out, model, steps, *extra):
    return train_flow.train(train_flow.parse_args(flow_argv(root, out, model, steps, "--checkpoint-every", "0",
                                                            "--mixed-precision", "fp16", *extra)))


def adam_steps(opt) -> int:
    """Adam's own step counter (the same for every parameter it has stepped; 0 before its first step)."""
    counts = {int(st["step"]) for st in opt.optimizer.state.values()}
    assert len(counts) <= 1, counts
    return counts.pop() if counts else 0


def check_scaler_bookkeeping(made, history, init_scale):
    """What holds whatever the float16 numbers: one GradScaler.update() per optimisation step; the logged scale
    halves exactly after the steps in which some optimizer found inf/NaN gradients; each optimizer stepped (Adam's
    counter) exactly in the updates where its own gradients were finite."""
    assert len(made.updates) == len(history), "one update() per optimisation step"
    assert scales(history) == made.scale_after_each_update(init_scale)
    for opt in made.accelerator._optimizers:
        assert adam_steps(opt) == made.stepped(opt)
    for module, _ in made.initial:
        assert fp16_cpu.all_finite(module)


def test_train_flow_parts_fp16_trains_and_skips_per_optimizer(gfla4, tmp_path, monkeypatch):
    """Whether a given step overflows at a given scale depends on the last bits of CPU float16 kernels (an
    environment with other kernels saw scales [4, 4, 4, 2] where this one sees [4, 4, 4, 4]), so the test checks
    the scaler's bookkeeping against the overflows that really happened, not a list of scales."""
    parts = (*PARTS, "--stage1-steps", "1")
    made = fp16_cpu.install(monkeypatch, init_scale=4.0)
    res = _flow(gfla4, tmp_path / "a", "parts", 4, *parts)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert all(torch.isfinite(torch.tensor(r["d_loss"])) for r in res["history"][1:])
    check_scaler_bookkeeping(made, res["history"], 4.0)
    assert all(n > 0 for n in states(made))                                      # stage 1, G and D all stepped
    for module, before in made.initial:
        assert fp16_cpu.changed(module, before) > 0
    records = [json.loads(line) for line in (tmp_path / "a" / train_flow.LOG_JSONL).read_text().splitlines()]
    assert [r["loss_scale"] for r in records] == scales(res["history"])

    # From scale 4096 the generator's float16 gradients overflow (in this run: in every stage-2 step, while the
    # discriminator's do not): skipped steps leave that optimizer's state alone, the other one still steps.
    made = fp16_cpu.install(monkeypatch, init_scale=4096.0)
    res = _flow(gfla4, tmp_path / "b", "parts", 4, *parts)
    check_scaler_bookkeeping(made, res["history"], 4096.0)
    assert any(any(u.values()) for u in made.updates)                            # the skip path ran
    net, disc = (m for m, _ in made.initial)
    assert fp16_cpu.all_finite(net) and fp16_cpu.all_finite(disc)


@pytest.mark.parametrize("model", ["single", "parts"])
def test_train_flow_fp16_overflow_skips_every_step(gfla4, tmp_path, monkeypatch, model):
    """Scale 2**30 overflows float16 in every backward: nothing steps, the weights stay, the scale halves once per
    optimisation step (single: task 1, then task 2 with G and D; parts: stage 1, then G and D)."""
    extra = SINGLE if model == "single" else (*PARTS, "--stage1-steps", "1")
    made = fp16_cpu.install(monkeypatch, init_scale=2.0 ** 30)
    res = _flow(gfla4, tmp_path / "o", model, 3, *extra)
    assert scales(res["history"]) == [2.0 ** 29, 2.0 ** 28, 2.0 ** 27]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert states(made) == [0] * len(made.accelerator._optimizers)
    assert all(opt.step_was_skipped for opt in made.accelerator._optimizers)
    for module, before in made.initial:
        assert fp16_cpu.changed(module, before) == 0 and fp16_cpu.all_finite(module)


def test_guided_correlation_is_finite_under_fp16_autocast():
    """Eq 9 / eq 2 divide by maxima and norms clamped at 1e-12, which is 0 in float16: the correlation runs in
    float32 whatever the autocast (a zero feature vector gave 0/0 and a NaN flow, whose CPU float16 grid_sample
    backward then crashed the process)."""
    from posetransfer.core.flow_models.single_transform import guided_correlation

    g = torch.Generator().manual_seed(0)
    zs, zt = torch.rand(1, 4, 4, 4, generator=g), torch.rand(1, 4, 4, 4, generator=g)
    zs[..., 0, 0] = 0  # a position whose features are all zero (ReLU)
    assert torch.isfinite(guided_correlation(zs, zt, chunk_size=None)).all()       # float32: fine
    with torch.autocast("cpu", torch.float16):
        q = guided_correlation(zs.half(), zt.half(), chunk_size=None)
    assert torch.isfinite(q).all()


def test_train_flow_single_fp16_trains(gfla4, tmp_path, monkeypatch):
    made = fp16_cpu.install(monkeypatch, init_scale=4.0)
    res = _flow(gfla4, tmp_path / "s", "single", 4, *SINGLE)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert scales(res["history"]) == [4.0] * 4                                  # no overflow at scale 4
    assert all(n > 0 for n in states(made))                                      # every optimiser stepped
    for module, before in made.initial:
        assert fp16_cpu.changed(module, before) > 0 and fp16_cpu.all_finite(module)


# ------------------------------------------------------------------------------ train_repose

def _repose(root, out, steps, *extra):
    return train_repose.train(train_repose.parse_args(
        ["--model-config", "tiny", "--vae", "tiny", "--data", str(root), "--dataset", "deepfashion",
         "--resolution", "16x12", "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", "2",
         "--lr", "1e-3", "--seed", "0", "--cpu", "--log-every", "1000", "--checkpoint-every", "0",
         "--mixed-precision", "fp16", *extra]))


def _ema_steps(out, step):
    """The EMA's optimisation steps as the final checkpoint saved them."""
    state = json.loads((out / "checkpoints" / f"checkpoint-{step}" / "state.json").read_text())
    return state["extras"]["ema"]["optimization_step"]


def test_train_repose_fp16_trains_and_overflow_skips(gfla4, tmp_path, monkeypatch):
    # Accumulation 2 and clipping: backward scales, clip_grad_norm_ unscales, the step and update() follow.
    made = fp16_cpu.install(monkeypatch)
    res = _repose(gfla4, tmp_path / "a", 4, "--gradient-accumulation-steps", "2")
    assert scales(res["history"]) == [2.0 ** 16] * 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert res["probe"][4] < res["probe"][0]
    assert states(made)[0] > 0 and _ema_steps(tmp_path / "a", 4) == 4
    for module, before in made.initial:
        assert fp16_cpu.changed(module, before) > 0 and fp16_cpu.all_finite(module)

    made = fp16_cpu.install(monkeypatch, init_scale=2.0 ** 30)
    res = _repose(gfla4, tmp_path / "b", 3, "--gradient-accumulation-steps", "2")
    assert scales(res["history"]) == [2.0 ** 29, 2.0 ** 28, 2.0 ** 27]
    assert res["probe"][3] == res["probe"][0]                                   # the weights never moved
    assert states(made) == [0] and made.accelerator.optimizer_step_was_skipped
    assert _ema_steps(tmp_path / "b", 3) == 0                                     # no EMA on skipped steps
    for module, before in made.initial:
        assert fp16_cpu.changed(module, before) == 0 and fp16_cpu.all_finite(module)


# ------------------------------------------------------------------------------ train_pcdms

def test_train_pcdms_fp16_trains_and_overflow_skips(data, tmp_path, monkeypatch):  # noqa: F811
    made = fp16_cpu.install(monkeypatch)
    argv = pcdms_argv(data, tmp_path / "a", "simplified", "--max-steps", "3", "--lr", "2e-3", "--checkpoint-every", "0",
                      "--mixed-precision", "fp16", "--gradient-accumulation-steps", "2")
    res = train_pcdms.train(train_pcdms.parse_args(argv))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res["history"])
    assert scales(res["history"]) == [2.0 ** 16] * 3
    assert res["probe"][3] < res["probe"][0]
    assert states(made)[0] > 0
    (model, before), = made.initial
    assert fp16_cpu.changed(model, before) > 0 and fp16_cpu.all_finite(model)

    made = fp16_cpu.install(monkeypatch, init_scale=2.0 ** 30)
    argv = pcdms_argv(data, tmp_path / "b", "simplified", "--max-steps", "2", "--checkpoint-every", "0",
                      "--mixed-precision", "fp16")
    res = train_pcdms.train(train_pcdms.parse_args(argv))
    assert scales(res["history"]) == [2.0 ** 29, 2.0 ** 28]
    assert res["probe"][2] == res["probe"][0] and states(made) == [0]
    (model, before), = made.initial
    assert fp16_cpu.changed(model, before) == 0 and fp16_cpu.all_finite(model)
    # resumed, the loss scale goes on from the checkpoint's 2**28 (a fresh scaler would start again at 2**30)
    fp16_cpu.install(monkeypatch, init_scale=2.0 ** 30)
    argv[argv.index("--max-steps") + 1] = "3"
    res = train_pcdms.train(train_pcdms.parse_args([*argv, "--resume", "latest"]))
    assert scales(res["history"]) == [2.0 ** 27]
