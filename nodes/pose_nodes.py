"""Pose nodes: load OpenPose keypoints, draw them, retarget them, pick one person.

``POSE_KEYPOINT`` is comfyui_controlnet_aux's type: a list of frame dicts
``{"people": [{"pose_keypoints_2d": [x, y, c, ...], ...}], "canvas_width": W, "canvas_height": H}``.
Inputs may be pixel or normalised (0..1, detected per frame); outputs are always in PIXELS.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..core.pose.geometry import fit_pose
from ..core.images import images_to_tensor
from ..core.pose.keypoints import Pose, check_has_pose
from ..core.pose.formats import dump_pose_keypoint, read_openpose_json
from ..core.pose.render import render_skeleton
from ..core.pose.retarget import ANCHORS, retarget_pose
from . import bridge
from .checks import poses as _poses

CATEGORY = "posetransfer/pose"
NO_FILE = "(none)"
POSE_TOOLTIP = ("OpenPose keypoints (POSE_KEYPOINT, e.g. from the DWPose / OpenPose preprocessors of "
                "comfyui_controlnet_aux): one frame dict per image, pixel or normalised coordinates.")


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _json_files(folder: str) -> list[str]:
    """Sorted ``*.json`` file names directly in ``folder`` whose real file is inside it (none when it does not
    exist)."""
    if not os.path.isdir(folder):
        return []
    root = os.path.realpath(folder)
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(".json") and os.path.isfile(os.path.join(folder, f))
                  and _inside(root, os.path.realpath(os.path.join(folder, f))))


def _input_file(name: str) -> str:
    """Real path of ``name`` inside the input folder; ValueError when it, or the file a symlink leads to,
    lies outside (a link in the input folder must not expose other files of the server)."""
    root = os.path.realpath(bridge.input_directory())
    path = os.path.realpath(os.path.join(root, name))
    if not _inside(root, path):
        raise ValueError(f"pose_file: expected a file inside the input folder {root}, got {name!r}"
                         + (f" (it leads to {path})" if os.path.exists(path) else ""))
    return path


class PoseTransferLoadPose:
    """OpenPose JSON keypoints from a file in the input folder, or pasted JSON text (which wins)."""

    DESCRIPTION = ("Load OpenPose JSON keypoints (a frame dict, or a list of them) from a .json file in ComfyUI's "
                   "input folder, or from pasted JSON text. Outputs POSE_KEYPOINT in pixels, compatible with "
                   "comfyui_controlnet_aux, and the first frame's canvas size.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("POSE_KEYPOINT", "INT", "INT")
    RETURN_NAMES = ("pose_keypoint", "width", "height")
    OUTPUT_TOOLTIPS = ("The keypoints, one frame dict per frame, in pixel coordinates.",
                       "Canvas width of the first frame, in pixels.",
                       "Canvas height of the first frame, in pixels.")

    @classmethod
    def INPUT_TYPES(cls):
        files = _json_files(bridge.input_directory())
        return {"required": {
            "pose_file": ([NO_FILE] + files, {
                "tooltip": "A .json keypoint file in ComfyUI's input folder (OpenPose format: 'people' with "
                           "'pose_keypoints_2d', 'canvas_width', 'canvas_height'). Ignored when pose_json is "
                           "not empty."}),
            "pose_json": ("STRING", {
                "multiline": True, "default": "",
                "tooltip": "Pasted OpenPose JSON (a frame dict or a list of them). When not empty it is used "
                           "instead of pose_file."}),
        }}

    @classmethod
    def IS_CHANGED(cls, pose_file, pose_json="", **_):
        digest = hashlib.sha256(str(pose_json).encode("utf-8"))
        if pose_file != NO_FILE:
            try:
                with open(_input_file(pose_file), "rb") as f:
                    digest.update(f.read())
            except (OSError, ValueError):
                digest.update(b"<missing>")
        return digest.hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, pose_file):
        if pose_file == NO_FILE:
            return True
        try:
            path = _input_file(pose_file)
        except ValueError as exc:
            return str(exc)
        if not os.path.isfile(path):
            return f"pose_file: expected a .json file in the input folder, got {pose_file!r} (not found at {path})"
        return True

    def load(self, pose_file, pose_json=""):
        if isinstance(pose_json, str) and pose_json.strip():
            poses = _poses(pose_json, "pose_json")
        elif pose_file and pose_file != NO_FILE:
            path = _input_file(pose_file)
            if not os.path.isfile(path):
                raise ValueError(f"pose_file: expected a .json file in the input folder, got {pose_file!r} "
                                 f"(not found at {path})")
            what = f"pose_file {pose_file!r}"
            poses = read_openpose_json(path, what=what)
            if not poses:
                raise ValueError(f"{what}: expected at least one frame, got an empty list")
        else:
            raise ValueError("pose_json / pose_file: expected pasted JSON text or a .json file from the input "
                             "folder, got neither")
        return dump_pose_keypoint(poses), poses[0].width, poses[0].height


def _on_canvas(pose: Pose, width: int, height: int) -> Pose:
    """``pose`` stretched onto a ``width`` x ``height`` canvas (each axis scaled on its own), pixel centres
    mapped as :mod:`..core.pose.geometry` says (``x -> (x + 0.5) * width / W - 0.5``)."""
    if (pose.width, pose.height) == (width, height):
        return pose
    return fit_pose(pose, width, height, "stretch")


class PoseTransferRenderPose:
    """Draw keypoints as ControlNet OpenPose skeleton images."""

    DESCRIPTION = ("Draw every frame's people as a ControlNet / controlnet_aux OpenPose skeleton on black: the "
                   "picture an OpenPose ControlNet expects. Frames whose canvas differs from the first frame's "
                   "are stretched to the first frame's canvas.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("One skeleton image per frame, all on the first frame's canvas size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pose_keypoint": ("POSE_KEYPOINT", {
                "tooltip": POSE_TOOLTIP + " Frames with another canvas size are stretched to the first frame's."}),
            "stick_scaling": ("BOOLEAN", {
                "default": True,
                "tooltip": "Widen limbs on canvases of 500 px and more (controlnet_aux's xinsr stick scaling). "
                           "Off gives controlnet_aux's default thin sticks."}),
        }}

    def render(self, pose_keypoint, stick_scaling=True):
        poses = _poses(pose_keypoint, "pose_keypoint")
        width, height = poses[0].width, poses[0].height  # within the size limit: Pose checks it
        bar = bridge.ProgressBar(len(poses))
        images = []
        for pose in poses:
            bridge.check_interrupt()
            images.append(render_skeleton(_on_canvas(pose, width, height), stick_scaling=bool(stick_scaling)))
            bar.update(1)
        return (images_to_tensor(np.stack(images)),)


class PoseTransferRetargetPose:
    """Give the source person the target's pose, keeping the source's bone lengths."""

    DESCRIPTION = ("Retarget: each output frame is the target person's pose drawn with the source person's bone "
                   "lengths, on the source canvas. One source frame with N target frames (a motion), or N with N.")
    CATEGORY = CATEGORY
    FUNCTION = "retarget"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("One frame per target frame, one person each, in pixels of the source canvas.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "source_pose": ("POSE_KEYPOINT", {
                "tooltip": "The person whose body (bone lengths) and canvas are kept: 1 frame, or as many "
                           "frames as target_pose."}),
            "target_pose": ("POSE_KEYPOINT", {"tooltip": "The pose(s) to take the joint angles from: N frames."}),
            "anchor": (list(ANCHORS), {
                "default": "source",
                "tooltip": "source: the result stands where the source person stands (mid-hip, else neck). "
                           "target: it stands where the target person stands (the target fitted onto the "
                           "source canvas)."}),
            "source_person": ("INT", {"default": 0, "min": 0, "max": 1000,
                                      "tooltip": "Which person of each source frame (0 = first)."}),
            "target_person": ("INT", {"default": 0, "min": 0, "max": 1000,
                                      "tooltip": "Which person of each target frame (0 = first)."}),
        }}

    def retarget(self, source_pose, target_pose, anchor="source", source_person=0, target_person=0):
        sources = _poses(source_pose, "source_pose")
        targets = _poses(target_pose, "target_pose")
        if len(sources) not in (1, len(targets)):
            raise ValueError(f"source_pose: expected 1 frame or as many frames as target_pose ({len(targets)}), "
                             f"got {len(sources)}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor: expected one of {ANCHORS}, got {anchor!r}")
        bar = bridge.ProgressBar(len(targets))
        out = []
        for i, target in enumerate(targets):
            bridge.check_interrupt()
            si = 0 if len(sources) == 1 else i
            sources[si].person(source_person, f"source_pose[{si}] (source_person)")
            check_has_pose(target.person(target_person, f"target_pose[{i}] (target_person)"),
                           f"target_pose[{i}] (target_person {target_person})")
            try:
                out.append(retarget_pose(sources[si], target, anchor, source_person, target_person))
            except ValueError as exc:
                raise ValueError(f"source_pose[{si}] / target_pose[{i}]: {exc}") from None
            bar.update(1)
        return (dump_pose_keypoint(out),)


class PoseTransferSelectPerson:
    """Keep one person per frame."""

    DESCRIPTION = ("Keep one person per frame: the one at 'index', or the largest (biggest bounding box of its "
                   "detected body joints). Frames without people are an error.")
    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("The same frames with exactly one person each, in pixels.",)
    MODES = ("index", "largest")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": POSE_TOOLTIP}),
            "mode": (list(cls.MODES), {
                "default": "index",
                "tooltip": "index: the person at 'index' in every frame. largest: the person whose detected "
                           "body joints span the largest bounding box area (index is ignored)."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 1000,
                              "tooltip": "Person to keep in mode 'index' (0 = first in the file)."}),
        }}

    def select(self, pose_keypoint, mode="index", index=0):
        if mode not in self.MODES:
            raise ValueError(f"mode: expected one of {self.MODES}, got {mode!r}")
        out = []
        for i, pose in enumerate(_poses(pose_keypoint, "pose_keypoint")):
            if not pose.people:
                raise ValueError(f"pose_keypoint[{i}]: expected at least one person, got a frame with no people")
            if mode == "largest":
                person = pose.largest_person(f"pose_keypoint[{i}]")
            else:
                person = pose.person(index, f"pose_keypoint[{i}] (index)")
            out.append(Pose([person.copy()], pose.width, pose.height, dict(pose.extra)))
        return (dump_pose_keypoint(out),)


NODE_CLASS_MAPPINGS = {
    "PoseTransferLoadPose": PoseTransferLoadPose,
    "PoseTransferRenderPose": PoseTransferRenderPose,
    "PoseTransferRetargetPose": PoseTransferRetargetPose,
    "PoseTransferSelectPerson": PoseTransferSelectPerson,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseTransferLoadPose": "Load Pose (posetransfer)",
    "PoseTransferRenderPose": "Render Pose (posetransfer)",
    "PoseTransferRetargetPose": "Retarget Pose (posetransfer)",
    "PoseTransferSelectPerson": "Select Person (posetransfer)",
}
