"""Test helper: accelerate's fp16 path (autocast float16 + GradScaler) on the CPU.

accelerate 1.x builds a GradScaler only on GPU-like devices; with ``mixed_precision="fp16"`` on the CPU it runs
in float32 with no scaler, so the scripts' fp16 code path (``accelerator.backward`` scaling the loss,
``clip_grad_norm_`` unscaling, ``AcceleratedOptimizer.step`` calling ``scaler.step`` + ``update``) would never
run in a CPU test. :func:`install` wraps :func:`posetransfer.training.common.make_accelerator` so that such an
Accelerator gets ``native_amp = True`` (``autocast()`` becomes ``torch.autocast("cpu", torch.float16)``) and
``scaler = torch.amp.GradScaler("cpu", ...)`` before ``prepare``, which hands the scaler to every
AcceleratedOptimizer. That is what ``Accelerator.__init__`` sets on CUDA, minus the device: numerics of CPU
float16 kernels differ from CUDA's, so this checks the control flow, not GPU numbers.
"""

from __future__ import annotations

import torch

from posetransfer.training import common


class Made:
    """What :func:`install` records: each Accelerator built, and each module's state before ``prepare``."""

    def __init__(self):
        self.accelerators = []
        self.initial = []  # (module, {parameter name: clone}) in the order prepare saw them
        # One entry per GradScaler.update(): {id(torch optimizer): inf/NaN found in its gradients} for each
        # optimizer that called scaler.step since the previous update.
        self.updates: list[dict[int, bool]] = []

    def stepped(self, optimizer) -> int:
        """How many updates the (accelerate-wrapped) ``optimizer`` really stepped in: stepped with finite grads."""
        inner = getattr(optimizer, "optimizer", optimizer)
        return sum(u.get(id(inner)) is False for u in self.updates)

    def scale_after_each_update(self, init_scale: float) -> list[float]:
        """What GradScaler's rule (halve on any inf, no growth within the interval) gives after each update."""
        scales, s = [], init_scale
        for u in self.updates:
            s = s / 2 if any(u.values()) else s
            scales.append(s)
        return scales

    @property
    def accelerator(self):
        assert len(self.accelerators) == 1, f"{len(self.accelerators)} Accelerators were built"
        return self.accelerators[0]


def install(monkeypatch, init_scale: float = 2.0 ** 16, growth_interval: int = 2000) -> Made:
    """Make every fp16 Accelerator the scripts build (through ``common.make_accelerator``) behave like the GPU
    path, with a CPU GradScaler of ``init_scale``; returns the record."""
    made = Made()
    original = getattr(common.make_accelerator, "unwrapped", common.make_accelerator)  # install twice: re-wrap

    def make(**kwargs):
        acc = original(**kwargs)
        assert acc.scaler is None and acc.device.type == "cpu"
        if acc.mixed_precision == "fp16":
            acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
            acc.native_amp = True
            update = acc.scaler.update

            def recording_update(new_scale=None, scaler=acc.scaler):
                made.updates.append({k: bool(sum(v.item() for v in st["found_inf_per_device"].values()))
                                     for k, st in scaler._per_optimizer_states.items()
                                     if st["found_inf_per_device"]})
                return update(new_scale)

            acc.scaler.update = recording_update
        prepare = acc.prepare

        def recording_prepare(*objects, **kw):
            for o in objects:
                if isinstance(o, torch.nn.Module):
                    made.initial.append((o, {k: v.detach().clone() for k, v in o.named_parameters()}))
            return prepare(*objects, **kw)

        acc.prepare = recording_prepare
        made.accelerators.append(acc)
        return acc

    make.unwrapped = original
    monkeypatch.setattr(common, "make_accelerator", make)
    return made


def changed(module, before: dict) -> int:
    """How many parameters of ``module`` differ from ``before`` (buffers such as BatchNorm statistics change
    without an optimiser step, so they are not counted)."""
    after = dict(module.named_parameters())
    return sum(not torch.equal(after[k].detach(), v) for k, v in before.items())


def all_finite(module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in module.state_dict().values() if v.is_floating_point())
