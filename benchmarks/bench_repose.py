"""Benchmark of RePoseDM on the CPU: PoseAlign time and memory at 64x44 and 128x88 latents with N = 5, the windowed
attention / correlation against a dense attention matrix, and the cost of a PoseGuidance step.

    python benchmarks/bench_repose.py                 # the default table (about 12 minutes on 2 shared cores)
    python benchmarks/bench_repose.py --markdown      # the same as a markdown table
    python benchmarks/bench_repose.py --reencode      # also PoseAlign with eq 9's VAE re-encoding, measured (slow)
    python benchmarks/bench_repose.py --cases "" --steps-size 32x22   # only the step comparison (about 10 minutes)
    python benchmarks/bench_repose.py --cases "" --steps-size 64x44 --steps-lite --rounds 2   # at 512x352 (slow)
    python benchmarks/bench_repose.py --cases align-64x44,attn-local-128x88   # a subset
    python benchmarks/bench_repose.py --flops 32x22   # FLOPs of the guided step's parts (seconds, no compute)

Cases (batch 1, random weights: time and memory do not depend on them; no autograd unless said):

* ``align-HxW``: :class:`PoseAlign` with :data:`PAPER_POSE_ALIGN_CONFIG` (D = 64, windows global/15/11/7/5/3,
  R = 4, N = 5: 6 MapFormer + aggregator applications, 5 compositions) with ``reencode=False`` (the latents are
  warped), so the VAE encoder is not in the figure. ``vae-encode-64x44``: one call of an SD-architecture VAE encoder
  (83.7 M params with the decoder) on a 512 x 352 image; eq 9 as written re-encodes N + 1 more times, so PoseAlign
  with re-encoding costs about ``align + (N + 1) * encode`` (printed below the table; ``--reencode`` measures it).
* ``attn-{local,dense}-128x88``: one 64-wide head of :func:`local_attention` (window 15) vs the masked dense
  reference on 11264 positions (the dense matrix alone is 11264^2 floats = 484 MiB). ``corr-128x88``: eq 6 with
  R = 4, D = 64.
* ``steps-HxW`` (one child, several rows): one sampling step of the paper-size denoiser (:data:`PAPER_UNET_CONFIG`,
  865 M params, classifier-free: one batch of 2) with the DDPM scheduler through :func:`denoise_loop` --
  ``unguided`` (the stock UNet CFG step); ``guided``: the same step with :class:`PoseGuidance`, exact (SD-architecture
  VAE decoder forward + backward to the Tweedie latent, with :class:`VaeCodec`'s default fused upsamplers, and
  HigherHRNet-W32 forward + backward; ``threshold=-1`` so that ``W_h`` is never empty and the backward always runs
  -- an empty mask skips it); ``guided-stock``: the same with diffusers' own upsamplers (``fused_upsample=False``,
  the code before the rewrite); ``guided-3q`` / ``guided-half``: ``guidance_decode_scale`` = 0.75 / 0.5 (the Tweedie
  latent resized before decoding -- approximations, opt-in). Then the parts, each alone: ``part-unet-cfg`` (the UNet
  forward, batch 2), ``part-decoder-fb`` / ``part-decoder-fb-stock`` (decoder forward + backward to the latent),
  ``part-estimator-fb``.
  ``--steps-lite`` keeps unguided / guided / guided-3q / guided-half only (for the slow 64x44). Default 32 x 22
  latents (DeepFashion 256 x 176); ``--steps-size 64x44`` = 512 x 352. The summary prints, per row, the wall and process
  CPU time, their ratio to the unguided step (median over rounds of the per-round ratio) and TARGET MET / NOT MET
  for the guided rows (target: guided <= 2.5 x unguided). Results: benchmarks/RESULTS_repose.md.

Memory ("tensor MiB"): the peak of live tensor memory during one call, from the torch profiler's allocation events
in time order (allocator-independent: glibc's retained heap made RSS peaks of the same call vary from 50 to 640 MiB
with 2 threads). Each case runs in a fresh subprocess. Time: the median of ``--repeats`` calls after one warm-up
(``vae-encode``, ``attn-dense`` and the re-encoding case: their single, profiled call); the step rows: the median of
``--rounds`` (3) interleaved rounds after one warm-up call of every row (interleaving makes the ratios robust to the
machine's changing load). ``OMP_WAIT_POLICY=PASSIVE`` is set for the children unless given. CPU timings on a machine
shared with other jobs vary by tens of percent from run to run; ratios measured within one child are steadier.
``--flops HxW`` prints the FLOPs of the step's parts instead (torch's FlopCounterMode on meta tensors: no compute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW = ("vae-encode", "attn-dense", "align-64x44-reencode")
DEFAULT_CASES = ("align-64x44", "align-128x88", "vae-encode-64x44", "attn-local-128x88", "attn-dense-128x88",
                 "corr-128x88")


def _size(text: str) -> tuple[int, int]:
    h, w = text.split("x")
    return int(h), int(w)


def _sd_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                         sample_size=512, scaling_factor=0.18215).eval().requires_grad_(False)


def _build(case: str):
    """-> (callable to time, description)."""
    import torch

    from posetransfer.core.repose import (PAPER_POSE_ALIGN_CONFIG, PoseAlign, VaeCodec, local_attention,
                                          local_attention_reference, local_correlation)

    torch.manual_seed(0)
    kind = next((k for k in ("align", "vae-encode", "attn-local", "attn-dense", "corr") if case.startswith(k + "-")),
                None)
    if kind is None:
        raise SystemExit(f"unknown case {case!r}")
    size, *extra = case[len(kind) + 1:].split("-")
    h, w = _size(size)
    if kind == "align":
        reencode = "reencode" in extra
        model = PoseAlign(**dict(PAPER_POSE_ALIGN_CONFIG, reencode=reencode)).eval()
        src = torch.rand(1, 3, h * 8, w * 8) * 2 - 1
        pose_latents = torch.randn(1, 4, h, w)
        if reencode:
            encode = VaeCodec(_sd_vae()).encode
        else:
            src_latents = torch.randn(1, 4, h, w)
            encode = lambda image: src_latents                         # noqa: E731 (called once: F_S)

        def run():
            with torch.no_grad():
                return model(src, pose_latents, encode)
        n = sum(p.numel() for p in model.parameters())
        how = "eq 9 re-encoding through the VAE" if reencode else "latent warping, VAE excluded"
        return run, f"{h}x{w} latents, N=5, {n / 1e6:.2f} M params, {how}"
    if kind == "vae-encode":
        codec = VaeCodec(_sd_vae())
        img = torch.rand(1, 3, h * 8, w * 8) * 2 - 1

        def run():
            with torch.no_grad():
                return codec.encode(img)
        return run, f"SD-architecture VAE encoder, {h * 8}x{w * 8} image"
    if kind in ("attn-local", "attn-dense"):
        q, k, v = (torch.randn(1, 1, 64, h, w) for _ in range(3))
        fn = local_attention if kind == "attn-local" else local_attention_reference

        def run():
            with torch.no_grad():
                return fn(q, k, v, 15)
        return run, f"1 head x 64, {h}x{w} = {h * w} positions, window 15"
    if kind == "corr":
        a, b = torch.randn(1, 64, h, w), torch.randn(1, 64, h, w)

        def run():
            with torch.no_grad():
                return local_correlation(a, b, 4)
        return run, f"D=64, {h}x{w}, R=4 (81 channels)"
    raise SystemExit(f"unknown case {case!r}")


def _profiled_peak_mb(fn) -> tuple[float, float]:
    """(peak live tensor MiB, seconds) of one call, from the profiler's allocation events in time order."""
    from torch.profiler import ProfilerActivity, profile
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    seconds = time.perf_counter() - t0
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20, seconds


def run_one(case: str, repeats: int) -> dict:
    import torch
    fn, what = _build(case)
    if repeats == 0:                         # slow cases: one (profiled) call gives both figures
        peak, warm = _profiled_peak_mb(fn)
        return dict(case=case, input=what, warmup_s=float("nan"), time_s=warm, peak_mb=peak,
                    threads=torch.get_num_threads())
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    peak, _ = _profiled_peak_mb(fn)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dict(case=case, input=what, warmup_s=warm, time_s=statistics.median(times), peak_mb=peak,
                threads=torch.get_num_threads())


def run_steps(size: str, rounds: int = 2, lite: bool = False) -> list[dict]:
    """The step comparison in one process, interleaved: unguided / guided (exact) / guided with the stock diffusers
    upsamplers / guided at 0.75 and 0.5 resolution decode, and the parts (UNet CFG forward, decoder forward +
    backward with fused and stock upsamplers, estimator forward + backward). ``lite``: no parts, no stock decoder."""
    import torch

    from posetransfer.core.repose import (HIGHER_HRNET_W32_CONFIG, PAPER_UNET_CONFIG, HigherHRNet,
                                          HigherHRNetEstimator, PoseGuidance, RePoseDenoiser, VaeCodec,
                                          denoise_loop, repose_noise_scheduler)

    torch.manual_seed(0)
    h, w = _size(size)
    den = RePoseDenoiser(unet_config=PAPER_UNET_CONFIG).eval().requires_grad_(False)
    vae = _sd_vae()
    codec, stock = VaeCodec(vae), VaeCodec(vae, fused_upsample=False)
    estimator = HigherHRNetEstimator(HigherHRNet(**HIGHER_HRNET_W32_CONFIG).eval().requires_grad_(False))
    pose_latents, features = torch.randn(1, 4, h, w), torch.randn(1, 4, h, w)
    target = torch.rand(1, 3, h * 8, w * 8)
    sched = repose_noise_scheduler()
    x_fixed = torch.randn(1, 4, h, w)
    image = torch.rand(1, 3, h * 8, w * 8)

    def predict(x, t):
        out = den(torch.cat([x, x]), t, pose_latents.repeat(2, 1, 1, 1), features.repeat(2, 1, 1, 1),
                  drop_condition=torch.tensor([False, True])).sample
        return out[:1, :4], out[1:, :4], out[:1, 4:]

    def step(guidance, decode):
        def run():
            sched.set_timesteps(50)
            sched.timesteps = sched.timesteps[10:11]
            with torch.no_grad():
                denoise_loop(predict, torch.randn(1, 4, h, w), sched, guidance_scale=2.0, pose_guidance=guidance,
                             decode=decode)
        return run

    def unet():
        with torch.no_grad():
            predict(x_fixed, torch.tensor(800))

    def decoder_fb(c):
        def run():
            z = x_fixed.clone().requires_grad_(True)
            torch.autograd.grad(c.decode(z).square().sum(), z)
        return run

    def estimator_fb():
        i = image.clone().requires_grad_(True)
        torch.autograd.grad(estimator(i).features.square().sum(), i)

    # threshold = -1: W_h = 1 everywhere, so the backward always runs (an empty mask skips it: exactly zero gradient)
    guide = PoseGuidance(estimator, target, threshold=-1.0)
    variants = [("unguided", step(None, None), "stock UNet CFG step (batch 2) + DDPM step"),
                ("guided", step(guide, codec.decoder(1.0)),
                 "+ PoseGuidance, exact (decoder with fused upsamplers, HigherHRNet-W32), fwd + bwd"),
                ("guided-3q", step(guide, codec.decoder(0.75)),
                 f"+ PoseGuidance, Tweedie latent x 0.75: decode {int(h * 0.75) * 8}x{int(w * 0.75) * 8} "
                 "(approximation, opt-in)"),
                ("guided-half", step(guide, codec.decoder(0.5)),
                 f"+ PoseGuidance, Tweedie latent halved: decode {h * 4}x{w * 4} (approximation, opt-in)")]
    if not lite:
        variants.insert(2, ("guided-stock", step(guide, stock.decoder(1.0)),
                            "+ PoseGuidance, exact, stock diffusers upsamplers (before this change)"))
        variants += [("part-unet-cfg", unet, "UNet forward, batch 2 (no grad)"),
                     ("part-decoder-fb", decoder_fb(codec), f"VAE decoder fwd + bwd to the latent, {h * 8}x{w * 8}, "
                                                             "fused upsamplers"),
                     ("part-decoder-fb-stock", decoder_fb(stock), "VAE decoder fwd + bwd, stock upsamplers"),
                     ("part-estimator-fb", estimator_fb, f"HigherHRNet-W32 fwd + bwd to the image, {h * 8}x{w * 8}")]
    t0 = time.perf_counter()
    variants[0][1]()                          # warm-up (oneDNN primitive caches, allocator)
    warm = time.perf_counter() - t0
    for _, fn, _ in variants[1:]:
        fn()
    times = {name: [] for name, _, _ in variants}
    cpu = {name: [] for name, _, _ in variants}
    for _ in range(rounds):                   # interleaved, so that load changes hit every variant alike
        for name, fn, _ in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    # ratios per round (same load), then the median over rounds
    ratio = {name: statistics.median(a / b for a, b in zip(times[name], times["unguided"])) for name in times}
    cpu_ratio = {name: statistics.median(a / b for a, b in zip(cpu[name], cpu["unguided"])) for name in cpu}
    params = sum(p.numel() for p in den.parameters()) / 1e6
    rows = []
    for name, _, what in variants:
        what = f"{params:.0f} M-param UNet, {h}x{w} latents: " + what if name == "unguided" else what
        rows.append(dict(case=f"step-{name}-{size}" if not name.startswith("part") else f"{name}-{size}",
                         time_s=statistics.median(times[name]), cpu_s=statistics.median(cpu[name]),
                         warmup_s=warm if name == "unguided" else float("nan"), input=what, ratio=ratio[name],
                         cpu_ratio=cpu_ratio[name], rounds=rounds, all_s=[round(t, 2) for t in times[name]],
                         peak_mb=float("nan"), threads=torch.get_num_threads(), load=os.getloadavg()))
    return rows


def flop_shares(size: str) -> None:
    """Print the FLOPs (FlopCounterMode, meta tensors) of the UNet CFG forward, the decoder forward / forward +
    backward (stock and fused upsamplers) and the estimator forward + backward at ``size`` latents."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from posetransfer.core.repose import (HIGHER_HRNET_W32_CONFIG, PAPER_UNET_CONFIG, HigherHRNet,
                                          HigherHRNetEstimator, RePoseDenoiser, VaeCodec)
    h, w = _size(size)
    with torch.device("meta"):
        den = RePoseDenoiser(unet_config=PAPER_UNET_CONFIG).eval().requires_grad_(False)
        vae = _sd_vae()
        est = HigherHRNetEstimator(HigherHRNet(**HIGHER_HRNET_W32_CONFIG).eval().requires_grad_(False))
        x, cond, img = torch.randn(1, 4, h, w), torch.randn(2, 4, h, w), torch.rand(1, 3, h * 8, w * 8)
        t, drop = torch.tensor(800), torch.tensor([False, True])

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e9

    def unet():
        with torch.no_grad():
            den(torch.cat([x, x]), t, cond, cond, drop_condition=drop)

    def decoder(fused, backward):
        def run():
            z = x.clone().requires_grad_(backward)
            out = VaeCodec(vae, fused_upsample=fused).decode(z)
            if backward:
                out.sum().backward()
        return run

    def estimator():
        i = img.clone().requires_grad_(True)
        est(i).features.sum().backward()

    rows = {"UNet forward, CFG batch 2": count(unet),
            "decoder forward, stock upsamplers": count(decoder(False, False)),
            "decoder forward + backward, stock": count(decoder(False, True)),
            "decoder forward, fused upsamplers": count(decoder(True, False)),
            "decoder forward + backward, fused": count(decoder(True, True)),
            "HigherHRNet-W32 forward + backward": count(estimator)}
    unet_flops = rows["UNet forward, CFG batch 2"]
    print(f"| part ({h}x{w} latents, {h * 8}x{w * 8} image) | GFLOP | x UNet CFG |\n|---|---:|---:|")
    for name, g in rows.items():
        print(f"| {name} | {g:.0f} | {g / unet_flops:.2f} |")
    for kind in ("stock", "fused"):
        total = unet_flops + rows[f"decoder forward + backward, {kind}"] + rows["HigherHRNet-W32 forward + backward"]
        print(f"guided / unguided step FLOPs, {kind} upsamplers: {total / unet_flops:.2f}x")


def _child(args: list[str], timeout: float, case: str) -> list[dict]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [dict(case=case, error=f"timed out after {timeout:.0f} s")]
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return [dict(case=case, error=f"exit {res.returncode}: {tail[:120]}")]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out if isinstance(out, list) else [out]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated case names")
    ap.add_argument("--reencode", action="store_true", help="add align-64x44-reencode (eq 9 through the VAE)")
    ap.add_argument("--steps-size", default="32x22", help="latent size of the step comparison ('' to skip)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step comparison")
    ap.add_argument("--steps-lite", action="store_true",
                    help="step comparison: no parts, no stock-decoder row")
    ap.add_argument("--steps-timeout", type=float, default=3600, help="seconds for the step comparison child")
    ap.add_argument("--timeout", type=float, default=400, help="seconds per child")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--flops", metavar="HxW", help="print the FLOPs of the guided step's parts and exit")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--steps", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.flops:
        flop_shares(args.flops)
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.repeats)))
        return
    if args.steps:
        print(json.dumps(run_steps(args.steps, args.rounds, args.steps_lite)))
        return
    cases = [c for c in args.cases.split(",") if c] + (["align-64x44-reencode"] if args.reencode else [])
    import torch
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch 1; median of {args.repeats} after a warm-up")
    # The slow single-call cases are timed on their first call only.
    jobs = [(c, ["--one", c, "--repeats", "0" if c.startswith(SLOW) else str(args.repeats)]) for c in cases]
    if args.steps_size:
        jobs.append((f"steps-{args.steps_size}", ["--steps", args.steps_size, "--rounds", str(args.rounds)]
                     + (["--steps-lite"] if args.steps_lite else [])))
    rows, header = [], False
    for case, child_args in jobs:
        timeout = args.steps_timeout if case.startswith("steps-") else args.timeout
        for r in _child(child_args, timeout, case):
            rows.append(r)
            if "error" in r:
                line = (r["case"], "-", "-", "-", r["error"])
            else:
                warm = "-" if r["warmup_s"] != r["warmup_s"] else f"{r['warmup_s'] * 1000:.0f}"
                mem = "-" if r["peak_mb"] != r["peak_mb"] else f"{r['peak_mb']:.0f}"
                line = (r["case"], f"{r['time_s'] * 1000:.0f}", warm, mem, r["input"])
            if not header:
                header = True
                if args.markdown:
                    print("| case | time ms | warm-up ms | peak tensor MiB | input |\n|---|---:|---:|---:|---|")
                else:
                    print(f"{'case':<26}{'time ms':>10}{'warm-up ms':>12}{'tensor MiB':>12}  input")
            if args.markdown:
                print("| " + " | ".join(line) + " |")
            else:
                print(f"{line[0]:<26}{line[1]:>10}{line[2]:>12}{line[3]:>12}  {line[4]}")
            sys.stdout.flush()
    by = {r["case"]: r for r in rows if "error" not in r}
    if "vae-encode-64x44" in by and "align-64x44" in by:
        est = by["align-64x44"]["time_s"] + 6 * by["vae-encode-64x44"]["time_s"]
        print(f"PoseAlign 64x44 with eq 9 re-encoding (N + 1 = 6 more encoder calls), estimated: {est:.1f} s"
              + (f"; measured: {by['align-64x44-reencode']['time_s']:.1f} s" if "align-64x44-reencode" in by else ""))
    steps = [r for r in rows if "ratio" in r]
    if steps:
        print(f"step rows: median of {steps[0]['rounds']} interleaved rounds; ratio = median over rounds of "
              f"(time / unguided time in the same round); load average at the end {steps[0]['load']}")
        for r in steps:
            print(f"  {r['case']:<34} wall {r['time_s']:7.2f} s {r['ratio']:5.2f}x   CPU {r['cpu_s']:7.2f} s "
                  f"{r['cpu_ratio']:5.2f}x   rounds {r['all_s']}")
        for name in ("guided", "guided-stock", "guided-3q", "guided-half"):
            r = by.get(f"step-{name}-{args.steps_size}")
            if r:
                met = "TARGET MET" if r["ratio"] <= 2.5 else "TARGET NOT MET"
                print(f"{name} step / unguided step: {r['ratio']:.2f}x wall, {r['cpu_ratio']:.2f}x CPU time "
                      f"(target <= 2.5x): {met}")


if __name__ == "__main__":
    main()
