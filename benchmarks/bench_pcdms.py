"""Per-step cost of the PCDMs pipelines at full model size next to a bare forward, and memory per stage.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_pcdms.py            # default: bf16, 64 px frame, ~5 min
    python benchmarks/bench_pcdms.py --dtype float32 --size 128          # fp32 (much faster on AVX2 CPUs)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_pcdms.py --dtype float32 --size 512 --steps 2 \
        --stages prior,inpaint,refine,simplified                        # full size (results: RESULTS_pcdms.md)
    python benchmarks/bench_pcdms.py --size 512 --steps 1 --vae-dtype float32 --stages refine  # full size bf16
    python benchmarks/bench_pcdms.py --stages inpaint --markdown         # one stage, markdown table

What is measured (batch 1, classifier-free guidance on, i.e. every UNet / prior call has batch 2):

* Models at FULL size (prior ~1.03 B parameters, UNets ~0.87 B each, SD-2.1 VAE), random weights built directly
  in ``--dtype``. Conditioning inputs (CLIP embedding, DINOv2 tokens) are random tensors of the right shapes:
  the encoders run once per call and are not part of a step.
* ``ours``: the time of one denoising step inside the real pipeline (``PriorPipeline`` / ``InpaintPipeline`` /
  ``RefinePipeline`` / ``SimplifiedPipeline``), called through ``core.pcdms.transfer`` (``prior_embed`` /
  ``inpaint`` / ``refine``: the Pose-level entry the nodes, the command line and Python run; a real pose, rendered
  and encoded as in use): UNet call with both CFG halves, pose features added after
  conv_in, guidance (and stage 3's rescale), the scheduler step. Step 1 is timed from the first model call,
  later steps from the end of the previous step's callback to the start of this step's.
* ``bare``: one forward of the stock diffusers ``UNet2DConditionModel`` (the stage's own ``model.unet``: same
  config, same weights, batch 2, same context length, no pose hook), run inside the callback between our steps
  (interleaved, so both see the same machine load; the callback time is excluded from ours), after one untimed
  warm-up forward. For the prior
  there is no stock diffusers module of the same architecture: ``bare`` is the prior's own forward.
* ``ratio`` = median over steps of ours_i / bare_i, where bare forward i runs right after our step i (the
  paired quotient cancels slow drifts of the load on a shared machine; with 2 CPU cores shared by other jobs
  single forwards vary by up to 2x). Also printed: best-of, min(ours) / min(bare), and the ratio of the
  medians. Target <= 1.10. Use ``--steps 4`` or more at full size: step 1 is often disturbed.
* Memory (Linux ``/proc/self/status``): RSS before building the stage, after building, the peak (``VmHWM``,
  reset per stage) while sampling, and after deleting the stage and collecting garbage -- whether the stage's
  models were freed. The VAE encodes the inputs (posterior sample) in every UNet stage; decoding is skipped
  unless ``--decode``.

``--memory-format auto`` (default) puts the UNet's (and a bf16 VAE's) conv weights in channels_last for bf16 /
fp16: on an AVX2-only CPU PyTorch has no fast bf16 kernel for contiguous convolutions and falls back to
``_slow_conv2d_forward``, which is unusable at full size (measured here: one 320-channel 3x3 conv at 32 x 64,
batch 2: 0.14 s fp32, 45.7 s bf16 contiguous, 0.75 s bf16 channels_last via oneDNN). Even channels_last bf16
is ~3x slower than fp32 on such a CPU (no AVX512-BF16 / AMX; full-size stage-3 step: ~70 s bf16, ~23 s fp32):
fp32 is the practical CPU dtype for the UNets, bf16 pays off on GPUs and on CPUs with native bf16. The ratio
ours/bare does not depend on the layout: both run the same model object. ``--vae-dtype float32`` keeps the
(not timed) VAE encode cheap in a bf16 run.

The spatial size of the default run is small (64 px frame: latents 8 x 16 in stage 2) so that it finishes in
minutes; ``--size 512`` is the official frame (latents 64 x 128 in stages 2 / simplified, 64 x 64 in stage 3).
Model size, batch, context length and the code path are those of a real run at any size.

The end of the run prints each stage's ratio with TARGET MET / NOT MET and the peak RSS of the chain run in
sequence (each stage's models dropped and collected before the next one is built), plus the RSS the weights
would take if all stages were held at once.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
import weakref

import torch

STAGES = ("prior", "inpaint", "refine", "simplified")
DEFAULT_STAGES = ("prior", "inpaint", "refine")


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _malloc_trim() -> None:
    """Ask glibc to hand freed heap memory back to the OS (freed tensors below its mmap threshold stay in the
    process's heap otherwise, which looks like a leak in RSS but is not)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _gib(kb: int) -> float:
    return kb / 2**20


def _sample_pose(size: int):
    """A real person's pose (samples/fashion_standing) on the size x size frame: what the stages render / encode."""
    from posetransfer.core.pose.geometry import resize
    from posetransfer.cli import SAMPLES
    from posetransfer.core.pose.formats import read_openpose_json

    pose = read_openpose_json(SAMPLES / "fashion_standing.pose.json")[0]
    return resize(None, pose, size, size)[1]


def _build(kind: str, dtype: torch.dtype, channels_last: bool = False):
    from posetransfer.core.pcdms import model_class

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = model_class(kind)()
    finally:
        torch.set_default_dtype(before)
    if channels_last and kind != "prior":
        model = model.to(memory_format=torch.channels_last)  # 4-d conv weights only; the same model for ours/bare
    return model.eval()


def _build_vae(dtype: torch.dtype, channels_last: bool = False):
    from diffusers import AutoencoderKL

    from posetransfer.core.pcdms.encoders import DiffusersVAE

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:  # stabilityai/stable-diffusion-2-1-base/vae
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=768,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
    finally:
        torch.set_default_dtype(before)
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last)
    return DiffusersVAE(vae.eval())


class _Timer:
    """Times our steps (callback to callback) and runs a bare forward inside each callback."""

    def __init__(self, bare):
        self.bare = bare
        self.ours: list[float] = []
        self.bare_times: list[float] = []
        self.mark: float | None = None

    def first_call(self, *_):
        if self.mark is None:
            self.mark = time.perf_counter()

    def __call__(self, info):
        now = time.perf_counter()
        self.ours.append(now - self.mark)
        t0 = time.perf_counter()
        self.bare(info.timestep)
        self.bare_times.append(time.perf_counter() - t0)
        self.mark = time.perf_counter()


def _run_stage(kind: str, args, dtype: torch.dtype) -> dict:
    gc.collect()
    rss0 = _status_kb("VmRSS")
    row, alive = _sample_stage(kind, args, dtype)  # every reference to the stage's models dies with this call
    gc.collect()
    row["models_freed"] = all(ref() is None for ref in alive)
    row["rss_before_GiB"] = round(_gib(rss0), 2)
    row["rss_after_free_GiB"] = round(_gib(_status_kb("VmRSS")), 2)
    _malloc_trim()
    row["rss_after_trim_GiB"] = round(_gib(_status_kb("VmRSS")), 2)
    return row


def _sample_stage(kind: str, args, dtype: torch.dtype) -> dict:
    from posetransfer.core.pcdms import transfer as pcdms

    t0 = time.perf_counter()
    vae_dtype = getattr(torch, args.vae_dtype) if args.vae_dtype else dtype
    model = _build(kind, dtype, args.channels_last)
    vae = _build_vae(vae_dtype, args.channels_last and vae_dtype != torch.float32) if kind != "prior" else None
    build_s = time.perf_counter() - t0
    rss_built = _status_kb("VmRSS")
    _reset_peak()
    g = torch.Generator().manual_seed(0)
    size = args.size
    row = {"stage": kind, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
           "build_s": round(build_s, 1)}
    pose = _sample_pose(size)
    src = torch.rand(1, size, size, 3, generator=g)
    with torch.no_grad():
        if kind == "prior":
            d = model.config.embedding_dim
            emb, sp, tp = torch.randn(1, d, generator=g), torch.rand(1, 36, generator=g), torch.rand(1, 36, generator=g)
            x = torch.randn(2, d, dtype=dtype)
            args_b = (torch.cat([emb, emb]).to(dtype), torch.cat([sp, sp]).to(dtype), torch.cat([tp, tp]).to(dtype))
            timer = _Timer(lambda t: model(x, t, *args_b))
            timer.bare(999)  # warm-up (first-touch of activation memory), not timed
            hook = model.register_forward_pre_hook(timer.first_call)
            try:  # the null source embedding without a CLIP encoder: zeros
                pcdms.prior_embed(model, None, src, [pose], [pose], source_embedding=emb, steps=max(2, args.steps),
                                  cfg=4.0, seed=None, generator=g, layout="squash", resolution=size, callback=timer)
            finally:
                hook.remove()
            row["latent"] = f"{d}"
        else:
            c = model.unet.config.cross_attention_dim
            feat_dim = model.config.image_feature_dim
            feats = torch.randn(1, 257, feat_dim, generator=g)
            lat_w = size // 8 * (2 if kind != "refine" else 1)
            x = torch.randn(2, model.unet.config.in_channels, size // 8, lat_w, dtype=dtype)
            common = dict(image_features=feats, steps=args.steps, seed=None, generator=g, layout="squash",
                          resolution=size, decode=args.decode)
            if kind in ("inpaint", "simplified"):  # the Pose-level entry the node, CLI and Python run
                ctx = torch.randn(2, 258 if kind == "inpaint" else 257, c, dtype=dtype)
                if kind == "inpaint":
                    cls = torch.randn(2, model.unet.config.projection_class_embeddings_input_dim, dtype=dtype)
                    bare = lambda t: model.unet(x, t, encoder_hidden_states=ctx, class_labels=cls)  # noqa: E731
                else:
                    bare = lambda t: model.unet(x, t, encoder_hidden_states=ctx)  # noqa: E731
                embedding = torch.randn(1, c, generator=g) if kind == "inpaint" else None
                call = lambda cb: pcdms.inpaint(model, vae, None, src, [pose], [pose],  # noqa: E731
                                                target_embedding=embedding, callback=cb, **common)
            else:
                ctx = torch.randn(2, 257, c, dtype=dtype)
                bare = lambda t: model.unet(x, t, encoder_hidden_states=ctx)  # noqa: E731
                call = lambda cb: pcdms.refine(model, vae, None, src, src, callback=cb, **common)  # noqa: E731
            timer = _Timer(bare)
            timer.bare(999)  # warm-up (first-touch of activation memory), not timed
            hook = model.unet.register_forward_pre_hook(timer.first_call)
            try:
                call(timer)
            finally:
                hook.remove()
            row["latent"] = f"{size // 8}x{lat_w}"
    row["ours_s"] = [round(v, 3) for v in timer.ours]
    row["bare_s"] = [round(v, 3) for v in timer.bare_times]
    med_ours, med_bare = statistics.median(timer.ours), statistics.median(timer.bare_times)
    row["ratio_min"] = round(min(timer.ours) / min(timer.bare_times), 3)
    row["ratio_median"] = round(med_ours / med_bare, 3)
    # step i of ours and bare forward i run back to back: their quotient cancels slow drifts of the machine load
    row["ratio"] = round(statistics.median(o / b for o, b in zip(timer.ours, timer.bare_times)), 3)
    row["rss_built_GiB"] = round(_gib(rss_built), 2)
    row["peak_GiB"] = round(_gib(_status_kb("VmHWM")), 2)
    alive = [weakref.ref(model)] + ([weakref.ref(vae.vae)] if vae is not None else [])
    return row, alive


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--size", type=int, default=64, help="frame size in pixels (official 512); multiple of 64")
    ap.add_argument("--steps", type=int, default=2,
                    help="denoising steps per stage (all timed; the prior runs at least 2: diffusers' "
                         "UnCLIPScheduler cannot do 1)")
    ap.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"comma-separated subset of {STAGES}")
    ap.add_argument("--decode", action="store_true", help="also decode with the VAE (not part of a step)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"],
                    help="UNet/VAE conv layout (auto: channels_last for bf16/fp16 on CPU -- PyTorch's contiguous "
                         "bf16 convolution on AVX2 is unusably slow -- contiguous for fp32)")
    ap.add_argument("--vae-dtype", default="", choices=["", "bfloat16", "float32", "float16"],
                    help="VAE dtype (default: --dtype); the VAE encodes once per call and is not part of a step")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.size % 64:
        ap.error("--size must be a multiple of 64 (8x VAE factor x 8x UNet downsampling)")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            ap.error(f"unknown stage {s!r}; expected {STAGES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    args.channels_last = (args.memory_format == "channels_last"
                          or (args.memory_format == "auto" and dtype != torch.float32))
    header = (f"PCDMs per-step benchmark: {args.dtype} ({'channels_last' if args.channels_last else 'contiguous'}, "
              f"VAE {args.vae_dtype or args.dtype}), frame {args.size} px, batch 1 with guidance "
              f"(calls of batch 2), {args.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
              f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(header, flush=True)
    rows = []
    for kind in stages:
        row = _run_stage(kind, args, dtype)
        rows.append(row)
        if not (args.markdown or args.json):
            print(f"{kind:10s} {row['params_M']:7.1f}M latents {row['latent']:>6s}  ours {row['ours_s']} s  "
                  f"bare {row['bare_s']} s  ratio {row['ratio']:.3f} (best-of {row['ratio_min']:.3f}, medians "
                  f"{row['ratio_median']:.3f})  "
                  f"RSS {row['rss_before_GiB']:.2f} -> built {row['rss_built_GiB']:.2f} -> peak "
                  f"{row['peak_GiB']:.2f} -> freed {row['rss_after_free_GiB']:.2f} (after malloc_trim "
                  f"{row['rss_after_trim_GiB']:.2f}) GiB, models collected: {row['models_freed']}  "
                  f"(build {row['build_s']} s)",
                  flush=True)
    if args.json:
        print(json.dumps({"header": header, "rows": rows}, indent=1))
    elif args.markdown:
        print("\n| stage | params | latents | ours s/step | bare s/fwd | ratio (paired) | RSS built | peak "
              "| after free (trim) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['stage']} | {r['params_M']}M | {r['latent']} | {statistics.median(r['ours_s']):.2f} | "
                  f"{statistics.median(r['bare_s']):.2f} | {r['ratio']:.3f} | {r['rss_built_GiB']:.2f} GiB | "
                  f"{r['peak_GiB']:.2f} GiB | {r['rss_after_free_GiB']:.2f} ({r['rss_after_trim_GiB']:.2f}) GiB |")
    if len(rows) > 1:  # the stages run one after the other in this process, each freed before the next
        print(f"pipeline peak RSS (stages in sequence, each freed before the next): "
              f"{max(r['peak_GiB'] for r in rows):.2f} GiB; models collected after every stage: "
              f"{all(r['models_freed'] for r in rows)}; held together (sum of the built-RSS increments): "
              f"{sum(r['rss_built_GiB'] - r['rss_before_GiB'] for r in rows):.2f} GiB of weights", flush=True)
    for r in rows:
        print(f"{r['stage']}: ratio {r['ratio']:.3f} (best-of {r['ratio_min']:.3f}, "
              f"medians {r['ratio_median']:.3f}): "
              f"{'TARGET MET' if r['ratio'] <= 1.10 else 'TARGET NOT MET'}")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target <= 1.10): {'OK' if worst <= 1.10 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
