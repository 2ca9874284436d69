"""Benchmark of the learned flow models on the CPU: forward time and peak memory at the papers' sizes, and the
single-transformation correlation (eq 1, 9, 2) computed naively vs in chunks.

    python benchmarks/bench_flow_models.py               # the default table (about 2 minutes on 2 cores)
    python benchmarks/bench_flow_models.py --markdown    # the same as a markdown table
    python benchmarks/bench_flow_models.py --train       # also forward+backward of the correlation at 64x64
    python benchmarks/bench_flow_models.py --cases corr-chunked-128,single-W   # a subset

Cases (batch 1, random inputs, weights random: timing and memory do not depend on them):

* ``corr-{naive,chunked}-{64,128}``: :func:`guided_correlation_naive` / :func:`guided_correlation` (chunks of 256
  target positions) on two ``35 x N x N`` feature maps, no autograd. The output alone is ``N^4 * 4`` bytes
  (64 MiB at 64x64, 1 GiB at 128x128).
* ``corr-{naive,chunked}-64-train``: the same with autograd, forward and backward (``--train``).
* ``single-W``: :class:`SingleTransformFlowNet` with the paper's config (256x256 heatmaps, 11-layer encoder to
  35 x 64 x 64, flow head 128-128-96-64-32-2), eval, no autograd. ``single-W+R``: plus the refiner (encoder to
  256 x 64 x 64, 6 residual blocks, 2 upsamplings) on a 256x256 image.
* ``part-flow``: :class:`PartFlowNet` with ``PART_FLOW_PAPER_CONFIG`` (256x256), eval, no autograd.

Memory: each case runs in a fresh subprocess. After building the model and inputs the child resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) and notes its RSS; the figure is the peak RSS (``VmHWM``) at the end
minus that RSS, i.e. the extra memory the warm-up and timed calls needed at their peak. Time: the median of
``--repeats`` calls after one warm-up. ``OMP_WAIT_POLICY=PASSIVE`` is set for the children unless given (as the
Makefile does: spinning OpenMP threads make torch 10x slower on a shared 2-core machine).
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
DEFAULT_CASES = ("corr-naive-64", "corr-chunked-64", "corr-naive-128", "corr-chunked-128", "single-W",
                 "single-W+R", "part-flow")
TRAIN_CASES = ("corr-naive-64-train", "corr-chunked-64-train")
CHUNK = 256
FEATURES = 35


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(case: str):
    """-> (callable to time, description of the input)."""
    import torch
    import torch.nn.functional as F

    from posetransfer.core.flow_models.single_transform import (
        PAPER_FLOW_NET_CONFIG, PAPER_REFINER_CONFIG, SingleTransformFlowNet, SingleTransformRefiner,
        guided_correlation, guided_correlation_naive)

    torch.manual_seed(0)
    if case.startswith("corr-"):
        _, kind, n, *train = case.split("-")
        n = int(n)
        z_s, z_t = (F.normalize(torch.rand(1, FEATURES, n, n).flatten(2), dim=2).view(1, FEATURES, n, n)
                    for _ in range(2))
        fn = guided_correlation_naive if kind == "naive" else (lambda a, b: guided_correlation(a, b, CHUNK))
        if train:
            z_s.requires_grad_(True)
            z_t.requires_grad_(True)
            weight = torch.rand(1, n * n, n, n)

            def run():
                (fn(z_s, z_t) * weight).sum().backward()
            return run, f"2 x (1, {FEATURES}, {n}, {n}), fwd+bwd"

        def run():
            with torch.no_grad():
                return fn(z_s, z_t)
        return run, f"2 x (1, {FEATURES}, {n}, {n})"
    if case in ("single-W", "single-W+R"):
        net = SingleTransformFlowNet(**PAPER_FLOW_NET_CONFIG).eval()
        ref = SingleTransformRefiner(**PAPER_REFINER_CONFIG).eval() if case == "single-W+R" else None
        ps, pt, img = torch.rand(1, 18, 256, 256), torch.rand(1, 18, 256, 256), torch.rand(1, 3, 256, 256)

        def run():
            with torch.no_grad():
                out = net(ps, pt, img)
                return ref(img, out.flow) if ref is not None else out
        params = sum(p.numel() for p in net.parameters()) + (sum(p.numel() for p in ref.parameters()) if ref else 0)
        return run, f"256x256, {params / 1e6:.1f} M params"
    if case == "part-flow":
        from posetransfer.core.flow_models.part_flow_net import PART_FLOW_PAPER_CONFIG, PartFlowNet
        net = PartFlowNet(**PART_FLOW_PAPER_CONFIG).eval()
        img, ps, pt = torch.rand(1, 3, 256, 256), torch.rand(1, 18, 256, 256), torch.rand(1, 18, 256, 256)

        def run():
            with torch.no_grad():
                return net(img, ps, pt)
        return run, f"256x256, {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params"
    raise SystemExit(f"unknown case {case!r}")


def run_one(case: str, repeats: int) -> dict:
    import torch
    fn, what = _build(case)
    reset_ok = _reset_peak()
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM")
    return dict(case=case, input=what, warmup_s=warm, time_s=statistics.median(times) if times else warm,
                peak_mb=(peak_kb - base_kb) / 1024, peak_reset=reset_ok, threads=torch.get_num_threads())


def _child(case: str, repeats: int, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", case, "--repeats", str(repeats)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(case=case, error=f"timed out after {timeout:.0f} s")
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return dict(case=case, error=f"exit {res.returncode}: {tail[:120]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated case names")
    ap.add_argument("--train", action="store_true", help="add the forward+backward correlation cases")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.repeats)))
        return
    cases = [c for c in args.cases.split(",") if c] + (list(TRAIN_CASES) if args.train else [])
    import torch
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch 1; median of {args.repeats} after a warm-up")
    rows = []
    for case in cases:
        r = _child(case, args.repeats, args.timeout)
        rows.append(r)
        if "error" in r:
            line = (case, "-", "-", "-", r["error"])
        else:
            line = (case, f"{r['time_s'] * 1000:.0f}", f"{r['warmup_s'] * 1000:.0f}", f"{r['peak_mb']:.0f}",
                    r["input"])
        if args.markdown:
            if len(rows) == 1:
                print("| case | time ms | warm-up ms | peak extra MiB | input |\n|---|---:|---:|---:|---|")
            print("| " + " | ".join(line) + " |")
        else:
            if len(rows) == 1:
                print(f"{'case':<24}{'time ms':>10}{'warm-up ms':>12}{'peak MiB':>10}  input")
            print(f"{line[0]:<24}{line[1]:>10}{line[2]:>12}{line[3]:>10}  {line[4]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
