"""Train the learned flow models on accelerate: ``--model single`` (single spatial transformation) or
``--model parts`` (structure-aware part flow).

Commands (also ``posetransfer train-flow ...``)::

    # one process (CPU, or one GPU)
    python -m posetransfer.training.train_flow --model parts --data DeepFashion --dataset deepfashion \\
        --vgg vgg19-dcbb9e9d.pth --output-dir runs/parts --max-steps 200000 --checkpoint-every 5000
    # several GPUs, mixed precision, gradient accumulation
    accelerate launch --multi_gpu --num_processes 4 -m posetransfer.training.train_flow --model single \\
        --data DeepFashion --vgg vgg19.pth --output-dir runs/single --mixed-precision bf16 \\
        --gradient-accumulation-steps 2
    # continue where it stopped (global step, weights, optimisers, schedulers, RNG states)
    python -m posetransfer.training.train_flow ... --output-dir runs/parts --resume latest
    # fine-tune on your own photos (OpenPose JSON next to each photo), from a trained model
    python -m posetransfer.training.train_flow --model parts --dataset folder --data my_photos \\
        --init runs/parts/model --vgg vgg19.pth --output-dir runs/mine
    # use it
    posetransfer transfer --method parts --model runs/parts/model --source a.png --source-pose a.json ...

What one run writes in ``--output-dir``:

* ``checkpoints/checkpoint-N/``: every ``--checkpoint-every`` steps, the training state in JSON + safetensors
  (models, optimisers, LR schedulers, RNG states, the step; :mod:`.checkpoints`) and ``model/``, the export of
  that step.
* ``model/``: the export of the last step. Single: ``flow_net/`` and ``refiner/`` (``save_pretrained`` folders,
  ``config.json`` + ``diffusion_pytorch_model.safetensors``); parts: the ``PartFlowNet`` folder. Both with
  ``posetransfer_flow_model.json`` (kind, step). :func:`load_flow_model` reads them (the CLI's
  ``transfer --model``, the ComfyUI loader node); ``--single-file`` also writes ``flow_model.safetensors`` (one
  file, configs in its metadata) for ComfyUI's ``models/posetransfer``.
* ``train_log.jsonl`` and ``train_log.csv``: the losses of every optimisation step (averaged over the
  accumulated micro-batches and the processes); ``--log-with tensorboard|wandb|...`` adds accelerate trackers.

Schedules. Single: tasks alternate step by step (even steps the affine task, odd the reconstruction;
:mod:`..core.flow_models.train_single`), ``--schedule two_phase`` is the paper's appendix-B schedule. Parts:
``--stage1-steps`` steps of stage 1 (the flow generators alone on the sampling-correctness loss), then stage 2
(end to end, eq 10, with the discriminator) until ``--max-steps``; each stage has its own Adam.

Optimiser steps: the core step functions' ``step`` calls are deferred to the end of each micro-batch
(``_DeferredStep``), and under fp16 all due optimisers step through the one GradScaler with a single ``update()``
per optimisation step, so the GAN step's generator and discriminator each unscale and step their own gradients,
all scaled by the same factor, also with gradient accumulation (accelerate's own per-optimiser ``update()`` let
D's accumulated micro-batches be scaled by two factors). Tested on the CPU with a CPU GradScaler
(tests/test_train_fp16.py: a toy against float32 autograd, parts runs that step, forced overflows that skip per
optimiser and halve the scale once per step); GPU fp16 runs are unverified. The single model's correlation
(eq 1, 9, 2) runs in float32 under autocast: its eps of 1e-12 is 0 in float16.

Losses need VGG-19 features: ``--vgg`` takes torchvision's ``vgg19`` weights (``vgg19-dcbb9e9d.pth`` or a
safetensors copy); ``--vgg random`` runs with a random network, for smoke tests only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import common
from .common import EpochSampler, plain_forward
from ..core.flow_models.model_files import (FILE_KEY, KINDS, MARKER, MODEL_DIR, detect_model_kind,  # noqa: F401
                                            export_model, load_flow_model, load_flow_modules, save_model_file)

__all__ = ["KINDS", "MARKER", "detect_model_kind", "load_flow_model", "load_flow_modules", "export_model",
           "save_model_file", "add_arguments", "parse_args", "train", "run", "main"]

PROG = "posetransfer train-flow"
SINGLE_FILE = "flow_model.safetensors"
LOG_JSONL, LOG_CSV = "train_log.jsonl", "train_log.csv"


# =============================================================================================== models

def _presets() -> dict:
    from ..core.flow_models.part_flow_net import (PART_FLOW_MARKET_CONFIG, PART_FLOW_PAPER_CONFIG,
                                                  PART_FLOW_TINY_CONFIG)
    from ..core.flow_models.single_transform import (PAPER_FLOW_NET_CONFIG, PAPER_REFINER_CONFIG,
                                                     TINY_FLOW_NET_CONFIG, TINY_REFINER_CONFIG)

    return {
        "single": {
            "paper": {"flow_net": PAPER_FLOW_NET_CONFIG, "refiner": PAPER_REFINER_CONFIG, "discriminator": {}},
            "tiny": {"flow_net": TINY_FLOW_NET_CONFIG, "refiner": TINY_REFINER_CONFIG,
                     "discriminator": {"channels": [8, 16]}},
        },
        "parts": {
            "paper": {"model": PART_FLOW_PAPER_CONFIG, "discriminator": {}},
            "market": {"model": PART_FLOW_MARKET_CONFIG, "discriminator": {"num_layers": 3}},
            "tiny": {"model": PART_FLOW_TINY_CONFIG,
                     "discriminator": {"base_channels": 8, "max_channels": 16, "num_layers": 3}},
        },
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def resolve_model_config(kind: str, spec: str | None, dataset: str) -> dict:
    """A preset name (single: paper, tiny; parts: paper, market, tiny) or a JSON file with the same sections
    (``flow_net``, ``refiner``, ``discriminator`` / ``model``, ``discriminator``)."""
    presets = _presets()[kind]
    if spec is None:
        spec = "market" if (kind == "parts" and dataset == "market") else "paper"
    if spec in presets:
        return _jsonable(presets[spec])
    if not os.path.isfile(spec):
        raise ValueError(f"--model-config: expected one of {sorted(presets)} or a JSON file, got {spec!r}")
    try:
        cfg = json.loads(Path(spec).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"--model-config: {spec}: invalid JSON ({exc})") from None
    need = ("flow_net", "refiner") if kind == "single" else ("model",)
    if not isinstance(cfg, dict) or any(not isinstance(cfg.get(k), dict) for k in need):
        raise ValueError(f"--model-config: {spec}: expected an object with sections {list(need)} "
                         f"(+ optional 'discriminator')")
    cfg.setdefault("discriminator", {})
    return cfg


def build_modules(kind: str, config: dict) -> dict[str, nn.Module]:
    if kind == "single":
        from ..core.flow_models.losses import PoseConditionedDiscriminator
        from ..core.flow_models.single_transform import SingleTransformFlowNet, SingleTransformRefiner

        return {"flow_net": SingleTransformFlowNet(**config["flow_net"]),
                "refiner": SingleTransformRefiner(**config["refiner"]),
                "discriminator": PoseConditionedDiscriminator(**config.get("discriminator", {}))}
    from ..core.flow_models.part_flow_losses import PartFlowDiscriminator
    from ..core.flow_models.part_flow_net import PartFlowNet

    return {"model": PartFlowNet(**config["model"]),
            "discriminator": PartFlowDiscriminator(**config.get("discriminator", {}))}


def _module_config(module: nn.Module) -> dict:
    return _jsonable(dict(module.config))


def _layers(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    if text is None:
        return tuple(default)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"expected comma-separated VGG-19 layer names such as relu3_1,relu4_1, got {text!r}")
    return names


def build_extractor(args, layers: Sequence[str]):
    from ..core.flow_models.losses import VGG19Features

    if args.vgg is None:
        raise ValueError("--vgg: the losses need VGG-19 features; pass torchvision's vgg19 weights "
                         "(vgg19-dcbb9e9d.pth or a .safetensors copy), or 'random' for a smoke test")
    layers = tuple(dict.fromkeys(layers))
    if args.vgg == "random":
        g = torch.random.get_rng_state()
        torch.manual_seed(args.seed + 12345)  # the same random network on every run and resume
        try:
            return VGG19Features(layers, width_divisor=args.vgg_width_divisor)
        finally:
            torch.random.set_rng_state(g)
    if not os.path.isfile(args.vgg):
        raise FileNotFoundError(f"--vgg: no such file: {args.vgg}")
    try:
        return VGG19Features.from_torchvision_file(args.vgg, layers)
    except ValueError as exc:
        raise ValueError(f"--vgg: {exc}") from None


# ============================================================================================= arguments

def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, choices=KINDS,
                   help="single: single spatial transformation (flow net + refiner); parts: structure-aware part "
                        "flow")
    g.add_argument("--model-config", metavar="NAME|JSON", default=None,
                   help="preset (single: paper, tiny; parts: paper, market, tiny) or a JSON file with the sections "
                        "flow_net/refiner/discriminator (single) or model/discriminator (parts). Default: paper "
                        "(parts on Market-1501: market)")
    g.add_argument("--init", metavar="MODEL", default=None,
                   help="start from a saved model (a train-flow export folder or file) instead of random weights, "
                        "e.g. to fine-tune on your own photos")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="dataset folder (GFLA/PIDM layout) or, with --dataset folder, a "
                                                 "folder of person photos")
    g.add_argument("--dataset", default="deepfashion", choices=("deepfashion", "market", "folder"),
                   help="deepfashion / market: annotation CSV + pairs CSV + images (targets are real photos of the "
                        "target pose); folder: self-supervised pairs from single photos with OpenPose JSON (the "
                        "target is the real photo, the source made from it; see training/datasets.py)")
    g.add_argument("--split", default="train", help="split name in the CSV file names (default: train)")
    g.add_argument("--annotations", metavar="CSV", help="annotation CSV (default: found in --data)")
    g.add_argument("--pairs", metavar="CSV", help="pairs CSV (default: found in --data)")
    g.add_argument("--images", metavar="DIR", help="image folder (default: found in --data)")
    g.add_argument("--openpose-dir", metavar="DIR", help="folder mode: OpenPose JSON folder (default: --data)")
    g.add_argument("--pair-modes", default="affine,parts",
                   help="folder mode: which pairs to make, affine and/or parts (default: affine,parts)")
    g.add_argument("--warp-segmentation", default="grabcut", choices=("grabcut", "skeleton"),
                   help="folder mode: segmentation of the part warp (skeleton is faster)")
    g.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default: 0)")

    g = p.add_argument_group("training")
    g.add_argument("--output-dir", required=True, metavar="OUT", help="run folder (checkpoints, logs, model)")
    g.add_argument("--max-steps", type=int, default=1000, help="optimisation steps in total (default: 1000)")
    g.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch (default: 4)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="N",
                   help="micro-batches per optimisation step (default: 1)")
    g.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"),
                   help="autocast precision (default: no; fp16 needs a GPU)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    g.add_argument("--lr", type=float, default=None,
                   help="generator learning rate (default: single 1e-4, parts 1e-3 as the paper)")
    g.add_argument("--d-lr", type=float, default=None, help="discriminator learning rate (default: --lr)")
    g.add_argument("--lr-scheduler", default="constant",
                   choices=("constant", "constant_with_warmup", "linear", "cosine"),
                   help="learning-rate schedule over each stage (default: constant)")
    g.add_argument("--lr-warmup-steps", type=int, default=0)
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and random pairs")
    g.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                   help="save a checkpoint (training state + a safetensors export) every N steps (default: 500; "
                        "0: only at the end)")
    g.add_argument("--checkpoints-total-limit", type=int, default=None, metavar="K",
                   help="keep only the K newest checkpoints")
    g.add_argument("--resume", metavar="latest|PATH", default=None,
                   help="continue from the newest complete checkpoint of --output-dir (latest) or from a "
                        "checkpoint folder: same step, weights, optimisers, schedulers and RNG states")
    common.add_run_arguments(g)
    g.add_argument("--log-every", type=int, default=10, metavar="N",
                   help="print the losses every N steps (the log files get every step)")
    g.add_argument("--log-with", default=None,
                   help="accelerate trackers too: tensorboard, wandb, ... or all (default: none)")
    g.add_argument("--single-file", action="store_true",
                   help="also write OUT/flow_model.safetensors (one file, for ComfyUI's models/posetransfer)")

    g = p.add_argument_group("losses")
    g.add_argument("--vgg", metavar="PATH|random", default=None,
                   help="torchvision vgg19 weights for the feature losses; 'random' for smoke tests only")
    g.add_argument("--vgg-width-divisor", type=int, default=1, help=argparse.SUPPRESS)
    g.add_argument("--perceptual-layers", default=None,
                   help="VGG layers of the perceptual loss (default: relu1_1,...,relu5_1)")
    g.add_argument("--perceptual-scales", default="1,0.5,0.25,0.125",
                   help="single: resolutions of the multi-scale perceptual loss (default: 1,0.5,0.25,0.125)")
    g.add_argument("--lambda1", type=float, default=None, help="single: generative loss weight (default 0.1)")
    g.add_argument("--lambda2", type=float, default=None, help="single: affine loss weight (default 0.001)")
    g.add_argument("--schedule", default="alternate", choices=("alternate", "two_phase"),
                   help="single: alternate tasks from the start, or the appendix-B two-phase schedule")
    g.add_argument("--phase1-steps", type=int, default=0, help="single, two_phase: steps of phase 1")
    g.add_argument("--gan-mode", default="paper", choices=("paper", "lsgan"), help="single: eq 6 form")
    g.add_argument("--stage1-steps", type=int, default=None,
                   help="parts: steps of stage 1 (flow generators alone); default: a third of --max-steps")
    g.add_argument("--stage1-lr", type=float, default=None,
                   help="parts: learning rate of stage 1 (default: --lr)")
    g.add_argument("--correctness-layers", default=None,
                   help="parts: VGG layers of the sampling-correctness loss (default: relu3_1,relu4_1)")
    g.add_argument("--style-layers", default=None,
                   help="parts: VGG layers of the style loss (default: relu2_2,relu3_4,relu4_4,relu5_2)")
    g.add_argument("--loss-weights", default=None, metavar="sam=5,rec=5,adv=2,per=0.5,sty=500",
                   help="parts: eq 10 weights (GFLA's by default)")
    g.add_argument("--adversarial", default="nonsaturating", choices=("nonsaturating", "minimax"),
                   help="parts: generator side of eq 12")
    return p


def build_arg_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a learned flow model (single spatial "
                                "transformation or structure-aware part flow) on accelerate.")
    return add_arguments(p)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_arg_parser().parse_args(argv)


def _check_args(args) -> None:
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.checkpoint_every < 0 or args.num_workers < 0 or args.lr_warmup_steps < 0:
        raise ValueError("--checkpoint-every, --num-workers and --lr-warmup-steps must not be negative")
    if args.data is None and not (args.dataset != "folder" and args.annotations and args.pairs and args.images):
        raise ValueError("--data: required (the dataset folder, or the photo folder with --dataset folder)")
    if args.stage1_steps is not None and not 0 <= args.stage1_steps <= args.max_steps:
        raise ValueError(f"--stage1-steps: expected 0..--max-steps ({args.max_steps}), got {args.stage1_steps}")


# ============================================================================================= helpers

class _DeferredStep:
    """The accelerate optimiser as the core step functions see it. Their ``zero_grad`` (at their START) is ignored:
    with gradient accumulation it would wipe the micro-batches gathered so far (the loop zeroes after each
    optimisation step). Their ``step`` only marks the optimiser as due; :func:`_step_due` steps the due ones once
    the micro-batch's backward passes are all done.

    Why deferred: under fp16, accelerate's ``AcceleratedOptimizer.step`` runs ``GradScaler.step`` and then
    ``update()`` at once. In a GAN step (G backward, G step, D backward, D step) with accumulation, G's update would
    change the scale between D's earlier micro-batches and its last one, and D would be unscaled with the wrong
    factor. Deferred, every backward of an optimisation step uses one scale and ``update()`` runs once after all
    optimisers stepped (torch's recipe for several optimisers). D's loss uses the generated image detached and
    computed before G's step, and G's loss is back-propagated before D steps, so the order G step / D backward
    does not change any gradient."""

    def __init__(self, optimizer):
        self.optimizer, self.due = optimizer, False

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("closures are not supported by the deferred step")
        self.due = True

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def _step_due(accelerator, proxies) -> None:
    """Step the optimisers of ``proxies`` marked due in this micro-batch (nothing until gradients sync, as
    accelerate's own step). Without a loss scaler: accelerate's step. With one (fp16): ``scaler.step`` on each
    (it unscales that optimiser's gradients and skips its step when they hold inf/NaN), then ONE ``update()``;
    each optimiser's ``step_was_skipped`` (read by the prepared LR schedulers, which then do not advance) is set
    as accelerate sets it."""
    due = [p for p in proxies if p.due]
    for p in proxies:
        p.due = False
    if not due or not accelerator.sync_gradients:
        return
    scaler = accelerator.scaler
    if scaler is None:
        for p in due:
            p.optimizer.step()
        return
    for p in due:
        wrapped = p.optimizer                      # accelerate's AcceleratedOptimizer
        inner = wrapped.optimizer
        called = []
        own = "step" in vars(inner)
        original = inner.step

        def flagged(*args, _original=original, _called=called, **kwargs):
            _called.append(True)
            return _original(*args, **kwargs)

        inner.step = flagged                       # how accelerate itself learns that GradScaler skipped a step
        try:
            scaler.step(inner)
        finally:
            if own:
                inner.step = original
            else:
                del inner.step
        wrapped._is_overflow = not called          # accelerate's flag behind ``step_was_skipped``
    scaler.update()


class _Inner:
    """A DDP-wrapped model called through its wrapper, with the inner model's attributes (``part_names``)."""

    def __init__(self, wrapped, inner):
        self._wrapped, self._inner = wrapped, inner

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _FlowsView(nn.Module):
    """Stage 1 under DDP: ``estimate_flows`` as ``forward``, so the flow generators' gradients are synced."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, source_pose, target_pose):
        return self.net.estimate_flows(source_pose, target_pose)


class _FlowsOnly:
    def __init__(self, view, inner):
        self._view, self.part_names = view, inner.part_names

    def estimate_flows(self, source_pose, target_pose):
        return self._view(source_pose, target_pose)


class _Float32(nn.Module):
    """Runs a loss module in float32 with autocast off (the multi-scale perceptual loss's antialiased resize has
    no bfloat16 kernel on the CPU); its feature extractor goes back to autocast through :class:`_Autocast`."""

    def __init__(self, inner: nn.Module, accelerator):
        super().__init__()
        self.inner, self._device_type = inner, accelerator.device.type

    def forward(self, *args):
        with torch.autocast(self._device_type, enabled=False):
            return self.inner(*[a.float() if torch.is_tensor(a) else a for a in args])


class _Autocast(nn.Module):
    def __init__(self, inner: nn.Module, accelerator):
        super().__init__()
        self.inner, self._accelerator = inner, accelerator

    def forward(self, *args):
        with self._accelerator.autocast():
            return {k: v.float() for k, v in self.inner(*args).items()}


def _make_dataset(args, spec):
    from .datasets import GFLAPairs, SelfSupervisedPairs

    if args.dataset == "folder":
        modes = [m.strip() for m in args.pair_modes.split(",") if m.strip()]
        return SelfSupervisedPairs(args.data, spec, args.openpose_dir, modes=modes, seed=args.seed,
                                   segmentation=args.warp_segmentation)
    return GFLAPairs(args.data, spec, args.dataset, args.split, args.annotations, args.pairs, args.images)


def _parse_weights(text: str | None):
    from ..core.flow_models.part_flow_losses import PartFlowLossWeights

    w = PartFlowLossWeights()
    if not text:
        return w
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if not hasattr(w, key) or not value:
            raise ValueError(f"--loss-weights: expected items like sam=5,rec=5,adv=2,per=0.5,sty=500, got {item!r}")
        setattr(w, key, float(value))
    return w


class _Logger:
    """Losses -> console (every ``every`` steps), JSONL and CSV (every step), accelerate trackers."""

    def __init__(self, out: Path, columns: list[str], every: int, accelerator, resume_step: int):
        self.out, self.columns, self.every, self.acc = out, columns, max(1, every), accelerator
        self.main = accelerator.is_main_process
        if self.main:
            self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        """Drop log rows after ``step`` (left by a run that went on past the checkpoint it resumes from)."""
        jl, cv = self.out / LOG_JSONL, self.out / LOG_CSV
        if step == 0:
            for f in (jl, cv):
                f.unlink(missing_ok=True)
            return
        common.truncate_jsonl(jl, step)
        if cv.is_file():
            with open(cv, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
            with open(cv, "w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, self.columns, extrasaction="ignore", restval="")
                w.writeheader()
                w.writerows(r for r in rows if r.get("step") and int(r["step"]) <= step)

    def log(self, record: dict) -> None:
        if not self.main:
            return
        common.append_jsonl(self.out / LOG_JSONL, record)
        path = self.out / LOG_CSV
        new = not path.is_file()
        with open(path, "a", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, self.columns, extrasaction="ignore", restval="")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
        if record["step"] % self.every == 0 or record["step"] == 1:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                             if k not in ("time",) and not k.startswith("sam_"))
            print(f"[train-flow] {shown}", flush=True)


def _mean_logs(logs: list[dict], accelerator) -> dict:
    keys = sorted({k for log in logs for k in log})
    values = torch.tensor([[float(log.get(k, math.nan)) for k in keys] for log in logs], dtype=torch.float64)
    mean = values.nanmean(0).to(accelerator.device)
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean, reduction="mean")
    return {k: float(v) for k, v in zip(keys, mean.cpu())}


# =============================================================================================== training

def train(args: argparse.Namespace) -> dict:
    """Run (or resume) one training; returns ``{"step", "history", "output_dir", "model_dir"}`` (``history``:
    the logged records of this call)."""
    _check_args(args)
    from accelerate.utils import DistributedDataParallelKwargs

    out = Path(args.output_dir)
    return common.run_with_accelerator(
        args, out, lambda accelerator: _train(args, accelerator, out, args.model),
        logs=True, log_with=args.log_with, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


@dataclass
class _Recipe:
    """One model kind's training, prepared by accelerate: what the step loop, the checkpoints and the logs use."""

    loader: torch.utils.data.DataLoader
    train_modules: list[nn.Module]      # the exported ones first (_EXPORTED[kind]), then the discriminator
    optimizers: list                    # accelerate's optimizers (their gradients are cleared after each step)
    deferred: list[_DeferredStep]       # the steps the losses ask for, run once gradients are synced
    resumable: common.Resumable
    columns: list[str]                  # the CSV log's columns
    one_step: Callable[[dict, int], dict]           # (micro-batch, step) -> that micro-batch's losses
    step_schedulers: Callable[[int, list[dict]], None]
    current_lr: Callable[[int], float]
    stage1_steps: int | None = None     # parts only: the steps of stage 1 (flow generators alone)


# The modules a run exports as its model, in the order of _Recipe.train_modules.
_EXPORTED = {"single": ("flow_net", "refiner"), "parts": ("model",)}


def _run_modules(args, kind: str, resume: Path | None) -> tuple[dict[str, nn.Module], dict, dict]:
    """``(modules, model_config, saved)``: from the checkpoint's config (resume, ``saved`` is that config), a
    saved model (--init) or a preset / JSON."""
    init_modules: dict[str, nn.Module] = {}
    saved: dict = {}
    if resume is not None:
        saved = common.read_train_config(resume, kind)
        model_config = saved["model_config"]
    else:
        model_config = resolve_model_config(kind, args.model_config, args.dataset)
        if args.init is not None:
            _, init_modules = load_flow_modules(args.init, kind)
            for name, module in init_modules.items():
                model_config[name] = _module_config(module)
    modules = build_modules(kind, model_config)
    for name, module in init_modules.items():
        modules[name].load_state_dict(module.state_dict())
    return modules, {name: _module_config(m) for name, m in modules.items()}, saved


def _scheduler_factory(args, accelerator) -> Callable:
    """``(optimizer, steps) -> lr scheduler`` of --lr-scheduler (accelerate steps it once per process)."""
    from diffusers.optimization import get_scheduler

    nproc = accelerator.num_processes

    def scheduler(opt, steps):
        return get_scheduler(args.lr_scheduler, opt, num_warmup_steps=args.lr_warmup_steps * nproc,
                             num_training_steps=max(1, steps) * nproc)

    return scheduler


def _single_recipe(args, accelerator, modules, spec, loader, scheduler) -> _Recipe:
    """The single-transformation model: flow net + refiner against a discriminator (train_single's steps)."""
    from ..core.flow_models.losses import MultiScalePerceptualLoss
    from ..core.flow_models.train_single import (SingleTrainConfig, SingleTransformModels,
                                                 SingleTransformOptimizers, make_optimizers, train_step)

    lr = args.lr if args.lr is not None else 1e-4
    cfg_kwargs = dict(lr=lr, discriminator_lr=args.d_lr if args.d_lr is not None else lr,
                      gan_mode=args.gan_mode, schedule=args.schedule, phase1_steps=args.phase1_steps)
    if args.lambda1 is not None:
        cfg_kwargs["lambda1"] = args.lambda1
    if args.lambda2 is not None:
        cfg_kwargs["lambda2"] = args.lambda2
    config = SingleTrainConfig(**cfg_kwargs)
    raw = SingleTransformModels(modules["flow_net"], modules["refiner"], modules["discriminator"])
    opts = make_optimizers(raw, config)
    scheds = [scheduler(opts.generator, args.max_steps), scheduler(opts.discriminator, args.max_steps)]
    layers = _layers(args.perceptual_layers, ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))
    scales = tuple(float(s) for s in args.perceptual_scales.split(","))
    perceptual = MultiScalePerceptualLoss(_Autocast(build_extractor(args, layers), accelerator), scales=scales,
                                          layers=layers)
    try:  # the training images' size: fail now, not at the first reconstruction step
        perceptual.check_input_size(*spec.size)
    except ValueError as exc:
        raise ValueError(f"--perceptual-scales / --perceptual-layers: {exc}") from None
    perceptual = _Float32(perceptual.to(accelerator.device), accelerator)
    (flow_net, refiner, disc, opt_g, opt_d, sched_g, sched_d, loader) = accelerator.prepare(
        modules["flow_net"], modules["refiner"], modules["discriminator"], opts.generator, opts.discriminator,
        scheds[0], scheds[1], loader)
    plain_forward(accelerator, flow_net, refiner, disc)
    models = SingleTransformModels(flow_net, refiner, disc).train()
    step_opts = SingleTransformOptimizers(_DeferredStep(opt_g), _DeferredStep(opt_d))

    def one_step(batch, step):
        gen = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 64 + accelerator.process_index)
        return train_step(models, step_opts, perceptual, batch, step, config, backward=accelerator.backward,
                          generator=gen)

    def step_schedulers(step, logs):
        sched_g.step()
        if "discriminator" in logs[-1]:  # D steps only in task 2 with the generative loss on
            sched_d.step()

    def current_lr(step):
        return float(opt_g.param_groups[0]["lr"])

    return _Recipe(
        loader=loader, train_modules=[flow_net, refiner, disc], optimizers=[opt_g, opt_d],
        deferred=[step_opts.generator, step_opts.discriminator],
        resumable=common.Resumable({"flow_net": flow_net, "refiner": refiner, "discriminator": disc},
                                   {"generator": opt_g, "discriminator": opt_d},
                                   {"generator": sched_g, "discriminator": sched_d}),
        columns=["step", "task", "phase", "loss", "affine", "perceptual", "generative", "discriminator", "lr",
                 "time"],
        one_step=one_step, step_schedulers=step_schedulers, current_lr=current_lr)


def _parts_recipe(args, accelerator, modules, loader, scheduler, saved: dict) -> _Recipe:
    """The part-flow model: stage 1 trains the flow generators alone, stage 2 everything against a
    discriminator (part_flow_losses' steps)."""
    from ..core.flow_models.part_flow_losses import (CORRECTNESS_LAYERS, PERCEPTUAL_LAYERS, STYLE_LAYERS,
                                                     make_optimizer, stage1_step, stage2_step)

    lr = args.lr if args.lr is not None else 1e-3
    d_lr = args.d_lr if args.d_lr is not None else lr
    stage1_steps = args.stage1_steps  # given, else the resumed run's, else a third of the steps
    if stage1_steps is None:
        stage1_steps = saved.get("stage1_steps", args.max_steps // 3)
    weights = _parse_weights(args.loss_weights)
    corr = _layers(args.correctness_layers, CORRECTNESS_LAYERS)
    perc = _layers(args.perceptual_layers, PERCEPTUAL_LAYERS)
    sty = _layers(args.style_layers, STYLE_LAYERS)
    extractor = build_extractor(args, corr + perc + sty).to(accelerator.device)
    net, disc_raw = modules["model"], modules["discriminator"]
    lr1 = args.stage1_lr if args.stage1_lr is not None else lr
    opt1 = make_optimizer(net.flow_generator_parameters(), lr1)
    opt_g_raw, opt_d_raw = make_optimizer(net.parameters(), lr), make_optimizer(disc_raw.parameters(), d_lr)
    s1 = scheduler(opt1, stage1_steps)
    s2g, s2d = scheduler(opt_g_raw, args.max_steps - stage1_steps), scheduler(opt_d_raw, args.max_steps -
                                                                              stage1_steps)
    (net_p, disc, opt1, opt_g, opt_d, s1, s2g, s2d, loader) = accelerator.prepare(
        net, disc_raw, opt1, opt_g_raw, opt_d_raw, s1, s2g, s2d, loader)
    plain_forward(accelerator, net_p, disc)
    inner = accelerator.unwrap_model(net_p)
    if accelerator.num_processes > 1:  # wrapped by hand: accelerate would save it as one more model
        from torch.nn.parallel import DistributedDataParallel  # (checkpoints stay nproc-free)

        ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
        view = DistributedDataParallel(_FlowsView(inner), device_ids=ids, output_device=ids and ids[0],
                                       find_unused_parameters=True)
        stage1_model, stage2_model = _FlowsOnly(view, inner), _Inner(net_p, inner)
    else:
        stage1_model = stage2_model = inner
    net_p.train()
    disc.train()
    d1, d2 = _DeferredStep(opt1), (_DeferredStep(opt_g), _DeferredStep(opt_d))

    def one_step(batch, step):
        if step < stage1_steps:
            log = stage1_step(stage1_model, batch, d1, extractor, backward=accelerator.backward, layers=corr)
            log["stage"] = 1.0
            return log
        log = stage2_step(stage2_model, disc, batch, d2[0], d2[1], extractor, weights,
                          backward=accelerator.backward, correctness_layers=corr, perceptual_layers=perc,
                          style_layers=sty, adversarial=args.adversarial)
        log["stage"] = 2.0
        return log

    def step_schedulers(step, logs):
        if step < stage1_steps:
            s1.step()
        else:
            s2g.step()
            s2d.step()

    def current_lr(step):
        return float((opt1 if step < stage1_steps else opt_g).param_groups[0]["lr"])

    return _Recipe(
        loader=loader, train_modules=[net_p, disc], optimizers=[opt1, opt_g, opt_d], deferred=[d1, *d2],
        resumable=common.Resumable({"model": net_p, "discriminator": disc},
                                   {"stage1": opt1, "generator": opt_g, "discriminator": opt_d},
                                   {"stage1": s1, "generator": s2g, "discriminator": s2d}),
        columns=(["step", "stage", "loss", "sam", "rec", "adv", "per", "sty", "d_loss"]
                 + [f"sam_{n}" for n in inner.part_names] + ["lr", "time"]),
        one_step=one_step, step_schedulers=step_schedulers, current_lr=current_lr, stage1_steps=stage1_steps)


def _batches(accelerator, loader, dataset, consumed: int):
    """The training batches, endless, from ``consumed`` batches in (a resume skips what its run had used)."""
    per_epoch = len(loader)
    epoch, offset = divmod(consumed, per_epoch)
    while True:
        dl = accelerator.skip_first_batches(loader, offset) if offset else loader
        dl.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        yield from dl
        epoch, offset = epoch + 1, 0


def _run_step(args, accelerator, recipe: _Recipe, stream, step: int, t0: float) -> dict:
    """One optimisation step over --gradient-accumulation-steps micro-batches; returns its log record."""
    logs = []
    for _ in range(args.gradient_accumulation_steps):
        batch = next(stream)
        with accelerator.accumulate(*recipe.train_modules), accelerator.autocast():
            logs.append(recipe.one_step(batch, step))
            _step_due(accelerator, recipe.deferred)
    for opt in recipe.optimizers:
        opt.optimizer.zero_grad(set_to_none=True)
    recipe.step_schedulers(step, logs)
    record = {"step": step + 1, **_mean_logs(logs, accelerator), "lr": recipe.current_lr(step),
              "time": round(time.perf_counter() - t0, 3)}
    for key in ("task", "phase", "stage"):
        if key in record:
            record[key] = int(record[key])
    if accelerator.scaler is not None:  # fp16: the loss scale after this step (it halves on a skipped step)
        record["loss_scale"] = float(accelerator.scaler.get_scale())
    return record


def _train(args, accelerator, out: Path, kind: str) -> dict:
    from accelerate.utils import set_seed

    from .datasets import InputSpec

    resume = common.start_run(accelerator, args, out, PROG)
    set_seed(args.seed)
    modules, model_config, saved = _run_modules(args, kind, resume)
    spec = InputSpec.for_model(modules["flow_net" if kind == "single" else "model"])
    dataset = _make_dataset(args, spec)
    if len(dataset) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size}: the dataset has only {len(dataset)} example(s)")
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         sampler=EpochSampler(len(dataset), args.seed), drop_last=True,
                                         num_workers=args.num_workers, pin_memory=torch.cuda.is_available())
    scheduler = _scheduler_factory(args, accelerator)
    if kind == "single":
        recipe = _single_recipe(args, accelerator, modules, spec, loader, scheduler)
    else:
        recipe = _parts_recipe(args, accelerator, modules, loader, scheduler, saved)

    if accelerator.is_main_process:
        print(f"[train-flow] {kind}: {len(dataset)} examples, {accelerator.num_processes} process(es) on "
              f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}, {args.batch_size} x "
              f"{args.gradient_accumulation_steps} (accumulation) x {accelerator.num_processes} examples per step",
              flush=True)
    columns = recipe.columns
    if accelerator.scaler is not None:
        columns.insert(columns.index("lr"), "loss_scale")
    state = common.StepCounter()
    recipe.resumable.data = {"examples": len(dataset), "seed": args.seed}
    if resume is not None:
        state.step = common.load_checkpoint(accelerator, resume, recipe.resumable, PROG)
        if accelerator.is_main_process:
            print(f"[train-flow] resumed from {resume} at step {state.step}")

    def exported_modules() -> dict[str, nn.Module]:
        return {n: accelerator.unwrap_model(m) for n, m in zip(_EXPORTED[kind], recipe.train_modules)}

    def export(folder: Path, step: int) -> None:
        if accelerator.is_main_process:
            info = {"step": step, "model_config": args.model_config, "dataset": args.dataset}
            export_model(kind, exported_modules(), folder, info)

    def save_checkpoint(step: int) -> Path:
        config = {"kind": kind, "step": step, "model_config": model_config, "stage1_steps": recipe.stage1_steps,
                  "args": common.cli_args(args)}
        return common.save_checkpoint(accelerator, out, step, config, lambda folder: export(folder / MODEL_DIR, step),
                                      recipe.resumable, args.checkpoints_total_limit)

    if args.log_with:
        accelerator.init_trackers("posetransfer_flow", config={k: v for k, v in vars(args).items()
                                                              if isinstance(v, (int, float, str, bool))})
    logger = _Logger(out, columns, args.log_every, accelerator, state.step)
    if len(recipe.loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size}: no full batch per process")
    stream = _batches(accelerator, recipe.loader, dataset, state.step * args.gradient_accumulation_steps)
    history = []
    t0 = time.perf_counter()
    while state.step < args.max_steps:
        record = _run_step(args, accelerator, recipe, stream, state.step, t0)
        state.step = record["step"]
        history.append(record)
        logger.log(record)
        if args.log_with:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
        if args.checkpoint_every and state.step % args.checkpoint_every == 0 and state.step < args.max_steps:
            save_checkpoint(state.step)

    if common.needs_final_checkpoint(out, state.step):
        save_checkpoint(state.step)
    model_dir = out / MODEL_DIR
    export(model_dir, state.step)
    if args.single_file and accelerator.is_main_process:
        save_model_file(kind, exported_modules(), out / SINGLE_FILE, {"step": state.step})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"[train-flow] step {state.step}: model in {model_dir}")
    return {"step": state.step, "history": history, "output_dir": str(out), "model_dir": str(model_dir)}


def run(args: argparse.Namespace) -> int:
    """Train from parsed arguments (the CLI's ``train-flow`` subcommand); exit code 0."""
    train(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posetransfer.training.train_flow`` / ``accelerate launch -m ...``; returns the exit code
    (2 with one ``error:`` line for bad input)."""
    return common.run_main(PROG, build_arg_parser(), run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
