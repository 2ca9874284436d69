"""What the training scripts share: the Accelerator, the run folder guard, checkpoints and resuming (the format:
:mod:`.checkpoints`), the epoch sampler, size arguments, the command-line entry point."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import checkpoints
from .checkpoints import CHECKPOINTS, Resumable, checkpoint_step, list_checkpoints  # noqa: F401

# What a training run writes into --output-dir (every script; --overwrite deletes these and nothing else).
RUN_FILES = (CHECKPOINTS, "model", "model.safetensors", "flow_model.safetensors", "train_log.jsonl",
             "train_log.csv", "logs")


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


def save_checkpoint(accelerator, out: Path, step: int, train_config: dict, export: Callable[[Path], None],
                    resumable: Resumable, keep: int | None = None) -> Path:
    """``OUT/checkpoints/checkpoint-STEP`` (:mod:`.checkpoints`: JSON + safetensors, written atomically by the main
    process; every process calls it): ``resumable``'s state, ``train_config.json`` and ``export(folder)``'s model
    files; only the newest ``keep`` checkpoints are kept (None or 0: all)."""
    return checkpoints.save(accelerator, out, step, train_config, export, resumable, keep)


def load_checkpoint(accelerator, folder: Path, resumable: Resumable, prog: str) -> int:
    """Restore ``resumable`` (and the loss scaler, the RNG states) from ``folder``; the step it was saved at."""
    try:
        return checkpoints.load(accelerator, folder, resumable, log=lambda msg: print(f"[{prog}] --resume: {msg}"))
    except checkpoints.CheckpointError as exc:
        raise ValueError(f"--resume: {exc}") from None


def read_train_config(folder: Path, kind: str) -> dict:
    """The ``train_config.json`` of the checkpoint ``--resume`` chose, checked to be of ``kind``."""
    try:
        return checkpoints.read_train_config(folder, kind)
    except checkpoints.CheckpointError as exc:
        raise ValueError(f"--resume: {exc}") from None


def needs_final_checkpoint(out: Path, step: int) -> bool:
    """True unless the newest checkpoint is already at ``step`` (the last step was a checkpoint step)."""
    found = list_checkpoints(out)
    return not found or checkpoint_step(found[-1]) != step or not checkpoints.is_complete(found[-1])


def cli_args(args: argparse.Namespace) -> dict:
    """The parsed arguments as recorded in ``train_config.json`` (without the sub-command function)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def resolve_resume(resume: str | None, out: Path, prog: str, verbose: bool = True) -> Path | None:
    """``--resume``: None, ``latest`` (the newest complete checkpoint of ``out``, None when the run has none; newer
    unfinished ones are skipped and named) or a checkpoint folder, verified against its manifest (a ValueError
    naming the file that does not match)."""
    if resume is None:
        return None
    log = (lambda msg: print(f"[{prog}] --resume latest: {msg}", flush=True)) if verbose else None
    try:
        if resume == "latest":
            return checkpoints.latest(out, log)
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume: {path}: no such checkpoint folder; expected "
                                    f"OUT/{CHECKPOINTS}/checkpoint-N or 'latest'")
        checkpoints.verify(path)
        return path
    except checkpoints.CheckpointError as exc:
        raise ValueError(f"--resume: {exc}") from None


def add_run_arguments(group) -> None:
    """``--overwrite`` (the run-folder guard's way out besides ``--resume``)."""
    group.add_argument("--overwrite", action="store_true",
                       help="--output-dir holds an earlier run: delete its files (checkpoints, model, logs) and "
                            "start a new run there (without it, or --resume, a non-empty --output-dir is refused)")


def start_run(accelerator, args, out: Path, prog: str) -> Path | None:
    """The run folder guard and ``--resume``: a new run (no ``--resume``) into a non-empty ``out`` is refused unless
    ``--overwrite``, which first deletes the files an earlier run wrote (:data:`RUN_FILES`; other files stay);
    returns the checkpoint to resume from (:func:`resolve_resume`). Every process checks before the main process
    creates or clears anything."""
    overwrite, resume = bool(getattr(args, "overwrite", False)), args.resume
    if overwrite and resume is not None:
        raise ValueError("--overwrite and --resume exclude each other (--overwrite deletes the run --resume "
                         "would continue)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output-dir {out}: exists and is not a folder")
    if resume is None and not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--output-dir {out}: not empty (an earlier run's files would be replaced or mixed "
                              f"in); pass --resume latest to continue that run, or --overwrite to delete its files "
                              f"and start a new one")
    path = resolve_resume(resume, out, prog, verbose=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if overwrite and out.is_dir():
            for name in RUN_FILES:
                target = out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
        out.mkdir(parents=True, exist_ok=True)
        if resume == "latest" and path is None:
            print(f"[{prog}] --resume latest: no checkpoint in {out / CHECKPOINTS}; starting at step 0", flush=True)
    accelerator.wait_for_everyone()
    return path


class StepCounter:
    """The optimisation step of a run (saved in the checkpoint's state.json)."""

    def __init__(self, step: int = 0):
        self.step = step


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
