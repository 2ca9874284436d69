"""Pose detection node: photos -> POSE_KEYPOINT (pixels), with the DWPose ONNX files on onnxruntime.

A thin wrapper over :class:`..core.pose.detect.PoseDetector`. The ONNX files are listed from the posetransfer model
folder (``models/posetransfer``): copy or link ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` there (the files
comfyui_controlnet_aux's DWPose preprocessor downloads into its own ``ckpts`` folder).
"""

from __future__ import annotations

import os

from ..core.pose.detect import DEFAULT_SCORE_THRESHOLD, DETECT_MODES, PoseDetector
from ..core.images import tensor_to_images
from ..core.pose.formats import dump_pose_keypoint
from . import bridge
from .checks import IMAGE_NOTE
from .loaded_models import file_stamp

CATEGORY = "posetransfer/pose"
NO_FILE = "(none)"
ONNX = {".onnx"}

_CACHE: dict = {}  # (detector path, pose path, their mtimes and sizes) -> PoseDetector; holds the last one


def _onnx_files() -> list[str]:
    return bridge.list_model_files(ONNX)


def _default(files: list[str], hints: tuple[str, ...]) -> str:
    for hint in hints:
        for name in files:
            if hint in os.path.basename(name).lower():
                return name
    return files[0]


def _detector(detector_path: str | None, pose_path: str) -> PoseDetector:
    """The PoseDetector for these files, kept between runs (sessions take a while to load)."""
    det_key, pose_key = file_stamp(detector_path), file_stamp(pose_path)
    for (cached_det, cached_pose), detector in _CACHE.items():
        if cached_pose == pose_key and (det_key is None or cached_det == det_key):
            return detector  # whole-image runs reuse a loaded detector whatever its YOLOX file
    _CACHE.clear()
    _CACHE[(det_key, pose_key)] = detector = PoseDetector(detector_path, pose_path)
    return detector


class PoseTransferPoseDetect:
    """Detect the people in each image: YOLOX person boxes + DWPose keypoints -> POSE_KEYPOINT in pixels."""

    DESCRIPTION = ("Detect people's poses in photos with DWPose (the YOLOX person detector and the DWPose / RTMPose "
                   "keypoint model, the ONNX files comfyui_controlnet_aux uses; put them in models/posetransfer). "
                   "Outputs POSE_KEYPOINT in pixel coordinates of each image, COCO-18 (OpenPose) order, several "
                   "people per image, with hands and face when the model is whole-body. Runs on the GPU through "
                   "onnxruntime-gpu when CUDA works, else on the CPU.")
    CATEGORY = CATEGORY
    FUNCTION = "detect"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("One frame dict per image with every detected person, in pixels; canvas = image size. "
                       "Joints below score_threshold are 0, 0, 0.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = _onnx_files()
        pose_files = files or [NO_FILE]
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The photo(s) to detect people in; each image of the batch gives one "
                                           "frame of the output." + IMAGE_NOTE}),
            "detector_model": ([NO_FILE] + files, {
                "default": _default(files, ("yolox",)) if files else NO_FILE,
                "tooltip": "YOLOX person detector ONNX file in models/posetransfer (e.g. yolox_l.onnx). (none): "
                           "the whole image is one person (same as mode whole_image)."}),
            "pose_model": (pose_files, {
                "default": _default(files, ("dw-", "ucoco", "rtmpose", "wholebody")) if files else NO_FILE,
                "tooltip": "DWPose / RTMPose SimCC keypoint ONNX file in models/posetransfer (e.g. "
                           "dw-ll_ucoco_384.onnx: body, hands and face; COCO-17 body models work too)."}),
            "mode": (list(DETECT_MODES), {
                "default": "detector",
                "tooltip": "detector: find every person with the detector model, then their keypoints. "
                           "whole_image: skip the detector and treat the whole image as one person (a photo of a "
                           "single person; faster)."}),
            "score_threshold": ("FLOAT", {
                "default": DEFAULT_SCORE_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Keypoints scoring below this are written as missing (0, 0, 0). The neck is the "
                           "shoulders' midpoint, present only when both shoulders are."}),
        }}

    def detect(self, image, detector_model=NO_FILE, pose_model=NO_FILE, mode="detector",
               score_threshold=DEFAULT_SCORE_THRESHOLD):
        if mode not in DETECT_MODES:
            raise ValueError(f"mode: expected one of {DETECT_MODES}, got {mode!r}")
        if not pose_model or pose_model == NO_FILE:
            raise ValueError("pose_model: expected a DWPose / RTMPose ONNX file (e.g. dw-ll_ucoco_384.onnx) in the "
                             "posetransfer model folder, got none; put the file there and refresh")
        if mode == "detector" and (not detector_model or detector_model == NO_FILE):
            raise ValueError("detector_model: mode 'detector' needs a YOLOX person detector ONNX file (e.g. "
                             "yolox_l.onnx) in the posetransfer model folder, got (none); choose one, or set mode "
                             "to whole_image for a photo of one person")
        images = tensor_to_images(image, "image")
        pose_path = bridge.model_file_path(pose_model)
        det_path = None if mode == "whole_image" else bridge.model_file_path(detector_model)
        detector = _detector(det_path, pose_path)
        bar = bridge.ProgressBar(len(images))
        poses = []
        for frame in images:
            bridge.check_interrupt()
            poses.append(detector.detect(frame, whole_image=mode == "whole_image", score_threshold=score_threshold))
            bar.update(1)
        return (dump_pose_keypoint(poses),)


NODE_CLASS_MAPPINGS = {"PoseTransferPoseDetect": PoseTransferPoseDetect}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseTransferPoseDetect": "Detect Pose (posetransfer)"}
