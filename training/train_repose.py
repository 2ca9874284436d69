"""Train RePoseDM (denoiser + PoseAlign, end to end; the VAE frozen) on accelerate.

    python -m posetransfer.training.train_repose --data DEEPFASHION --vae PATH/sd-vae-ft-mse --output-dir OUT
    accelerate launch --multi_gpu --num_processes 4 -m posetransfer.training.train_repose ...

Data: the layouts of :mod:`.datasets`: DeepFashion / Market-1501 in the GFLA/PIDM layout (``--dataset deepfashion``
or ``market``: the pairs CSV, the target is the real photo of the target pose) or ``--dataset folder`` (photos +
OpenPose JSON, self-supervised pairs). Images are fitted to ``--resolution HxW``; the target pose is rendered there
as the OpenPose skeleton (as the RePose nodes render it at inference) and encoded by the VAE (``F_T``).

Loop: per optimisation step, ``--gradient-accumulation-steps`` micro-batches of ``--batch-size`` under
``accelerator.accumulate``; each runs :func:`..core.repose.denoiser.training_loss` under ``accelerator.autocast()``
(``--mixed-precision no|fp16|bf16``) and ``accelerator.backward``; on the last one the gradients are clipped
(``accelerator.clip_grad_norm_``), AdamW steps and the EMA follows (not on a step the fp16 loss scaler skipped).
Timesteps, noise and condition drops are drawn once per step for all its micro-batches and sliced, so N x M
accumulated equals one batch of N*M (tested to float rounding). fp16 (accelerate's GradScaler) is tested on the CPU
with a CPU GradScaler standing in for the CUDA one (tests/test_train_fp16.py: runs, skips overflowing steps, no EMA
then); on GPUs it is unverified.

Objective (supplement section 8): eq 4's hybrid loss (``L_mse + L_vlb``, learned variance), T = 1000 linear,
classifier-free null condition for ``--cond-drop-prob`` (10%) of the examples, AdamW 1e-4, EMA 0.9999;
``--pose-guidance PATH`` adds eq 15 at training time with a HigherHRNet checkpoint (``tiny``: a random tiny
estimator, for smoke runs).

Output folder ``OUT``:

* ``checkpoints/checkpoint-N/``: training state in JSON + safetensors (models, optimiser, EMA, step, RNG;
  :mod:`.checkpoints`) + ``train_config.json`` +
  ``model/`` (the EMA weights, loadable) every ``--checkpoint-every`` steps and at the end;
  ``--resume latest|PATH`` continues from one (same data order, same random draws per step).
* ``model/``: the final EMA weights as a RePose model folder (:mod:`..core.repose.model_files`; copy it into
  ``ComfyUI/models/posetransfer/`` for the RePose loader node).
* ``train_log.jsonl``: one record per step (loss, mse, vlb, lr, time; ``loss_scale`` under fp16) and ``probe``
  records: the loss on the first batch at fixed timesteps and noise (a low-variance progress measure) at the start
  and at every checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import common
from .common import CHECKPOINTS, EpochSampler, parse_size
from .datasets import InputSpec

PROG = "train_repose"
MODEL_DIR = "model"
LOG_JSONL = "train_log.jsonl"
KIND = "repose"

__all__ = ["RePoseInputSpec", "build_arg_parser", "parse_args", "train", "main", "LOG_JSONL", "CHECKPOINTS",
           "MODEL_DIR"]


class RePoseInputSpec(InputSpec):
    """The datasets' frame fitting, with examples made of what RePose trains on: ``source_image``,
    ``target_image`` (C, H, W in 0..1) and ``target_pose_image`` (the rendered OpenPose skeleton, 0..1)."""

    def example(self, source_image, source_pose, target_image, target_pose):
        from ..core.pose.render import render_skeleton

        def chw(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[:3].contiguous()

        skeleton = render_skeleton(target_pose).astype(np.float32) / 255.0
        return {"source_image": chw(source_image), "target_image": chw(target_image),
                "target_pose_image": chw(skeleton)}


def build_arg_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train RePoseDM (PoseAlign + denoiser) on accelerate.")
    g = p.add_argument_group("model")
    g.add_argument("--model-config", default="paper", choices=("paper", "tiny"),
                   help="denoiser UNet + PoseAlign sizes: paper (SD-1.x widths, N = 5) or tiny (smoke tests)")
    g.add_argument("--init", metavar="MODEL", default=None, help="start from a saved RePose model folder")
    g.add_argument("--vae", required=True, metavar="PATH|tiny",
                   help="the frozen VAE: a diffusers AutoencoderKL folder (e.g. stabilityai/sd-vae-ft-mse saved "
                        "locally), a VAE weights file (.safetensors / .pt / .ckpt, diffusers or original layout; "
                        "config: --vae-config) or 'tiny' (random, smoke tests)")
    g.add_argument("--vae-config", metavar="JSON|DIR", default=None,
                   help="--vae FILE: the AutoencoderKL config.json (or its folder); default: the SD 1.x/2.x VAE's")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", required=True, help="dataset folder (GFLA/PIDM layout or photos)")
    g.add_argument("--dataset", default="deepfashion", choices=("deepfashion", "market", "folder"))
    g.add_argument("--split", default="train")
    g.add_argument("--annotations", metavar="CSV")
    g.add_argument("--pairs", metavar="CSV")
    g.add_argument("--images", metavar="DIR")
    g.add_argument("--openpose-dir", metavar="DIR", help="folder mode: OpenPose JSON folder (default: --data)")
    g.add_argument("--pair-modes", default="affine,parts", help="folder mode: self-supervised pair kinds")
    g.add_argument("--resolution", type=parse_size, default=(256, 176), metavar="HxW",
                   help="training frame (multiples of the VAE factor x 2; default 256x176)")
    g.add_argument("--fit", default="stretch", choices=("stretch", "contain"), help="how photos fit the frame")
    g.add_argument("--num-workers", type=int, default=0)
    g = p.add_argument_group("training")
    g.add_argument("--output-dir", required=True, metavar="OUT")
    g.add_argument("--max-steps", type=int, default=100000)
    g.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="N",
                   help="micro-batches per optimisation step (default: 1)")
    g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (paper: 1e-4)")
    g.add_argument("--cond-drop-prob", type=float, default=0.1, help="classifier-free null condition rate (0.1)")
    g.add_argument("--vlb-weight", type=float, default=0.001, help="weight of L_vlb in eq 4 (improved DDPM's lambda, 0.001)")
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    g.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"),
                   help="autocast precision (default: no; fp16 needs a GPU, it adds accelerate's loss scaler)")
    g.add_argument("--cpu", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=5000, metavar="N", help="0: only at the end")
    g.add_argument("--checkpoints-total-limit", type=int, default=None, metavar="K")
    g.add_argument("--resume", metavar="latest|PATH", default=None,
                   help="continue from the newest complete checkpoint of --output-dir (latest) or a checkpoint folder")
    common.add_run_arguments(g)
    g.add_argument("--log-every", type=int, default=50, metavar="N", help="console lines every N steps")
    g = p.add_argument_group("pose guidance at training time (eq 15)")
    g.add_argument("--pose-guidance", metavar="PATH|tiny", default=None,
                   help="HigherHRNet checkpoint (.pth; W32 or W48) for eq 15 in the training loss (a model "
                        "trained so expects the same guidance, same eta, at sampling)")
    g.add_argument("--guidance-scale", type=float, default=1.0, help="eta of eq 15 (1.0)")
    g.add_argument("--guidance-threshold", type=float, default=0.1, help="W_h threshold (0.1)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_arg_parser().parse_args(argv)


# ------------------------------------------------------------------------------------------------ pieces
def _build_models(args, model_config: dict | None):
    from ..core.repose import (PAPER_POSE_ALIGN_CONFIG, PAPER_UNET_CONFIG, TINY_POSE_ALIGN_CONFIG,
                               TINY_UNET_CONFIG, PoseAlign, RePoseDenoiser)

    if model_config is None:
        if args.init is not None:
            from ..core.repose.model_files import load_repose_model

            den, pa, _ = load_repose_model(args.init)
            den.requires_grad_(True)
            pa.requires_grad_(True)
            return den.train(), pa.train()
        tiny = args.model_config == "tiny"
        model_config = {"denoiser": {"unet_config": TINY_UNET_CONFIG if tiny else PAPER_UNET_CONFIG},
                        "pose_align": dict(TINY_POSE_ALIGN_CONFIG if tiny else PAPER_POSE_ALIGN_CONFIG)}
    den = RePoseDenoiser(**model_config["denoiser"])
    pa = PoseAlign(**model_config["pose_align"])
    return den.train(), pa.train()


def _module_config(module) -> dict:
    return {k: v for k, v in dict(module.config).items() if not k.startswith("_")}


def _load_vae(spec: str, config: str | None = None):
    from diffusers import AutoencoderKL

    from .vae_files import load_vae

    if spec == "tiny":
        from ..core.repose import TINY_VAE_CONFIG

        with torch.random.fork_rng():
            torch.manual_seed(0)
            return AutoencoderKL(**TINY_VAE_CONFIG)
    return load_vae(spec, config)


def _load_guidance(args):
    from ..core.repose import PoseGuidance, TinyPoseEstimator, load_higher_hrnet

    if args.pose_guidance is None:
        return None
    if args.pose_guidance == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            estimator = TinyPoseEstimator()
    else:
        estimator = load_higher_hrnet(args.pose_guidance)
    estimator.requires_grad_(False)
    return PoseGuidance(estimator, scale=args.guidance_scale, threshold=args.guidance_threshold)


def _make_dataset(args, spec):
    from .datasets import GFLAPairs, SelfSupervisedPairs

    if args.dataset == "folder":
        modes = [m.strip() for m in args.pair_modes.split(",") if m.strip()]
        return SelfSupervisedPairs(args.data, spec, args.openpose_dir, modes=modes, seed=args.seed)
    return GFLAPairs(args.data, spec, args.dataset, args.split, args.annotations, args.pairs, args.images)


# ------------------------------------------------------------------------------------------------ training
def train(args: argparse.Namespace) -> dict:
    """Run (or resume) one training; returns ``{"step", "history", "probe", "output_dir", "model_dir"}``."""
    common.check_diffusion_args(args)
    out = Path(args.output_dir)
    return common.run_with_accelerator(args, out, lambda accelerator: _train(args, accelerator, out))


def _train(args, accelerator, out: Path) -> dict:
    from accelerate.utils import set_seed

    resume = common.start_run(accelerator, args, out, PROG)
    set_seed(args.seed)
    run = _Run(args, accelerator, out, resume)
    state = run.state
    h, w = args.resolution
    run.truncate_log()
    if state.step == 0:
        run.probes[0] = run.probe()
        run.log({"step": 0, "probe_loss": run.probes[0]})
    if accelerator.is_main_process:
        print(f"[{PROG}] {len(run.dataset)} examples, {accelerator.num_processes} process(es) on "
              f"{accelerator.device.type}, {h}x{w}, batch {args.batch_size} x {args.gradient_accumulation_steps} "
              f"(accumulation), mixed precision {accelerator.mixed_precision}, guidance "
              f"{'on' if run.guidance is not None else 'off'}", flush=True)
    stream = run.batches(state.step * args.gradient_accumulation_steps)
    history = []
    t0 = time.perf_counter()
    while state.step < args.max_steps:
        record = run.train_step(stream, t0)
        history.append(record)
        run.log(record)
        if accelerator.is_main_process and (state.step % max(1, args.log_every) == 0 or state.step == 1):
            print(f"[{PROG}] step {state.step} loss={record['loss']:.4g} mse={record['mse']:.4g} "
                  f"vlb={record['vlb']:.4g}", flush=True)
        if args.checkpoint_every and state.step % args.checkpoint_every == 0 and state.step < args.max_steps:
            run.save_checkpoint()
    if common.needs_final_checkpoint(out, state.step):
        run.save_checkpoint()
    elif state.step not in run.probes:
        run.probes[state.step] = run.probe()
    run.export(out / MODEL_DIR)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"[{PROG}] step {state.step}: model in {out / MODEL_DIR}", flush=True)
    return {"step": state.step, "history": history, "probe": run.probes, "output_dir": str(out),
            "model_dir": str(out / MODEL_DIR)}


class _Run:
    """One training run: the models prepared by accelerate, the data, the EMA and the probe, and the steps
    on them (built in the order the seeded run draws its random numbers)."""

    def __init__(self, args, accelerator, out: Path, resume: Path | None):
        self.args, self.accelerator, self.out = args, accelerator, out
        self._build_models(resume)
        self._build_data()
        self._build_training(resume)
        self._build_probe()

    # ---- construction
    def _build_models(self, resume: Path | None) -> None:
        from ..core.repose import VaeCodec

        args, device = self.args, self.accelerator.device
        saved_config = None
        if resume is not None:
            saved_config = common.read_train_config(resume, KIND)["model_config"]
        self.denoiser, self.pose_align = _build_models(args, saved_config)
        self.model_config = {"denoiser": _module_config(self.denoiser),
                             "pose_align": _module_config(self.pose_align)}
        self.codec = VaeCodec(_load_vae(args.vae, args.vae_config).to(device))
        h, w = args.resolution
        factor = self.codec.factor
        if h % (2 * factor) or w % (2 * factor):
            raise ValueError(f"--resolution {h}x{w}: both sides must be multiples of {2 * factor} (the VAE "
                             f"factor x 2, for the UNet's downsampling)")
        self.guidance = _load_guidance(args)
        if self.guidance is not None:
            self.guidance.estimator.to(device)

    def _build_data(self) -> None:
        args = self.args
        h, w = args.resolution
        self.dataset = _make_dataset(args, RePoseInputSpec((h, w), args.fit))
        if len(self.dataset) < args.batch_size:
            raise ValueError(f"--batch-size {args.batch_size}: the dataset has only {len(self.dataset)} example(s)")
        self.sampler = EpochSampler(len(self.dataset), args.seed)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=args.batch_size, sampler=self.sampler,
                                                  drop_last=True, num_workers=args.num_workers)

    def _build_training(self, resume: Path | None) -> None:
        from ..core.repose import RePoseTrainConfig, make_ema, make_optimizer, repose_noise_scheduler

        args, accelerator = self.args, self.accelerator
        self.config = RePoseTrainConfig(learning_rate=args.lr, cond_drop_prob=args.cond_drop_prob,
                                        vlb_weight=args.vlb_weight, ema_decay=args.ema_decay,
                                        max_grad_norm=args.max_grad_norm or None)
        optimizer = make_optimizer([self.denoiser, self.pose_align], self.config)
        self.den_p, self.pa_p, self.optimizer = accelerator.prepare(self.denoiser, self.pose_align, optimizer)
        common.plain_forward(accelerator, self.den_p, self.pa_p)
        self.raw_den, self.raw_pa = accelerator.unwrap_model(self.den_p), accelerator.unwrap_model(self.pa_p)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema = make_ema([self.raw_den, self.raw_pa], self.config.ema_decay)
        self.state = common.StepCounter()
        self.resumable = common.Resumable({"denoiser": self.den_p, "pose_align": self.pa_p},
                                          {"optimizer": self.optimizer}, extras={"ema": self.ema},
                                          data={"examples": len(self.dataset), "seed": args.seed})
        if resume is not None:
            self.state.step = common.load_checkpoint(accelerator, resume, self.resumable, PROG)
        self.ema.to(accelerator.device)  # also the shadow weights a resume loaded on the CPU
        if resume is not None and accelerator.is_main_process:
            print(f"[{PROG}] resumed from {resume} at step {self.state.step}", flush=True)
        self.scheduler = repose_noise_scheduler()
        self.probes: dict[int, float] = {}

    def _build_probe(self) -> None:
        """The probe: the first batch of epoch 0 at fixed timesteps / noise, no null condition."""
        device = self.accelerator.device
        self.sampler.set_epoch(0)
        self.probe_batch = self.to_batch(next(iter(self.loader)))
        pg = torch.Generator().manual_seed(self.args.seed + 12345)
        shape = self.probe_batch["target_latents"].shape
        self.probe_t = torch.linspace(20, 980, shape[0]).long().to(device)
        self.probe_noise = torch.randn(shape, generator=pg).to(device)

    # ---- data and losses
    def to_batch(self, raw: dict) -> dict:
        device, codec = self.accelerator.device, self.codec
        with torch.no_grad():
            src = raw["source_image"].to(device) * 2 - 1
            tgt = raw["target_image"].to(device) * 2 - 1
            pose = raw["target_pose_image"].to(device)
            return {"target_latents": codec.encode(tgt), "pose_latents": codec.encode(pose * 2 - 1),
                    "source_image": src, "target_pose_image": pose}

    def batches(self, consumed: int):
        """The training batches, endless, from ``consumed`` batches in (a resume skips what its run had used)."""
        epoch, offset = divmod(consumed, len(self.loader))
        while True:
            self.sampler.set_epoch(epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            for i, raw in enumerate(self.loader):
                if i >= offset:
                    yield raw
            epoch, offset = epoch + 1, 0

    def step_loss(self, batch, timesteps, noise, drop) -> dict:
        from ..core.repose import training_loss

        with self.accelerator.autocast():
            return training_loss(self.den_p, batch, scheduler=self.scheduler, pose_align=self.pa_p,
                                 encode=self.codec.encode, config=self.config, pose_guidance=self.guidance,
                                 decode=self.codec.decode, timesteps=timesteps, noise=noise, drop=drop)

    def probe(self) -> float:
        self.den_p.eval()
        self.pa_p.eval()
        with torch.no_grad():
            drop = torch.zeros(len(self.probe_t), dtype=torch.bool, device=self.accelerator.device)
            value = float(self.step_loss(self.probe_batch, self.probe_t, self.probe_noise, drop)["loss"])
        self.den_p.train()
        self.pa_p.train()
        return value

    def train_step(self, stream, t0: float) -> dict:
        """One optimisation step over --gradient-accumulation-steps micro-batches; returns its log record."""
        from ..core.repose import draw_training_noise

        args, accelerator, config = self.args, self.accelerator, self.config
        accum, device = args.gradient_accumulation_steps, accelerator.device
        gen = torch.Generator().manual_seed((args.seed * 1_000_003 + self.state.step) * 64
                                            + accelerator.process_index)
        parts = []
        for k in range(accum):
            batch = self.to_batch(next(stream))
            y0 = batch["target_latents"]
            b = y0.shape[0]
            if k == 0:  # the draws of the whole step, sliced per micro-batch: accumulation = one big batch
                draws = draw_training_noise(b * accum, (b * accum, *y0.shape[1:]), self.scheduler,
                                            config.cond_drop_prob, gen, y0.dtype, device)
            t, noise, drop = (d[k * b:(k + 1) * b] for d in draws)
            with accelerator.accumulate(self.den_p, self.pa_p):
                losses = self.step_loss(batch, t, noise, drop)
                accelerator.backward(losses["loss"])  # divided by accum, scaled under fp16
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(self.params, config.max_grad_norm)  # unscales first under fp16
                self.optimizer.step()  # a no-op until the last micro-batch; skipped on fp16 overflow
                self.optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients and not self.optimizer.step_was_skipped:
                    self.ema.step(self.params)
            parts.append([float(losses[key].detach()) for key in ("loss", "mse", "vlb")])
        self.state.step += 1
        values = torch.tensor(parts, dtype=torch.float64, device=device).mean(0)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        record = {"step": self.state.step, "loss": float(values[0]), "mse": float(values[1]),
                  "vlb": float(values[2]), "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "time": round(time.perf_counter() - t0, 3)}
        if accelerator.scaler is not None:  # fp16: the loss scale after this step (it halves on a skipped step)
            record["loss_scale"] = float(accelerator.scaler.get_scale())
        if not all(math.isfinite(record[k]) for k in ("loss", "mse", "vlb")):
            raise FloatingPointError(f"step {self.state.step}: non-finite loss {record}")
        return record

    # ---- logs, model and checkpoints
    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            common.append_jsonl(self.out / LOG_JSONL, record)

    def truncate_log(self) -> None:
        if self.accelerator.is_main_process:
            common.truncate_jsonl(self.out / LOG_JSONL, self.state.step)

    def export(self, folder: Path) -> None:
        """The EMA weights as a model folder (main process only)."""
        from ..core.repose.model_files import save_repose_model

        if not self.accelerator.is_main_process:
            return
        args = self.args
        h, w = args.resolution
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            info = {"step": self.state.step, "ema": True, "resolution": [h, w], "dataset": args.dataset}
            if self.guidance is not None:  # eq 15 in the loss: the model expects the same guidance at sampling
                info["trained_with_pose_guidance"] = {"scale": args.guidance_scale,
                                                      "threshold": args.guidance_threshold,
                                                      "estimator": str(args.pose_guidance)}
            save_repose_model(folder, self.raw_den, self.raw_pa, info)
        finally:
            self.ema.restore(self.params)

    def save_checkpoint(self) -> Path:
        step = self.state.step
        self.probes[step] = value = self.probe()
        config = {"kind": KIND, "step": step, "model_config": self.model_config,
                  "args": common.cli_args(self.args)}
        path = common.save_checkpoint(self.accelerator, self.out, step, config,
                                      lambda folder: self.export(folder / MODEL_DIR), self.resumable,
                                      self.args.checkpoints_total_limit)
        self.log({"step": step, "probe_loss": value})
        return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posetransfer.training.train_repose`` / ``accelerate launch -m ...``; the exit code (2 with one
    ``error:`` line for bad input)."""
    return common.run_main(PROG, build_arg_parser(), train, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
