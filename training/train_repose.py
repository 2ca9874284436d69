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
        from ..core.render import render_skeleton

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

    from ..core.repose import (RePoseTrainConfig, VaeCodec, draw_training_noise, make_ema, make_optimizer,
                               repose_noise_scheduler, training_loss)
    from ..core.repose.model_files import save_repose_model

    resume = common.start_run(accelerator, args, out, PROG)
    set_seed(args.seed)
    saved_config = None
    if resume is not None:
        saved_config = common.read_train_config(resume, KIND)["model_config"]
    denoiser, pose_align = _build_models(args, saved_config)
    model_config = {"denoiser": _module_config(denoiser), "pose_align": _module_config(pose_align)}
    device = accelerator.device
    codec = VaeCodec(_load_vae(args.vae, args.vae_config).to(device))
    h, w = args.resolution
    if h % (2 * codec.factor) or w % (2 * codec.factor):
        raise ValueError(f"--resolution {h}x{w}: both sides must be multiples of {2 * codec.factor} (the VAE "
                         f"factor x 2, for the UNet's downsampling)")
    guidance = _load_guidance(args)
    if guidance is not None:
        guidance.estimator.to(device)

    dataset = _make_dataset(args, RePoseInputSpec((h, w), args.fit))
    if len(dataset) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size}: the dataset has only {len(dataset)} example(s)")
    sampler = EpochSampler(len(dataset), args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=args.num_workers)
    config = RePoseTrainConfig(learning_rate=args.lr, cond_drop_prob=args.cond_drop_prob,
                               vlb_weight=args.vlb_weight, ema_decay=args.ema_decay,
                               max_grad_norm=args.max_grad_norm or None)
    optimizer = make_optimizer([denoiser, pose_align], config)
    den_p, pa_p, optimizer = accelerator.prepare(denoiser, pose_align, optimizer)
    common.plain_forward(accelerator, den_p, pa_p)
    raw_den, raw_pa = accelerator.unwrap_model(den_p), accelerator.unwrap_model(pa_p)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ema = make_ema([raw_den, raw_pa], config.ema_decay)
    state = common.StepCounter()
    resumable = common.Resumable({"denoiser": den_p, "pose_align": pa_p}, {"optimizer": optimizer},
                                 extras={"ema": ema}, data={"examples": len(dataset), "seed": args.seed})
    if resume is not None:
        state.step = common.load_checkpoint(accelerator, resume, resumable, PROG)
    ema.to(device)  # also the shadow weights a resume loaded on the CPU
    if resume is not None:
        if accelerator.is_main_process:
            print(f"[{PROG}] resumed from {resume} at step {state.step}", flush=True)
    scheduler = repose_noise_scheduler()
    per_epoch = len(loader)

    def to_batch(raw: dict) -> dict:
        with torch.no_grad():
            src = raw["source_image"].to(device) * 2 - 1
            tgt = raw["target_image"].to(device) * 2 - 1
            pose = raw["target_pose_image"].to(device)
            batch = {"target_latents": codec.encode(tgt), "pose_latents": codec.encode(pose * 2 - 1),
                     "source_image": src, "target_pose_image": pose}
        return batch

    def encode(x):
        return codec.encode(x)

    def step_loss(batch, timesteps, noise, drop) -> dict:
        with accelerator.autocast():
            return training_loss(den_p, batch, scheduler=scheduler, pose_align=pa_p, encode=encode, config=config,
                                 pose_guidance=guidance, decode=codec.decode, timesteps=timesteps, noise=noise,
                                 drop=drop)

    def batches(consumed: int):
        epoch, offset = divmod(consumed, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for i, raw in enumerate(loader):
                if i >= offset:
                    yield raw
            epoch, offset = epoch + 1, 0

    # The probe: the first batch of epoch 0 at fixed timesteps / noise, no null condition.
    sampler.set_epoch(0)
    probe_batch = to_batch(next(iter(loader)))
    pg = torch.Generator().manual_seed(args.seed + 12345)
    bsz = probe_batch["target_latents"].shape[0]
    probe_t = torch.linspace(20, 980, bsz).long().to(device)
    probe_noise = torch.randn(probe_batch["target_latents"].shape, generator=pg).to(device)

    def probe() -> float:
        den_p.eval()
        pa_p.eval()
        with torch.no_grad():
            value = float(step_loss(probe_batch, probe_t, probe_noise,
                                    torch.zeros(bsz, dtype=torch.bool, device=device))["loss"])
        den_p.train()
        pa_p.train()
        return value

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            common.append_jsonl(out / LOG_JSONL, record)

    def truncate_log(step: int) -> None:
        if accelerator.is_main_process:
            common.truncate_jsonl(out / LOG_JSONL, step)

    def export(folder: Path) -> None:
        if not accelerator.is_main_process:
            return
        ema.store(params)
        ema.copy_to(params)
        try:
            info = {"step": state.step, "ema": True, "resolution": [h, w], "dataset": args.dataset}
            if guidance is not None:  # eq 15 in the loss: the model expects the same guidance at sampling
                info["trained_with_pose_guidance"] = {"scale": args.guidance_scale,
                                                      "threshold": args.guidance_threshold,
                                                      "estimator": str(args.pose_guidance)}
            save_repose_model(folder, raw_den, raw_pa, info)
        finally:
            ema.restore(params)

    probes = {}

    def save_checkpoint() -> Path:
        probes[state.step] = value = probe()
        config = {"kind": KIND, "step": state.step, "model_config": model_config, "args": common.cli_args(args)}
        path = common.save_checkpoint(accelerator, out, state.step, config, lambda folder: export(folder / MODEL_DIR),
                                      resumable, args.checkpoints_total_limit)
        log({"step": state.step, "probe_loss": value})
        return path

    truncate_log(state.step)
    if state.step == 0:
        probes[0] = probe()
        log({"step": 0, "probe_loss": probes[0]})
    if accelerator.is_main_process:
        print(f"[{PROG}] {len(dataset)} examples, {accelerator.num_processes} process(es) on {device.type}, "
              f"{h}x{w}, batch {args.batch_size} x {args.gradient_accumulation_steps} (accumulation), mixed precision "
              f"{accelerator.mixed_precision}, guidance {'on' if guidance is not None else 'off'}", flush=True)
    accum = args.gradient_accumulation_steps
    stream = batches(state.step * accum)
    history = []
    t0 = time.perf_counter()
    while state.step < args.max_steps:
        gen = torch.Generator().manual_seed((args.seed * 1_000_003 + state.step) * 64 + accelerator.process_index)
        parts = []
        for k in range(accum):
            batch = to_batch(next(stream))
            y0 = batch["target_latents"]
            b = y0.shape[0]
            if k == 0:  # the draws of the whole step, sliced per micro-batch: accumulation = one big batch
                draws = draw_training_noise(b * accum, (b * accum, *y0.shape[1:]), scheduler, config.cond_drop_prob,
                                            gen, y0.dtype, device)
            t, noise, drop = (d[k * b:(k + 1) * b] for d in draws)
            with accelerator.accumulate(den_p, pa_p):
                losses = step_loss(batch, t, noise, drop)
                accelerator.backward(losses["loss"])  # divided by accum, scaled under fp16
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)  # unscales first under fp16
                optimizer.step()  # a no-op until the last micro-batch; skipped on fp16 overflow
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients and not optimizer.step_was_skipped:
                    ema.step(params)
            parts.append([float(losses[key].detach()) for key in ("loss", "mse", "vlb")])
        state.step += 1
        values = torch.tensor(parts, dtype=torch.float64, device=device).mean(0)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        record = {"step": state.step, "loss": float(values[0]), "mse": float(values[1]), "vlb": float(values[2]),
                  "lr": float(optimizer.param_groups[0]["lr"]), "time": round(time.perf_counter() - t0, 3)}
        if accelerator.scaler is not None:  # fp16: the loss scale after this step (it halves on a skipped step)
            record["loss_scale"] = float(accelerator.scaler.get_scale())
        if not all(math.isfinite(record[k]) for k in ("loss", "mse", "vlb")):
            raise FloatingPointError(f"step {state.step}: non-finite loss {record}")
        history.append(record)
        log(record)
        if accelerator.is_main_process and (state.step % max(1, args.log_every) == 0 or state.step == 1):
            print(f"[{PROG}] step {state.step} loss={record['loss']:.4g} mse={record['mse']:.4g} "
                  f"vlb={record['vlb']:.4g}", flush=True)
        if args.checkpoint_every and state.step % args.checkpoint_every == 0 and state.step < args.max_steps:
            save_checkpoint()
    if common.needs_final_checkpoint(out, state.step):
        save_checkpoint()
    elif state.step not in probes:
        probes[state.step] = probe()
    export(out / MODEL_DIR)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"[{PROG}] step {state.step}: model in {out / MODEL_DIR}", flush=True)
    return {"step": state.step, "history": history, "probe": probes, "output_dir": str(out),
            "model_dir": str(out / MODEL_DIR)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posetransfer.training.train_repose`` / ``accelerate launch -m ...``; the exit code (2 with one
    ``error:`` line for bad input)."""
    return common.run_main(PROG, build_arg_parser(), train, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
