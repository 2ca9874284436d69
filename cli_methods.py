"""Command-line parts for the diffusion methods and whole test sets: ``transfer --method pcdms | pcdms-simplified |
repose | structure`` and ``posetransfer generate``. Both run :func:`.core.transfer.transfer`, the entry the nodes'
core functions and Python share; :mod:`.cli` dispatches here.

Errors are ValueError / OSError with the flag named first: :func:`.cli.main` prints them as one line
``posetransfer: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DIFFUSION_METHODS = ("pcdms", "pcdms-simplified", "repose")
METHODS = ("parts", "single", "structure") + DIFFUSION_METHODS
DTYPES = ("float32", "float16", "bfloat16")


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """The model paths and sampling settings of the diffusion methods (``transfer`` and ``generate``)."""
    from .core.pcdms.image_layout import LAYOUT_MODES
    from .core.repose.transfer import GUIDANCE_TARGETS
    from .core.schedulers import SCHEDULER_CHOICES

    g = p.add_argument_group("diffusion methods (pcdms, pcdms-simplified, repose)")
    g.add_argument("--prior", metavar="CKPT", help="pcdms: stage 1 prior (the released .pt, or a converted file / "
                                                   "folder); without it the source photo's CLIP embedding stands in")
    g.add_argument("--inpaint", metavar="CKPT", help="pcdms: stage 2 inpaint checkpoint")
    g.add_argument("--refine", metavar="CKPT", help="pcdms: stage 3 refine checkpoint (without it: stage 2's output)")
    g.add_argument("--simplified", metavar="CKPT", help="pcdms-simplified: PCDMs_ckpt.pt (or converted)")
    g.add_argument("--repose", metavar="DIR", help="repose: a model folder written by train_repose (OUT/model)")
    g.add_argument("--clip", metavar="DIR", help="local transformers folder of CLIP ViT-H/14 (pcdms)")
    g.add_argument("--dino", metavar="DIR", help="local transformers folder of DINOv2-giant (pcdms, simplified)")
    g.add_argument("--vae", metavar="DIR", help="local diffusers AutoencoderKL folder (or a model folder with vae/)")
    g.add_argument("--pose-guidance", metavar="HRNET.pth",
                   help="RePoseDM pose gradient guidance with this HigherHRNet checkpoint (W32 / W48, or a NAME.json "
                        "config beside it)")
    g.add_argument("--guidance-scale", type=float, default=1.0, metavar="ETA",
                   help="pose guidance strength (default 1, the paper's eq 15)")
    g.add_argument("--guidance-threshold", type=float, default=0.1, metavar="T",
                   help="joint-heatmap threshold of pose guidance's weight W_h (default 0.1, the paper)")
    g.add_argument("--guidance-target", default="skeleton", choices=GUIDANCE_TARGETS,
                   help="what pose guidance compares with (keypoints: repose only; default skeleton)")
    g.add_argument("--seed", type=int, default=42, help="random seed (default 42, as the official scripts)")
    g.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: pcdms 20 per stage, simplified 50, repose 50)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 2; repose: w_c)")
    g.add_argument("--scheduler", default="default", choices=SCHEDULER_CHOICES,
                   help="sampler, ComfyUI's names (default: the method's own: uni_pc_bh2 for PCDMs stages 2/3, "
                        "ddim for the simplified model, ddpm for repose)")
    g.add_argument("--layout", default=None, choices=LAYOUT_MODES,
                   help="PCDMs frame: pad (keep the aspect ratio; default) or squash (the official code)")
    g.add_argument("--resolution", type=int, default=None,
                   help="PCDMs frame side (default 512); repose: working-frame height (default 256)")
    g.add_argument("--official", action="store_true",
                   help="PCDMs exactly as the released code ran: squash to 512, its random-draw order, its dtypes "
                        "per part (fp16 UNet with fp32 pose encoder / image projection, ...)")
    g.add_argument("--half", default="float16", choices=("float16", "bfloat16"),
                   help="with --official: the 16-bit type (bfloat16 where float16 kernels are missing)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="weights' dtype without --official (default fp32)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _check_paths(args) -> None:
    if args.official and args.method not in ("pcdms", "pcdms-simplified"):
        raise ValueError(f"--official: only PCDMs has released code to follow, not --method {args.method}")
    for flag in ("prior", "inpaint", "refine", "simplified", "repose", "clip", "dino", "vae", "pose_guidance",
                 "model"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"--{flag.replace('_', '-')}: no such file or folder: {path}")
    needed = {"pcdms": ("inpaint", "clip", "dino", "vae"), "pcdms-simplified": ("simplified", "dino", "vae"),
              "repose": ("repose", "vae"), "single": ("model",), "structure": ("model",)}.get(args.method, ())
    missing = [f"--{n}" for n in needed if getattr(args, n, None) is None]
    if missing:
        raise ValueError(f"{missing[0]}: --method {args.method} needs {', '.join(missing)}")
    if args.official and (args.layout is not None or args.resolution is not None or args.dtype is not None):
        raise ValueError("--official: sets the layout, resolution and dtypes itself; leave --layout, --resolution "
                         "and --dtype out")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected 1 or more, got {args.steps}")


def load_method(args):
    """The models of ``args.method`` from the command line's paths (:func:`.core.transfer.load_models`)."""
    import torch

    from .core.transfer import load_models

    _check_paths(args)
    model = {"pcdms-simplified": args.simplified, "repose": args.repose}.get(args.method, getattr(args, "model", None))
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    return load_models(args.method, model=model, prior=args.prior, inpaint=args.inpaint, refine=args.refine,
                       clip=args.clip, dino=args.dino, vae=args.vae, pose_guidance=args.pose_guidance,
                       device=args.device, dtype=dtype, official=args.official, half=getattr(torch, args.half))


def _settings(args, samples: int) -> dict:
    return dict(seed=args.seed, steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, layout=args.layout,
                resolution=args.resolution, samples=samples, official=args.official,
                guidance_scale=args.guidance_scale, guidance_threshold=args.guidance_threshold,
                guidance_target=args.guidance_target)


def route_transfer(args) -> int | None:
    """``transfer`` for the methods that FlowWarp's path does not run: the diffusion methods (handled here; returns
    the exit code); None for the FlowWarp methods, which the FlowWarp path runs."""
    if args.method not in DIFFUSION_METHODS:
        return None
    from .cli import _numbered, _read_poses, _writable
    from .core.images import load_image, save_image
    from .core.transfer import transfer

    _writable(args.out, "--out")
    if not os.path.isfile(args.source):
        raise FileNotFoundError(f"--source: no such file: {args.source}")
    if args.target_pose is None:
        raise ValueError(f"--target-pose: required with --method {args.method}")
    if args.source_pose is None and args.method != "repose":
        raise ValueError(f"--source-pose: required with --method {args.method}")
    models = load_method(args)
    source = load_image(args.source)
    size = source.shape[:2]
    source_poses = None if args.source_pose is None else _read_poses(args.source_pose, "--source-pose", size)
    if source_poses is not None and len(source_poses) != 1:
        raise ValueError(f"--source-pose: {args.source_pose}: expected one frame (the source photo's pose), got "
                         f"{len(source_poses)}")
    target_poses = _read_poses(args.target_pose, "--target-pose", size)
    t0 = time.perf_counter()
    images = transfer(source, source_poses, target_poses, args.method, models=models, **_settings(args, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for i, image in enumerate(images):
        path = _numbered(args.out, i, len(images))
        save_image(path, image)
        print(path)
    print(f"{len(images)} image(s) in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ generate
def add_generate_parser(sub) -> None:
    from .training.common import parse_size

    g = sub.add_parser(
        "generate", help="generate every pair of a dataset pairs file (any method), for evaluate",
        description="One image per pair of a pairs file (GFLA/PIDM CSV with its annotation CSV, or PCDMs JSON with "
                    "its pose .txt folder), named S_to_T.png as 'evaluate' pairs them. Resumable (pairs already "
                    "written are skipped); --samples N writes N sample folders for 'evaluate --best-of N'.")
    g.add_argument("--method", required=True, choices=METHODS, help="the method (model flags as for 'transfer')")
    g.add_argument("--pairs", required=True, metavar="PAIRS.csv|.json", help="pairs file (GFLA/PIDM CSV or PCDMs JSON)")
    g.add_argument("--images", required=True, metavar="DIR", help="folder of the images the pairs name")
    g.add_argument("--annotations", metavar="CSV", help="GFLA/PIDM annotation CSV of the images' keypoints")
    g.add_argument("--poses", metavar="DIR", help="PCDMs layout: folder of pose .txt files (NAME.txt per image)")
    g.add_argument("--annotation-size", metavar="HxW", type=parse_size,
                   help="frame of the keypoints (default: each image's size); another aspect ratio is centred in "
                        "the image, e.g. 256x176 for DeepFashion images stored 256x256")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--samples", type=int, default=1, metavar="N",
                   help="samples per pair (N > 1: OUT/sample_00 ... for evaluate --best-of N)")
    g.add_argument("--limit", type=int, default=None, metavar="K", help="only the first K pairs")
    g.add_argument("--model", metavar="PATH", help="single / structure: a trained flow model (train-flow's OUT/model)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_method_arguments(g)
    g.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from .core.generate import generate
    from .core.transfer import transfer

    if args.samples < 1:
        raise ValueError(f"--samples: expected 1 or more, got {args.samples}")
    if args.method in ("parts", "single", "structure") and args.samples != 1:
        raise ValueError(f"--samples: --method {args.method} is deterministic; use --samples 1")
    models = load_method(args)
    # FlowWarp on dataset pairs: the targets are ground-truth poses, used as given (no retargeting)
    settings = ({"retarget": False} if args.method in ("parts", "single", "structure")
                else _settings(args, args.samples))

    def run(image, source_pose, target_pose):
        return transfer(image, source_pose, target_pose, args.method, models=models, **settings)

    report = generate(args.pairs, args.images, args.out, run, annotations=args.annotations, poses_dir=args.poses,
                      annotation_size=args.annotation_size, samples=args.samples, limit=args.limit, progress=not args.quiet)
    print(f"generate: {report.written} pair(s) written, {report.skipped} already there, of {report.total}, in "
          f"{report.seconds:.1f} s -> {args.out}")
    return 0
