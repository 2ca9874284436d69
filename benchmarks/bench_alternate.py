"""Compare FlowWarp's CPU time between versions of the code, with their calls interleaved in the same seconds.

On a shared machine the load changes from minute to minute, so tables from separate runs (bench_flowwarp.py
old, then new) differ by more than the change being measured. Here one worker process per version stays
alive; the parent asks each in turn for one timed call (old, new, old, new, ...), so every version sees
the same load. Each worker uses its own version's ``benchmarks/bench_flowwarp.py`` workload (fashion_standing
-> the jumper pose at HxW, retarget on, defaults) and its own package::

    git worktree add --detach /tmp/old fcfc0a5 && mkdir -p /tmp/oldpkg && ln -sfn /tmp/old /tmp/oldpkg/posetransfer
    python benchmarks/bench_alternate.py --code old=/tmp/oldpkg --code new=.  [--repeats 30] [--threads 1]

``--code NAME=DIR``: DIR is a folder whose ``posetransfer`` is the package, or a checkout itself (``.``: this
one). Prints, per version, the median and min wall ms of ``flow_warp`` (one photo), ``prepare_source`` and
``warp_prepared``, and CPU ms of ``flow_warp``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("flow_warp", "prepare_source", "warp_prepared")

WORKER = r"""
import importlib.util, json, sys, time
threads, height, width = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
import torch
torch.set_num_threads(threads)
import posetransfer
from pathlib import Path
root = Path(posetransfer.__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_flowwarp", root / "benchmarks" / "bench_flowwarp.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
try:
    from posetransfer.core.warp import flowwarp
except ImportError:  # the layout before core/warp
    from posetransfer.core import flowwarp
images, sources, targets = bench.build_workload(height, width, 1, "1->N")
options = flowwarp.FlowWarpOptions(retarget=True)
prepared = flowwarp.prepare_source(images[0], sources[0], options)
calls = {
    "flow_warp": lambda: flowwarp.flow_warp(images, sources, targets[:1], options),
    "prepare_source": lambda: flowwarp.prepare_source(images[0], sources[0], options),
    "warp_prepared": lambda: flowwarp.warp_prepared(prepared, targets[0], options),
}
for call in calls.values():  # warm-up
    call()
print(json.dumps({"ready": str(root)}), flush=True)
for line in sys.stdin:
    stage = line.strip()
    wall, cpu = time.perf_counter(), time.process_time()
    calls[stage]()
    print(json.dumps({"wall_ms": 1e3 * (time.perf_counter() - wall), "cpu_ms": 1e3 * (time.process_time() - cpu)}),
          flush=True)
"""


def parse_code(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--code: expected NAME=DIR, got {text!r}")
    path = Path(folder).resolve()
    if (path / "posetransfer" / "__init__.py").is_file():
        return name, path
    if (path / "__init__.py").is_file() and (path / "core").is_dir():  # a checkout: link it as posetransfer
        link_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_alternate_{name}"
        link_dir.mkdir(parents=True, exist_ok=True)
        link = link_dir / "posetransfer"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path, target_is_directory=True)
        return name, link_dir
    raise argparse.ArgumentTypeError(f"--code {name}: {path} holds neither posetransfer/ nor a checkout of it")


def start(folder: Path, threads: int, size: tuple[int, int]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(folder), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(size[0]), str(size[1])], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(folder))
    ready = proc.stdout.readline()
    if not ready:
        raise RuntimeError(f"worker for {folder} failed to start (see its error above)")
    return proc


def ask(proc: subprocess.Popen, stage: str) -> dict:
    proc.stdin.write(stage + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=parse_code, action="append", required=True, help="NAME=DIR (two or more)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per version and stage (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    ap.add_argument("--size", default="512x352", help="HxW canvas (default 512x352)")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    workers = {name: start(folder, args.threads, (h, w)) for name, folder in args.code}
    times = {name: {s: [] for s in STAGES} for name in workers}
    cpu = {name: [] for name in workers}
    try:
        for _ in range(args.repeats):
            for stage in STAGES:
                for name, proc in workers.items():  # interleaved: every version sees the same load
                    r = ask(proc, stage)
                    times[name][stage].append(r["wall_ms"])
                    if stage == "flow_warp":
                        cpu[name].append(r["cpu_ms"])
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.size}, {args.threads} thread(s), {args.repeats} interleaved calls per stage, load {load:.1f}: "
          f"median (min) wall ms")
    print("| code | flow_warp | flow_warp CPU | prepare_source | warp_prepared |")
    print("|---|---:|---:|---:|---:|")
    for name in workers:
        cells = [f"{statistics.median(times[name][s]):.1f} ({min(times[name][s]):.1f})" for s in STAGES]
        print(f"| {name} | {cells[0]} | {statistics.median(cpu[name]):.1f} | {cells[1]} | {cells[2]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
