"""Command line: ``posetransfer transfer | demo | detect | evaluate | dataset | render-pose | convert-pcdms |
train-flow`` (also ``python -m posetransfer``).

Every expected failure (a missing file, bad JSON, sizes that do not match, ...) prints one line
``posetransfer: error: ...`` on stderr and returns exit code 2; :func:`main` returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from . import __version__

PROG = "posetransfer"
SAMPLES = Path(__file__).resolve().parent / "samples"
DEFAULT_DEMO_DIR = os.path.join("outputs", "demo")


class CLIError(Exception):
    """An input problem reported as one line and exit code 2."""


# ------------------------------------------------------------------------------------------------ helpers

def _existing(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        what = "no such file" if not os.path.exists(path) else "not a file"
        raise CLIError(f"{flag}: {what}: {path}")
    return path


def _writable(path: str | None, flag: str) -> None:
    """Fail early (before any work) on an output name OpenCV cannot encode."""
    if path is None:
        return
    ext = os.path.splitext(path)[1]
    if not ext or not cv2.haveImageWriter(path):
        raise CLIError(f"{flag}: cannot write an image named {path!r}; expected an extension such as .png or .jpg")
    if os.path.isdir(path):
        raise CLIError(f"{flag}: {path} is a folder; expected an image file name")


def _read_poses(path: str, flag: str, default_size: tuple[int, int] | None = None):
    """OpenPose JSON (pixel or normalised, auto-detected) -> list of Pose; ``default_size=(h, w)`` is the
    canvas of frames that do not say theirs."""
    from .core.pose.formats import read_openpose_json

    _existing(path, flag)
    poses = read_openpose_json(path, default_size=default_size, what=f"{flag}: {path}")
    if not poses:
        raise CLIError(f"{flag}: {path}: expected at least one frame, got an empty list")
    return poses


def _numbered(path: str | None, index: int, count: int) -> str | None:
    """``OUT.png`` for a single frame, ``OUT_0000.png``, ``OUT_0001.png``, ... for several."""
    if path is None or count == 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}_{index:04d}{ext or '.png'}"


def _write_files(files: Sequence[tuple[str, np.ndarray]]) -> list[str]:
    """Write ``(path, encoded bytes)`` pairs all or none: each goes to a temporary name beside its path, and
    the names are switched only once every file is written. Returns the paths."""
    temps: list[str] = []
    try:
        for path, data in files:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".posetransfer-", suffix=os.path.splitext(path)[1], dir=parent)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data.tobytes())
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
    return [path for path, _ in files]


def _encoded(path: str, image) -> tuple[str, np.ndarray]:
    from .core.images import encode_image

    return path, encode_image(path, image)


class _FrameWriter:
    """Writes a sequence's frames as they are made (each frame's files all or none) and, when a later frame
    fails, says which frames are already on disk: the error line ends with them."""

    def __init__(self, count: int, echo: bool = True):
        self.count, self.echo, self.done, self.paths = count, echo, 0, []

    def write(self, files: Sequence[tuple[str, np.ndarray]]) -> None:
        for path in _write_files(files):
            if self.echo:
                print(path, flush=True)
            self.paths.append(path)
        self.done += 1

    def failed(self, exc: Exception) -> CLIError:
        msg = str(exc) or type(exc).__name__
        if self.done:
            msg += (f"; frames 0 to {self.done - 1} of {self.count} were written ({self.paths[0]} ... "
                    f"{self.paths[-1]}), the other {self.count - self.done} were not")
        return CLIError(msg)


def _chw_to_hwc(t) -> np.ndarray:
    return t.detach().cpu().permute(1, 2, 0).numpy()


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """uint8 / float RGB -> float32 RGB scaled to ``height`` (aspect kept)."""
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    if h == height:
        return img
    new_w = max(1, int(round(w * height / h)))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, height), interpolation=interp)


def make_panel(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Side by side, all scaled to the height of the last image, separated by ``gap`` white pixels."""
    height = images[-1].shape[0]
    tiles = [_fit_height(im, height) for im in images]
    spacer = np.ones((height, gap, 3), np.float32)
    parts = []
    for i, tile in enumerate(tiles):
        if i:
            parts.append(spacer)
        parts.append(tile)
    return np.concatenate(parts, axis=1)


@dataclass
class TransferOutputs:
    out: str
    mask_out: str | None = None
    flow_out: str | None = None
    panel_out: str | None = None


def run_transfer(source: np.ndarray, source_pose, target_poses, options, outputs: TransferOutputs,
                 estimator=None, names: tuple[str, str] = ("source_pose", "target_pose"), echo: bool = True
                 ) -> list[str]:
    """FlowWarp ``source`` into each target pose; write the result (and the optional pictures) frame by frame
    as each is made (a long pose sequence is never held in memory). Every input is checked before the first
    frame; each frame's files are written all or none. ``estimator``: the learned flow model of
    ``options.method`` (``single`` / ``structure``); ``names`` label the poses in error messages; ``echo``
    prints each path once written. Returns the paths written, in order; a failure after some frames raises a
    :class:`CLIError` that lists them."""
    from .core.warp.flowwarp import iter_flow_warp
    from .core.pose.render import render_skeleton

    n = len(target_poses)
    frames = iter_flow_warp([source], [source_pose], list(target_poses), options, estimator=estimator, names=names)
    writer = _FrameWriter(n, echo)
    try:
        for i in range(n):  # not enumerate(frames): its cached tuple would keep the last frame alive
            r = next(frames)
            image = _chw_to_hwc(r.image)
            mask = r.generate_mask.cpu().numpy()  # white = to generate
            files = [_encoded(_numbered(outputs.out, i, n), image)]
            if outputs.mask_out:
                files.append(_encoded(_numbered(outputs.mask_out, i, n), mask))
            if outputs.flow_out:
                flow = _chw_to_hwc(r.flow_image)
                files.append(_encoded(_numbered(outputs.flow_out, i, n), flow))
            if outputs.panel_out:
                panel = make_panel([source, render_skeleton(r.target_pose), image, mask])
                files.append(_encoded(_numbered(outputs.panel_out, i, n), panel))
            del r, image, mask
            writer.write(files)
    except (ValueError, OSError, cv2.error) as exc:
        raise writer.failed(exc) from None
    return writer.paths


# ------------------------------------------------------------------------------------------- subcommands

TRANSFER_METHODS = ("parts", "single", "structure", "pcdms", "pcdms-simplified", "repose")  # cli_methods: the last 4


def _load_flow_model(method: str, model: str | None):
    """``--method`` / ``--model`` -> None (``parts``, training-free) or the learned flow estimator of ``single`` /
    ``structure`` (a model saved by ``train-flow --model single`` / ``--model parts``). The model's kind is
    read from its files and must be the method's (:func:`.core.warp.flowwarp.check_flow_model`)."""
    from .core.warp.flowwarp import check_flow_model

    estimator = None
    if model is not None:
        from .core.flow_models.model_files import load_flow_model

        if not os.path.exists(model):
            raise CLIError(f"--model: no such file or folder: {model}")
        try:
            estimator = load_flow_model(model)
        except (ValueError, OSError) as exc:
            raise CLIError(f"--model: {exc}") from None
    check_flow_model(method, estimator, "--model" if model is None else f"--model {model}")
    return estimator


def _cmd_train_flow(args) -> int:
    from .training.train_flow import run

    return run(args)


def _cmd_transfer(args) -> int:
    from .cli_methods import route_transfer
    from .core.warp.flowwarp import FlowWarpOptions
    from .core.images import load_image

    routed = route_transfer(args)  # the diffusion methods run there; structure = parts with a part-flow --model
    if routed is not None:
        return routed
    for flag in ("out", "mask_out", "flow_out", "panel_out"):
        _writable(getattr(args, flag), "--" + flag.replace("_", "-"))
    src_path = _existing(args.source, "--source")
    if args.target_pose is None and args.target_image is None:
        raise CLIError("--target-pose: required (or --target-image with --detector)")
    if (args.source_pose is None or args.target_pose is None) and args.detector is None:
        raise CLIError("--detector: a pose model is needed to detect the poses not given as files "
                       "(--source-pose / --target-pose)")
    for flag in ("source_person", "target_person"):  # -1 would silently pick the last person
        if getattr(args, flag) < 0:
            raise CLIError(f"--{flag.replace('_', '-')}: expected a person index 0 or more (0 = first person), "
                           f"got {getattr(args, flag)}")
    estimator = _load_flow_model(args.method, args.model)
    source = load_image(src_path)
    size = source.shape[:2]
    detector = _build_detector(args) if args.detector else None
    if args.source_pose is not None:
        source_poses = _read_poses(args.source_pose, "--source-pose", default_size=size)
    else:
        source_poses = [detector.detect(source)]
    if len(source_poses) != 1:
        raise CLIError(f"--source-pose: {args.source_pose}: expected one frame (the source photo's pose), "
                       f"got {len(source_poses)}")
    if args.target_pose is not None:
        target_poses = _read_poses(args.target_pose, "--target-pose", default_size=size)
    else:
        target_poses = [detector.detect(load_image(_existing(args.target_image, "--target-image")))]
    options = FlowWarpOptions(method=args.method, segmentation=args.segmentation, background=args.background,
                              fill=args.fill, retarget=args.retarget, anchor=args.anchor,
                              source_person=args.source_person, target_person=args.target_person)
    names = (f"--source-pose {args.source_pose}: frame" if args.source_pose else "detected source pose",
             f"--target-pose {args.target_pose}: frame" if args.target_pose else "detected target pose")
    t0 = time.perf_counter()
    run_transfer(source, source_poses[0], target_poses, options,
                 TransferOutputs(args.out, args.mask_out, args.flow_out, args.panel_out), estimator, names)
    print(f"{len(target_poses)} frame(s) in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class DemoCase:
    name: str
    source: str
    target: str
    retarget: bool


DEMO_CASES = (
    DemoCase("fashion_standing_to_jumper_retargeted", "fashion_standing", "jumper", True),
    DemoCase("fashion_standing_to_jumper", "fashion_standing", "jumper", False),
    DemoCase("fashion_standing_to_model_red_background", "fashion_standing", "model_red_background", False),
    DemoCase("model_red_background_to_jumper_retargeted", "model_red_background", "jumper", True),
    # One character from a turnaround sheet (samples/turnaround): a turn to the side and a turn around.
    DemoCase("turnaround_front_to_side", "turnaround/turn_front", "turnaround/turn_side1", False),
    DemoCase("turnaround_side_to_back", "turnaround/turn_side1", "turnaround/turn_back", False),
    DemoCase("turnaround_back_to_front_walking", "turnaround/turn_back", "turnaround/turn_hero", False),
)


def _cmd_demo(args) -> int:
    from .core.warp.flowwarp import FlowWarpOptions
    from .core.images import load_image

    if not SAMPLES.is_dir():
        raise CLIError(f"demo: the bundled samples are missing ({SAMPLES}); reinstall the package")
    cases = DEMO_CASES[:args.only] if args.only else DEMO_CASES
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        source = load_image(_existing(str(SAMPLES / f"{case.source}.png"), "demo"))
        size = source.shape[:2]
        source_pose = _read_poses(str(SAMPLES / f"{case.source}.pose.json"), "demo", size)[0]
        target_poses = _read_poses(str(SAMPLES / f"{case.target}.pose.json"), "demo", size)[:1]
        options = FlowWarpOptions(retarget=case.retarget)
        base = out_dir / case.name
        written = run_transfer(source, source_pose, target_poses, options,
                               TransferOutputs(f"{base}.png", f"{base}_mask.png", f"{base}_flow.png",
                                               f"{base}_panel.png"), echo=False)
        label = f"{case.source} -> {case.target}'s pose" + (" (retargeted)" if case.retarget else "")
        print(f"{label}: {time.perf_counter() - t0:.2f} s")
        for path in written:
            print(f"  {path}")
    print(f"demo: {len(cases)} transfer(s) in {time.perf_counter() - total:.2f} s; panels are "
          f"source | target skeleton | result | mask (white = to generate)")
    return 0


def _build_detector(args):
    from .core.pose.detect import build_detector

    if args.detector == "mediapipe":
        return build_detector(None, None, args.threshold)
    _existing(args.detector, "--detector")
    if args.person_detector is not None:
        _existing(args.person_detector, "--person-detector")
    return build_detector(args.detector, args.person_detector, args.threshold)


def _cmd_detect(args) -> int:
    from .core.pose.detect import detect_pose_file

    _existing(args.image, "IMG")
    if args.detector is None:
        raise CLIError("--detector: required: a DWPose / RTMPose ONNX keypoint model (e.g. dw-ll_ucoco_384.onnx) "
                       "or 'mediapipe'")
    if os.path.isdir(args.out):
        raise CLIError(f"--out: {args.out} is a folder; expected a .json file name")
    pose = detect_pose_file(args.image, args.out, _build_detector(args), whole_image=args.person_detector is None)
    n = len(pose.people)
    print(f"{n} {'person' if n == 1 else 'people'} -> {args.out}")
    return 0


def _add_detector_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", metavar="POSE.onnx",
                   help="DWPose / RTMPose ONNX keypoint model (e.g. dw-ll_ucoco_384.onnx, as used by "
                        "comfyui_controlnet_aux) to detect poses on photos, or 'mediapipe' (needs the extra "
                        "posetransfer[mediapipe])")
    p.add_argument("--person-detector", metavar="YOLOX.onnx",
                   help="YOLOX ONNX person detector (e.g. yolox_l.onnx); without it the whole photo is one person")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="keypoint score below which a joint counts as missing (default 0.3)")


def _cmd_convert_pcdms(args) -> int:
    import torch

    from .core.pcdms import convert_pcdms

    if not os.path.exists(args.checkpoint):
        raise CLIError(f"IN.pt: no such file or folder: {args.checkpoint}")
    dtype = {"fp16": torch.float16, "fp32": torch.float32, None: None}[args.dtype]
    print(convert_pcdms(args.checkpoint, args.out_dir, args.kind, dtype=dtype, single_file=args.single_file))
    return 0


def _cmd_evaluate(args) -> int:
    from .core.evaluation.evaluate import evaluate_main

    return evaluate_main(args, detector=_build_detector(args) if args.detector else None) or 0


def _cmd_dataset(args) -> int:
    from .core.evaluation.datasets import dataset_main

    detector = _build_detector(args) if getattr(args, "detector", None) else None
    return dataset_main(args, detector=detector) or 0


def _cmd_render_pose(args) -> int:
    from .core.pose.render import render_skeleton

    _writable(args.out, "--out")
    poses = _read_poses(args.pose, "POSE")  # every frame checked (canvas size, joints) before the first is drawn
    writer = _FrameWriter(len(poses))
    try:
        for i, pose in enumerate(poses):
            writer.write([_encoded(_numbered(args.out, i, len(poses)), render_skeleton(pose))])
    except (ValueError, OSError, cv2.error) as exc:
        raise writer.failed(exc) from None
    return 0


# ---------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .core.warp.flowwarp import BACKGROUNDS, FlowWarpOptions
    from .core.warp.hole_fill import INPAINT_METHODS
    from .core.pose.retarget import ANCHORS
    from .core.body.segmentation import SEGMENTATION_METHODS

    parser = argparse.ArgumentParser(
        prog=PROG, description="Pose-guided person image synthesis (training-free FlowWarp) and pose tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "transfer", help="move the person of a photo into a target pose (FlowWarp)",
        description="Move the person of SRC into the pose of TGT by warping its pixels (FlowWarp). "
                    "Pose files are OpenPose JSON, pixel or normalised coordinates (auto-detected). A target "
                    "JSON holding several frames gives OUT_0000.png, OUT_0001.png, ...")
    t.add_argument("--source", required=True, metavar="SRC.png", help="source photo")
    t.add_argument("--source-pose", metavar="SRC.json",
                   help="OpenPose JSON of the source photo, or of a resized copy of it (rescaled; another "
                        "frame is refused) (omitted: detected with --detector)")
    t.add_argument("--target-pose", metavar="TGT.json",
                   help="OpenPose JSON of the target pose (one frame, or a list of frames)")
    t.add_argument("--target-image", metavar="TGT.png",
                   help="instead of --target-pose: a photo whose pose is detected with --detector")
    _add_detector_flags(t)
    t.add_argument("--out", required=True, metavar="OUT.png", help="result image")
    fw = FlowWarpOptions()  # one set of defaults: core's, the node's
    t.add_argument("--method", default=fw.method, choices=TRANSFER_METHODS,
                   help="parts: training-free, per body part; single (needs --model): a trained "
                        "single-spatial-transformation flow model; structure (needs --model): a trained "
                        f"structure-aware part-flow model (default: {fw.method})")
    t.add_argument("--model", metavar="PATH", default=None,
                   help="a learned flow model saved by 'posetransfer train-flow' (its OUT/model folder, a "
                        "checkpoint's model/ folder, or a --single-file .safetensors)")
    t.add_argument("--retarget", action=argparse.BooleanOptionalAction, default=fw.retarget,
                   help="keep the source person's bone lengths (the target's angles), on the source photo's canvas "
                        "(the output's); --no-retarget: the target pose exactly as given, on its canvas (dataset "
                        f"pose pairs) (default: {'on' if fw.retarget else 'off'})")
    t.add_argument("--anchor", default=fw.anchor, choices=ANCHORS,
                   help=f"with --retarget: where the retargeted pose stands (default: {fw.anchor})")
    t.add_argument("--segmentation", default=fw.segmentation, choices=SEGMENTATION_METHODS,
                   help=f"how the source person is cut out (default: {fw.segmentation})")
    t.add_argument("--background", default=fw.background, choices=BACKGROUNDS,
                   help="inpaint: remove the source person from the background; keep: leave the photo; "
                        f"black/white: plain background (default: {fw.background})")
    t.add_argument("--fill", default=fw.fill, choices=INPAINT_METHODS,
                   help="how the area the source person leaves is filled: mirror (the backdrop beside it "
                        f"mirrored in), pyramid (smooth) or telea (default: {fw.fill})")
    t.add_argument("--source-person", type=int, default=fw.source_person, metavar="I",
                   help="person index in the source pose")
    t.add_argument("--target-person", type=int, default=fw.target_person, metavar="I",
                   help="person index in the target pose")
    t.add_argument("--mask-out", metavar="MASK.png",
                   help="mask of the content FlowWarp had to make up (white = to generate, for inpainting)")
    t.add_argument("--flow-out", metavar="FLOW.png", help="colour picture of the backward flow")
    t.add_argument("--panel-out", metavar="PANEL.png",
                   help="side-by-side picture: source | target skeleton | result | mask")
    t.set_defaults(func=_cmd_transfer)
    from .cli_methods import add_generate_parser, add_method_arguments

    add_method_arguments(t)

    d = sub.add_parser("demo", help="run FlowWarp on the bundled sample photos",
                       description="FlowWarp on the bundled sample photos; writes result, mask, flow and "
                                   "panel PNGs for each transfer.")
    d.add_argument("--out", default=DEFAULT_DEMO_DIR, metavar="DIR",
                   help=f"output folder (default: {DEFAULT_DEMO_DIR})")
    d.add_argument("--only", type=int, default=0, metavar="N",
                   help=f"run only the first N of the {len(DEMO_CASES)} transfers")
    d.set_defaults(func=_cmd_demo)

    k = sub.add_parser("detect", help="detect the poses of the people in a photo -> OpenPose JSON (pixels)",
                       description="Detect people and their COCO-18 keypoints (plus hands and face with a "
                                   "whole-body model) with DWPose ONNX models; writes OpenPose JSON.")
    k.add_argument("image", metavar="IMG", help="photo")
    k.add_argument("--out", required=True, metavar="POSE.json", help="output OpenPose JSON")
    _add_detector_flags(k)
    k.set_defaults(func=_cmd_detect)

    c = sub.add_parser("convert-pcdms", help="convert an official PCDMs checkpoint to safetensors + config",
                       description="Read an official PCDMs checkpoint (DeepSpeed mp_rank_00_model_states.pt or "
                                   "its folder, PCDMs_ckpt.pt, fp16 or fp32; loaded with weights_only) and "
                                   "write a folder with config.json and safetensors weights.")
    c.add_argument("checkpoint", metavar="IN.pt", help="official checkpoint file or DeepSpeed folder")
    c.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    c.add_argument("--kind", choices=("prior", "inpaint", "refine", "simplified"), default=None,
                   help="checkpoint kind (default: worked out from the keys)")
    c.add_argument("--dtype", choices=("fp16", "fp32"), default=None,
                   help="weights' dtype in the output (default: as in the file)")
    c.add_argument("--single-file", action="store_true",
                   help="write one .safetensors file with the config in its metadata instead of a folder")
    c.set_defaults(func=_cmd_convert_pcdms)

    from .core.evaluation.datasets import add_dataset_arguments
    from .core.evaluation.evaluate import add_evaluate_arguments

    e = sub.add_parser("evaluate", help="score generated images against the ground truth as a paper measured",
                       description="SSIM, PSNR, L1, LPIPS, FID (and pose accuracy with --detector) with one "
                                   "paper's conventions (--profile). Writes per_image.csv and summary.json.")
    add_evaluate_arguments(e)
    _add_detector_flags(e)
    e.set_defaults(func=_cmd_evaluate)
    ds = sub.add_parser("dataset", help="build GFLA/PIDM annotation + pairs files; convert to/from PCDMs layout")
    add_dataset_arguments(ds, _add_detector_flags)
    ds.set_defaults(func=_cmd_dataset)

    r = sub.add_parser("render-pose", help="draw an OpenPose JSON as a ControlNet skeleton picture",
                       description="Draw the ControlNet (OpenPose) skeleton of every person. Several frames "
                                   "give SKELETON_0000.png, ...")
    r.add_argument("pose", metavar="POSE.json", help="OpenPose JSON (needs canvas_width / canvas_height)")
    r.add_argument("--out", required=True, metavar="SKELETON.png", help="output picture")
    r.set_defaults(func=_cmd_render_pose)

    from .training.train_flow import add_arguments as add_train_flow_arguments

    tf = sub.add_parser("train-flow", help="train a learned flow model (single | parts) on accelerate",
                        description="Train the single-spatial-transformation or the structure-aware part-flow "
                                    "model (same options as python -m posetransfer.training.train_flow; use "
                                    "'accelerate launch -m posetransfer.training.train_flow' for several GPUs).")
    add_train_flow_arguments(tf)
    tf.set_defaults(func=_cmd_train_flow)
    add_generate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed its message
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.func(args)
    except CLIError as exc:
        msg = str(exc)
    except (ValueError, OSError, cv2.error) as exc:
        msg = str(exc) or type(exc).__name__
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
