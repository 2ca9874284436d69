"""What the training scripts share: the Accelerator, checkpoint folders, resuming, the epoch sampler, size
arguments, the command-line entry point."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

CHECKPOINTS = "checkpoints"  # OUT/checkpoints/checkpoint-N: accelerate state + train_config.json + weights


def make_accelerator(**kwargs):
    """``accelerate.Accelerator(**kwargs)``: the one place where each training script builds its Accelerator
    (scripts call it as ``common.make_accelerator`` so that a test can wrap it, e.g. to attach a CPU GradScaler and
    exercise the fp16 path that accelerate only sets up on GPUs)."""
    from accelerate import Accelerator

    return Accelerator(**kwargs)


def check_diffusion_args(args) -> None:
    """The step and batch arguments the diffusion scripts share, checked before anything is built."""
    if args.batch_size < 1 or args.max_steps < 0 or args.gradient_accumulation_steps < 1:
        raise ValueError("--batch-size and --gradient-accumulation-steps must be >= 1, --max-steps >= 0")
    if not 0 <= args.cond_drop_prob <= 1:
        raise ValueError(f"--cond-drop-prob: expected 0..1, got {args.cond_drop_prob}")


def run_with_accelerator(args, out: Path, run: Callable[[object], dict], logs: bool = False, **kwargs) -> dict:
    """``run(accelerator)`` with the Accelerator every script builds (``--mixed-precision``, ``--cpu``, the output
    folder as project dir (``logs``: with ``OUT/logs``), ``--gradient-accumulation-steps`` counted per call, not per
    dataloader, plus ``kwargs``); then training ends, and in a single process accelerate's global state is reset so
    that a later in-process run can build its own Accelerator."""
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs") if logs else None)
    accelerator = make_accelerator(
        mixed_precision=args.mixed_precision, cpu=args.cpu, project_config=project,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps,
                                                                sync_with_dataloader=False), **kwargs)
    try:
        return run(accelerator)
    finally:
        accelerator.end_training()
        if accelerator.num_processes == 1:
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(True)
            GradientState._reset_state()


def plain_forward(accelerator, *models) -> None:
    """Undo accelerate's per-model autocast + fp32-output wrapper on prepared models (it rebuilds diffusers'
    ``BaseOutput`` dataclasses wrongly); the scripts run each whole step, losses included, under
    ``accelerator.autocast()`` instead."""
    for m in models:
        accelerator.unwrap_model(m, keep_fp32_wrapper=False)


def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` folder, else None."""
    try:
        return int(path.name.split("-", 1)[1]) if path.name.startswith("checkpoint-") else None
    except ValueError:
        return None


def list_checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    root = out / CHECKPOINTS
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None] if root.is_dir() else []
    return sorted(found, key=checkpoint_step)


def save_checkpoint(accelerator, out: Path, step: int, train_config: dict, export: Callable[[Path], None],
                    keep: int | None = None) -> Path:
    """``OUT/checkpoints/checkpoint-STEP``: the accelerate state (every process), then on the main process
    ``train_config.json`` (``train_config``) and ``export(folder)``'s model files; only the newest
    ``keep`` checkpoints are kept (None or 0: all)."""
    path = out / CHECKPOINTS / f"checkpoint-{step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "train_config.json").write_text(
            json.dumps(train_config, indent=2, default=str) + "\n", encoding="utf-8")
        export(path)
        if keep is not None and keep > 0:
            for old in list_checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def needs_final_checkpoint(out: Path, step: int) -> bool:
    """True unless the newest checkpoint is already at ``step`` (the last step was a checkpoint step)."""
    latest = list_checkpoints(out)
    return not latest or checkpoint_step(latest[-1]) != step


def cli_args(args: argparse.Namespace) -> dict:
    """The parsed arguments as recorded in ``train_config.json`` (without the sub-command function)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def resolve_resume(resume: str | None, out: Path, prog: str) -> Path | None:
    """``--resume``: None, ``latest`` (the newest checkpoint of ``out``, None when there is none) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(out)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "train_config.json").is_file():
        raise FileNotFoundError(f"--resume: {path} is not a {prog} checkpoint (no train_config.json); "
                                f"expected OUT/{CHECKPOINTS}/checkpoint-N or 'latest'")
    return path


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from ``(seed, epoch)``: resuming mid-epoch replays the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for ``HxW`` (e.g. 256x176) -> ``(h, w)``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 256x176, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected a positive HxW, got {text!r}")
    return h, w


def append_jsonl(path: Path, record: dict) -> None:
    """Append ``record`` as one JSON line (the training logs)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (left by a run that went on past the checkpoint it resumes from)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def run_main(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
             argv: Sequence[str] | None = None) -> int:
    """A training script's ``main``: parse ``argv``, ``run(args)``; the exit code (``run``'s int result, else 0;
    2 with one ``PROG: error:`` line for bad input; 130 when interrupted)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, usage errors: argparse has printed its message
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        code = run(args)
        return code if isinstance(code, int) else 0
    except (ValueError, OSError, TypeError) as exc:
        msg = str(exc) or type(exc).__name__
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(f"{prog}: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2
