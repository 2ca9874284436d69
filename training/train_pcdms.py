"""Train one PCDMs stage (prior / inpaint / refine / simplified) on accelerate.

    python -m posetransfer.training.train_pcdms --stage inpaint --data DIR --vae SD21/vae --clip CLIP --dino DINO \
        --init-unet SD21/unet --output-dir OUT
    accelerate launch --mixed_precision bf16 -m posetransfer.training.train_pcdms --stage prior ...

Data (``--layout``): ``pcdms``: a pairs JSON (``--pairs-json``, default ``DATA/pairs.json``) of
``{"source_image", "target_image"}``, images in ``--images`` (default ``DATA/images`` or ``DATA``) and one 18-line
pose txt per image (``--poses``, default the image folder); ``deepfashion`` / ``market``: the GFLA/PIDM layout
(:class:`.datasets.GFLAPairs`). Skeleton images are rendered with :func:`..core.pose.render.render_skeleton`.

Encoders (frozen): ``--clip`` (CLIPVisionModelWithProjection folder; prior + inpaint) and ``--dino`` (Dinov2Model
folder; inpaint / refine / simplified), ``--vae`` (AutoencoderKL folder, SD-2.1-base scaling 0.18215). ``tiny``
builds small random stand-ins (smoke tests).

Objective (shared/reference/pcdms/README.md, "Training side"):

* prior: x0 loss on the normalised target CLIP embedding ``(e + 0.016) / 0.415``; DDPM squaredcos_cap_v2,
  prediction_type sample; 10% independent drops of the source image (its CLIP-processed pixels set to 0), the
  source pose and the target pose (coordinates set to 0). AdamW 1e-5.
* inpaint: epsilon loss on the latents of the [source | target] canvas (SD-2.1-base DDPM: 1000 steps,
  scaled_linear 0.00085-0.012); 10% drop of the source image (preprocessed pixels zeroed before DINOv2) and 10%
  of the target image (zeroed before CLIP; used as token and class label). Pose never dropped. AdamW 1e-4.
* refine: epsilon loss on the target latents; condition = VAE latents of the target image (assumption: the
  official stage-3 training script is not described beyond its dropout), 10% dropped (normalised pixels set
  to 0, mid-grey, before the VAE); the DINOv2 condition never dropped.
* simplified: as inpaint without the CLIP token (its script is not public; the source image is dropped 10%).

All stages: noise offset 0.1 (``noise + 0.1 * randn(B, C, 1, 1)``, per-sample constant over the spatial/feature
dims), ``--init-unet`` starts a UNet stage from an SD-2.1-base diffusers UNet folder with conv_in widened (the
extra input channels zero-initialised, the first 4 copied).

Mixed precision: the forward runs under ``accelerator.autocast()``, backward / clipping / step outside it. fp16
(accelerate's GradScaler: backward scales, ``clip_grad_norm_`` unscales, the step skips on overflow) is tested on
the CPU with a CPU GradScaler (tests/test_train_fp16.py); GPU fp16 runs are unverified.

Output ``OUT``: ``checkpoints/checkpoint-N/`` (training state in JSON + safetensors (:mod:`.checkpoints`) +
``train_config.json`` + ``model.safetensors``,
loadable by :func:`..core.pcdms.load_pcdms`), ``--resume latest|PATH``; ``model.safetensors`` at the end;
``train_log.jsonl`` (per-step loss / lr / time (+ ``loss_scale`` under fp16) and ``probe_loss`` records: the first
batch at fixed timesteps, noise and no dropout, at the start and at every checkpoint).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from . import common
from ..core.pcdms.training import draw_training_noise, prior_noise_scheduler, training_loss, unet_noise_scheduler
from .common import CHECKPOINTS, EpochSampler, parse_size

PROG = "train_pcdms"
MODEL_FILE = "model.safetensors"
LOG_JSONL = "train_log.jsonl"
STAGES = ("prior", "inpaint", "refine", "simplified")
DEFAULT_LR = {"prior": 1e-5, "inpaint": 1e-4, "refine": 1e-4, "simplified": 1e-4}
NOISE_OFFSET = 0.1
COND_DROP = 0.1

__all__ = ["build_arg_parser", "parse_args", "train", "main", "widen_conv_in", "load_init_unet",
           "unet_noise_scheduler", "prior_noise_scheduler", "LOG_JSONL", "CHECKPOINTS", "MODEL_FILE"]


def build_arg_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train one PCDMs stage on accelerate.")
    g = p.add_argument_group("model")
    g.add_argument("--stage", required=True, choices=STAGES)
    g.add_argument("--model-config", default="paper", choices=("paper", "tiny"),
                   help="paper: the released sizes; tiny: toy sizes (smoke tests)")
    g.add_argument("--init", metavar="PATH", default=None,
                   help="start from a PCDMs checkpoint (official .pt / DeepSpeed folder / our .safetensors)")
    g.add_argument("--init-unet", metavar="PATH", default=None,
                   help="UNet stages: an SD-2.1-base diffusers UNet folder (or its parent with unet/); conv_in "
                        "is widened (extra input channels zero, the first 4 copied)")
    g.add_argument("--vae", metavar="PATH|tiny", default=None,
                   help="UNet stages: an AutoencoderKL folder or a VAE weights file (config: --vae-config)")
    g.add_argument("--vae-config", metavar="JSON|DIR", default=None,
                   help="--vae FILE: the AutoencoderKL config.json (or its folder); default: the SD 1.x/2.x VAE's")
    g.add_argument("--clip", metavar="PATH|tiny", default=None, help="CLIP vision folder (prior, inpaint)")
    g.add_argument("--dino", metavar="PATH|tiny", default=None, help="DINOv2 folder (inpaint, refine, simplified)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", required=True)
    g.add_argument("--layout", default="pcdms", choices=("pcdms", "deepfashion", "market"))
    g.add_argument("--pairs-json", metavar="JSON", help="pcdms layout (default DATA/pairs.json)")
    g.add_argument("--poses", metavar="DIR", help="pcdms layout: pose txt folder (default: the image folder)")
    g.add_argument("--split", default="train")
    g.add_argument("--annotations", metavar="CSV")
    g.add_argument("--pairs", metavar="CSV")
    g.add_argument("--images", metavar="DIR")
    g.add_argument("--resolution", type=parse_size, default=(512, 512), metavar="HxW",
                   help="frame of each image (PCDMs: 512x512; multiples of 8 x the UNet's downsampling)")
    g.add_argument("--num-workers", type=int, default=0)
    g = p.add_argument_group("training")
    g.add_argument("--output-dir", required=True, metavar="OUT")
    g.add_argument("--max-steps", type=int, default=100000, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate (prior 1e-5, UNets 1e-4)")
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--cond-drop-prob", type=float, default=COND_DROP, help="each condition drop rate (0.1)")
    g.add_argument("--noise-offset", type=float, default=NOISE_OFFSET)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    g.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    g.add_argument("--cpu", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=5000, metavar="N", help="0: only at the end")
    g.add_argument("--checkpoints-total-limit", type=int, default=None, metavar="K")
    g.add_argument("--resume", metavar="latest|PATH", default=None,
                   help="continue from the newest complete checkpoint of --output-dir (latest) or a checkpoint folder")
    common.add_run_arguments(g)
    g.add_argument("--log-every", type=int, default=50, metavar="N")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_arg_parser().parse_args(argv)


# ------------------------------------------------------------------------------------------------ UNet init
def widen_conv_in(weight: torch.Tensor, bias: torch.Tensor | None, in_channels: int):
    """conv_in weights (out, c, k, k) -> (out, in_channels, k, k): the first ``c`` input channels copied, the
    rest zero. The bias is kept."""
    out_c, c = weight.shape[:2]
    if in_channels < c:
        raise ValueError(f"conv_in: cannot narrow {c} input channels to {in_channels}")
    new = torch.zeros(out_c, in_channels, *weight.shape[2:], dtype=weight.dtype)
    new[:, :c] = weight
    return new, None if bias is None else bias.clone()


def load_init_unet(unet, path: str) -> dict:
    """Load an SD-2.1-base diffusers UNet folder into ``unet`` (widening conv_in). Keys the target lacks and
    missing keys (e.g. the inpaint model's class embedding, kept at its initialisation) are reported; shape
    mismatches other than conv_in raise."""
    from diffusers import UNet2DConditionModel

    folder = Path(path)
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init-unet: {path} is not a diffusers UNet folder (no config.json)")
    src = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    sd = src.state_dict()
    target = unet.state_dict()
    w, b = widen_conv_in(sd["conv_in.weight"], sd.get("conv_in.bias"), target["conv_in.weight"].shape[1])
    sd["conv_in.weight"] = w
    if b is not None:
        sd["conv_in.bias"] = b
    for k, v in list(sd.items()):  # 1x1-conv vs linear attention projections (use_linear_projection)
        if k in target and v.shape != target[k].shape and v.numel() == target[k].numel() \
                and v.squeeze().shape == target[k].squeeze().shape:
            sd[k] = v.reshape(target[k].shape)
    bad = [k for k, v in sd.items() if k in target and v.shape != target[k].shape]
    if bad:
        raise ValueError(f"--init-unet: {len(bad)} tensor(s) do not fit this UNet config, e.g. "
                         f"{[(k, tuple(sd[k].shape), tuple(target[k].shape)) for k in bad[:3]]}")
    result = unet.load_state_dict(sd, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


# ------------------------------------------------------------------------------------------------ pieces
class _TinyEncoder(torch.nn.Module):
    """A random stand-in: pixel_values -> (B, D) pooled, or (B, N, D) tokens (4x4 patches)."""

    def __init__(self, dim: int, tokens: bool, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.tokens = tokens
        self.proj = torch.nn.Parameter(torch.randn(3 * (1 if tokens else 16), dim, generator=g) * 0.5,
                                       requires_grad=False)

    def forward(self, pixels):
        x = F.adaptive_avg_pool2d(pixels.float(), 4)  # (B, 3, 4, 4)
        if self.tokens:
            return x.flatten(2).transpose(1, 2) @ self.proj  # (B, 16, D)
        return x.flatten(1) @ self.proj


def _tiny_preprocess(images):
    from ..core.pcdms.encoders import clip_preprocess

    return clip_preprocess(images, shortest_edge=32, crop_size=32, exact=False)


def _load_encoder(spec: str | None, which: str, dim: int, device):
    from ..core.pcdms.encoders import CallableImageEncoder, CLIPImageEmbedder, DINOv2TokenEncoder

    if spec is None:
        raise ValueError(f"--{which}: needed by this stage (a local folder, or 'tiny')")
    if spec == "tiny":
        module = _TinyEncoder(dim, which == "dino", seed=1 if which == "clip" else 2).to(device)
        return CallableImageEncoder(module, preprocess=_tiny_preprocess)
    cls = CLIPImageEmbedder if which == "clip" else DINOv2TokenEncoder
    enc = cls.from_pretrained(spec, device=device)
    enc.model.requires_grad_(False)
    return enc


def _load_vae(spec: str | None, device, config: str | None = None):
    from diffusers import AutoencoderKL

    from ..core.pcdms.encoders import DiffusersVAE
    from .vae_files import load_vae

    if spec is None:
        raise ValueError("--vae: needed by the UNet stages (an AutoencoderKL folder, or 'tiny')")
    if spec == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16],
                                layers_per_block=1, norm_num_groups=4)
    else:
        vae = load_vae(spec, config)
    vae.requires_grad_(False)
    return DiffusersVAE(vae.to(device))


def _build_model(args, saved: dict | None):
    from ..core.pcdms import load_pcdms, model_class, tiny_config

    if saved is not None:
        return model_class(args.stage)(**saved)
    if args.init_unet is not None and args.stage == "prior":
        raise ValueError("--init-unet: the prior has no UNet")
    if args.init is not None:
        return load_pcdms(args.init, kind=args.stage)
    config = tiny_config(args.stage) if args.model_config == "tiny" else {}
    model = model_class(args.stage)(**config)
    if args.init_unet is not None:
        report = load_init_unet(model.unet, args.init_unet)
        print(f"[{PROG}] --init-unet: {len(report['missing'])} missing key(s) (kept at init), "
              f"{len(report['unexpected'])} unexpected", flush=True)
    return model


def _make_dataset(args):
    from .datasets import GFLAPairs
    from .pcdms_data import PCDMsInputSpec, PCDMsJsonPairs

    spec = PCDMsInputSpec(tuple(args.resolution), "stretch")
    if args.layout == "pcdms":
        root = Path(args.data)
        pairs = args.pairs_json or str(root / "pairs.json")
        images = args.images or (str(root / "images") if (root / "images").is_dir() else str(root))
        return PCDMsJsonPairs(pairs, images, spec, args.poses)
    return GFLAPairs(args.data, spec, args.layout, args.split, args.annotations, args.pairs, args.images)


# ------------------------------------------------------------------------------------------------ the stages
class _Stage:
    """Frozen-encoder preprocessing (``prepare``: draws the dropout and the VAE samples) and the loss."""

    def __init__(self, stage, model, vae, clip, dino, scheduler, drop_prob, noise_offset):
        self.stage, self.model, self.vae, self.clip, self.dino = stage, model, vae, clip, dino
        self.scheduler, self.p, self.offset = scheduler, drop_prob, noise_offset

    def _drops(self, b, n, gen, device, enabled):
        if not enabled or self.p <= 0:
            return [torch.zeros(b, dtype=torch.bool, device=device) for _ in range(n)]
        return [(torch.rand(b, generator=gen) < self.p).to(device) for _ in range(n)]

    @staticmethod
    def _encode(encoder, images_chw, drop):
        pix = encoder.preprocess(images_chw.permute(0, 2, 3, 1).float().cpu())
        pix = pix.to(images_chw.device)
        pix = torch.where(drop.view(-1, *[1] * (pix.ndim - 1)), torch.zeros_like(pix), pix)
        return encoder.encode_pixels(pix).float()

    def _vae(self, pixels, gen):
        dist = self.vae.vae.encode(pixels.to(dtype=self.vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
        return ((dist.mean + dist.std * noise) * self.vae.scaling_factor).float()

    @torch.no_grad()
    def prepare(self, raw: dict, gen: torch.Generator, device, dropout: bool = True) -> dict:
        src, tgt = raw["source_image"].to(device), raw["target_image"].to(device)
        b = src.shape[0]
        if self.stage == "prior":
            d_img, d_sp, d_tp = self._drops(b, 3, gen, device, dropout)
            sp, tp = raw["source_pose"].to(device).float(), raw["target_pose"].to(device).float()
            return {"source_embedding": self._encode(self.clip, src, d_img),
                    "x0": self.model.normalize_embedding(self._encode(self.clip, tgt,
                                                                      torch.zeros_like(d_img))).float(),
                    "source_pose": torch.where(d_sp[:, None], torch.zeros_like(sp), sp),
                    "target_pose": torch.where(d_tp[:, None], torch.zeros_like(tp), tp)}
        if self.stage == "refine":
            (d_gen,) = self._drops(b, 1, gen, device, dropout)
            cond = torch.where(d_gen.view(-1, 1, 1, 1), torch.zeros_like(tgt), tgt * 2 - 1)
            return {"x0": self._vae(tgt * 2 - 1, gen), "cond_latents": self._vae(cond, gen),
                    "image_features": self._encode(self.dino, src, torch.zeros(b, dtype=torch.bool,
                                                                               device=device))}
        # inpaint / simplified: the [source | target] canvas
        d_src, d_tgt = self._drops(b, 2, gen, device, dropout)
        canvas = torch.cat([src, tgt], -1) * 2 - 1
        masked = torch.cat([src * 2 - 1, -torch.ones_like(tgt)], -1)
        pose = torch.cat([raw["source_pose_image"], raw["target_pose_image"]], -1).to(device) * 2 - 1
        out = {"x0": self._vae(canvas, gen), "masked_latents": self._vae(masked, gen), "pose_image": pose,
               "image_features": self._encode(self.dino, src, d_src)}
        if self.stage == "inpaint":
            out["global_embedding"] = self._encode(self.clip, tgt, d_tgt)
        return out

    def draw(self, x0, gen):
        """Training timesteps and offset noise for ``x0``."""
        return draw_training_noise(x0, self.scheduler, gen, self.offset)

    def loss(self, model, prep: dict, timesteps, noise) -> torch.Tensor:
        return training_loss(self.stage, model, prep, timesteps, noise, self.scheduler)


# ------------------------------------------------------------------------------------------------ training
def train(args: argparse.Namespace) -> dict:
    """Run (or resume) one training; returns ``{"step", "history", "probe", "output_dir", "model_path"}``."""
    common.check_diffusion_args(args)
    out = Path(args.output_dir)
    return common.run_with_accelerator(args, out, lambda accelerator: _train(args, accelerator, out))


def _train(args, accelerator, out: Path) -> dict:
    from accelerate.utils import set_seed

    from ..core.pcdms import save_pcdms_safetensors

    stage = args.stage
    resume = common.start_run(accelerator, args, out, PROG)
    set_seed(args.seed)
    saved = None
    if resume is not None:
        saved = common.read_train_config(resume, f"pcdms_{stage}")["model_config"]
    model = _build_model(args, saved).train()
    model.requires_grad_(True)
    model_config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    device = accelerator.device

    if stage == "prior":
        dim = model.config.embedding_dim
        clip, dino, vae = _load_encoder(args.clip, "clip", dim, device), None, None
        scheduler = prior_noise_scheduler()
    else:
        width = model.unet.config.cross_attention_dim
        vae = _load_vae(args.vae, device, args.vae_config)
        dino = _load_encoder(args.dino, "dino", model.config.image_feature_dim, device)
        clip = _load_encoder(args.clip, "clip", width, device) if stage == "inpaint" else None
        scheduler = unet_noise_scheduler()
        h, w = args.resolution
        factor = vae.downscale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ValueError(f"--resolution {h}x{w}: both sides must be multiples of {factor}")

    dataset = _make_dataset(args)
    if len(dataset) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size}: the dataset has only {len(dataset)} example(s)")
    sampler = EpochSampler(len(dataset), args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=args.num_workers)
    lr = args.lr if args.lr is not None else DEFAULT_LR[stage]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=args.weight_decay)
    model_p, optimizer = accelerator.prepare(model, optimizer)
    common.plain_forward(accelerator, model_p)
    raw_model = accelerator.unwrap_model(model_p)
    state = common.StepCounter()
    resumable = common.Resumable({"model": model_p}, {"optimizer": optimizer},
                                 data={"examples": len(dataset), "seed": args.seed})
    if resume is not None:
        state.step = common.load_checkpoint(accelerator, resume, resumable, PROG)
        if accelerator.is_main_process:
            print(f"[{PROG}] resumed from {resume} at step {state.step}", flush=True)
    runner = _Stage(stage, raw_model, vae, clip, dino, scheduler, args.cond_drop_prob, args.noise_offset)
    accum = args.gradient_accumulation_steps
    per_epoch = len(loader)

    def batches(consumed: int):
        epoch, offset = divmod(consumed, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            for i, raw in enumerate(loader):
                if i >= offset:
                    yield raw
            epoch, offset = epoch + 1, 0

    # The probe: the first batch of epoch 0, fixed VAE samples, timesteps and noise, no dropout.
    sampler.set_epoch(0)
    pg = torch.Generator().manual_seed(args.seed + 12345)
    probe_prep = runner.prepare(next(iter(loader)), pg, device, dropout=False)
    bsz = probe_prep["x0"].shape[0]
    probe_t = torch.linspace(20, 980, bsz).long().to(device)
    probe_noise = torch.randn(probe_prep["x0"].shape, generator=pg).to(device)

    def probe() -> float:
        model_p.eval()
        with torch.no_grad(), accelerator.autocast():
            value = float(runner.loss(model_p, probe_prep, probe_t, probe_noise))
        model_p.train()
        return value

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            common.append_jsonl(out / LOG_JSONL, record)

    def truncate_log(step: int) -> None:
        if accelerator.is_main_process:
            common.truncate_jsonl(out / LOG_JSONL, step)

    probes = {}

    def save_checkpoint() -> Path:
        probes[state.step] = value = probe()
        config = {"kind": f"pcdms_{stage}", "step": state.step, "model_config": model_config,
                  "args": common.cli_args(args)}
        path = common.save_checkpoint(accelerator, out, state.step, config,
                                      lambda folder: save_pcdms_safetensors(raw_model, folder / MODEL_FILE),
                                      resumable, args.checkpoints_total_limit)
        log({"step": state.step, "probe_loss": value})
        return path

    truncate_log(state.step)
    if state.step == 0:
        probes[0] = probe()
        log({"step": 0, "probe_loss": probes[0]})
    if accelerator.is_main_process:
        print(f"[{PROG}] {stage}: {len(dataset)} pairs, {accelerator.num_processes} process(es) on {device.type}, "
              f"batch {args.batch_size} x {accum}, lr {lr:g}, mixed precision {accelerator.mixed_precision}",
              flush=True)
    stream = batches(state.step * accum)
    history = []
    t0 = time.perf_counter()
    while state.step < args.max_steps:
        losses = []
        for k in range(accum):
            gen = torch.Generator().manual_seed(
                ((args.seed * 1_000_003 + state.step) * 64 + k) * 64 + accelerator.process_index)
            prep = runner.prepare(next(stream), gen, device)
            t, noise = runner.draw(prep["x0"], gen)
            with accelerator.accumulate(model_p):
                with accelerator.autocast():  # the forward only: backward and step run outside autocast
                    loss = runner.loss(model_p, prep, t, noise)
                accelerator.backward(loss)  # divided by the accumulation steps, scaled under fp16
                if accelerator.sync_gradients and args.max_grad_norm:  # unscales first under fp16
                    accelerator.clip_grad_norm_(model_p.parameters(), args.max_grad_norm)
                optimizer.step()  # a no-op until the last micro-batch; skipped on fp16 overflow
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        state.step += 1
        value = torch.tensor(sum(losses) / len(losses), dtype=torch.float64, device=device)
        if accelerator.num_processes > 1:
            value = accelerator.reduce(value, reduction="mean")
        record = {"step": state.step, "loss": float(value), "lr": float(optimizer.param_groups[0]["lr"]),
                  "time": round(time.perf_counter() - t0, 3)}
        if accelerator.scaler is not None:  # fp16: the loss scale after this step (it halves on a skipped step)
            record["loss_scale"] = float(accelerator.scaler.get_scale())
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"step {state.step}: non-finite loss {record}")
        history.append(record)
        log(record)
        if accelerator.is_main_process and (state.step % max(1, args.log_every) == 0 or state.step == 1):
            print(f"[{PROG}] step {state.step} loss={record['loss']:.4g}", flush=True)
        if args.checkpoint_every and state.step % args.checkpoint_every == 0 and state.step < args.max_steps:
            save_checkpoint()
    if common.needs_final_checkpoint(out, state.step):
        save_checkpoint()
    elif state.step not in probes:
        probes[state.step] = probe()
    if accelerator.is_main_process:
        save_pcdms_safetensors(raw_model, out / MODEL_FILE)
        print(f"[{PROG}] step {state.step}: model in {out / MODEL_FILE}", flush=True)
    accelerator.wait_for_everyone()
    return {"step": state.step, "history": history, "probe": probes, "output_dir": str(out),
            "model_path": str(out / MODEL_FILE)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m posetransfer.training.train_pcdms``; the exit code (2 with one ``error:`` line for bad input)."""
    return common.run_main(PROG, build_arg_parser(), train, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
