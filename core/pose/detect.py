"""Pose detection from photos -> :class:`~.keypoints.Pose` in pixel coordinates, COCO-18 order.

Two detectors with one interface, ``detect(image) -> Pose`` (``image``: ``(H, W, 3)`` RGB, float 0..1 or uint8):

* :class:`PoseDetector`: the two-stage DWPose pipeline on onnxruntime, from the ONNX files ComfyUI users have
  from comfyui_controlnet_aux (``yolox_l.onnx`` person detector + ``dw-ll_ucoco_384.onnx`` whole-body
  RTMPose/SimCC keypoints; COCO-17 body models such as RTMPose-m work too). Several people per image.
* :class:`MediaPipeDetector`: MediaPipe Pose 0.10.21 (BlazePose, model complexity 1, whose weights ship inside
  the mediapipe wheel, so it works offline). Optional: needs the extra ``posetransfer[mediapipe]``. One person.

Conventions of the DWPose pipeline (the facts comfyui_controlnet_aux and the model authors use):

* YOLOX: the image is letterboxed to the model input (640x640): resized by ``r = min(640 / h, 640 / w)``
  (``cv2.INTER_LINEAR``, size ``int(w r) x int(h r)``), placed at the top-left corner of a canvas filled with
  114, fed as float 0..255 without normalisation, channels BGR (YOLOX was trained on ``cv2.imread`` images;
  controlnet_aux feeds RGB, which hardly changes person boxes). The common export has ONE raw output
  ``(1, N, 5 + classes)`` per anchor point of the stride 8/16/32 grids (N = 8400 at 640x640): ``(x, y)`` =
  ``(raw + grid cell) * stride``, ``(w, h)`` = ``exp(raw) * stride``, score = objectness x class score
  (both already sigmoid). Exports with built-in decoding and NMS giving ``(1, N, 5)`` boxes ``x0, y0, x1, y1,
  score`` (mmdeploy / rtmlib style, optionally with a ``(1, N)`` label output) are read too. Person = class 0;
  boxes scoring > ``det_threshold`` (0.3) survive greedy NMS at IoU ``nms_threshold`` (0.45).
* RTMPose / DWPose: each box is grown by 1.25 around its centre, then widened or heightened to the model's
  aspect ratio (``w / h`` of the input, 288 / 384 for DWPose-384); that square-pixel affine crop
  (``crop = (p - centre) * s + input_size / 2``, ``cv2.INTER_LINEAR``, black outside the image) is normalised
  with ImageNet mean / std (RGB, 0..255 scale). The two SimCC outputs ``simcc_x (N, K, W * k)`` and
  ``simcc_y (N, K, H * k)`` (split ratio ``k`` = 2 for DWPose) are decoded by argmax: ``x = argmax / k`` in
  crop pixels, score = ``min(max_x, max_y)``; the crop point is mapped back by the exact inverse affine.
* Whole-body models (K = 133, COCO-WholeBody): 0-16 body (COCO-17), 17-22 feet (dropped), 23-90 face (68),
  91-111 left hand, 112-132 right hand. Face and hands are kept as comfyui_controlnet_aux does: the face as
  OpenPose's 70 points (the 68 plus the right and left eye of the body as the two pupils), a part whose
  points are all below the threshold is None.
* COCO-17 -> COCO-18: OpenPose order; the neck is the midpoint of the shoulders, present only when both
  shoulders are, with the smaller of their two scores. A keypoint scoring below ``score_threshold`` (0.3) is
  missing (``0, 0, 0``); present ones keep their model score as confidence.
"""

from __future__ import annotations

import ctypes.util
import logging
import math
import os
import sys
from typing import Sequence

import cv2
import numpy as np

from ..images import _rgb, _to_unit_float, load_image
from .keypoints import COCO17_NAMES, COCO18_FROM_COCO17, JOINT_INDEX, NUM_JOINTS, Person, Pose
from .formats import write_openpose_json

PathLike = str | os.PathLike

LOGGER = logging.getLogger("posetransfer")

# COCO-18 joint j is BlazePose landmark BLAZEPOSE_TO_COCO18[j] (MediaPipe's 33; as COCO18_FROM_COCO17 for COCO).
BLAZEPOSE_TO_COCO18: tuple[int | None, ...] = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
NECK, RIGHT_SHOULDER, LEFT_SHOULDER = JOINT_INDEX["neck"], JOINT_INDEX["right_shoulder"], JOINT_INDEX["left_shoulder"]
RIGHT_EYE, LEFT_EYE = JOINT_INDEX["right_eye"], JOINT_INDEX["left_eye"]

NUM_COCO = len(COCO17_NAMES)
NUM_WHOLEBODY = 133
WHOLEBODY_FACE = slice(23, 91)
WHOLEBODY_LEFT_HAND = slice(91, 112)
WHOLEBODY_RIGHT_HAND = slice(112, 133)
# Keypoint counts whose first 17 points are the COCO body: COCO, Halpe-26, COCO-WholeBody.
SUPPORTED_KEYPOINT_COUNTS = (NUM_COCO, 26, NUM_WHOLEBODY)

YOLOX_STRIDES = (8, 16, 32)
YOLOX_PAD_VALUE = 114
DEFAULT_DETECTOR_SIZE = (640, 640)   # (height, width) when the ONNX input shape is dynamic
DEFAULT_POSE_SIZE = (384, 288)       # (height, width): DWPose-384
PERSON_CLASS = 0
BOX_PADDING = 1.25
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_DET_THRESHOLD = 0.3
DEFAULT_NMS_THRESHOLD = 0.45
MEDIAPIPE_SCORE_THRESHOLD = 0.5
MEDIAPIPE_EXTRA = "posetransfer[mediapipe]"
MEDIAPIPE_VERSION = "0.10.21"

DETECT_MODES = ("detector", "whole_image")


# --------------------------------------------------------------------------------------------------------
# Pure steps (each tested on its own)
# --------------------------------------------------------------------------------------------------------

def image_to_uint8(image, what: str = "image") -> np.ndarray:
    """``(H, W, C)`` RGB image, float 0..1 or uint8 (C in 1, 3, 4) -> contiguous uint8 ``(H, W, 3)`` RGB."""
    arr = np.asarray(image)
    if arr.ndim != 3 or 0 in arr.shape[:2]:
        raise ValueError(f"{what}: expected an image of shape (H, W, 3), got shape {tuple(arr.shape)}")
    arr = _rgb(arr, what)
    if arr.dtype != np.uint8:
        arr = np.round(_to_unit_float(arr, what) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(arr)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """YOLOX input: ``image`` (uint8 ``(h, w, 3)``) scaled by ``r = min(H / h, W / w)`` to ``int(w r) x int(h r)``
    (bilinear) at the top-left of an ``size = (H, W)`` canvas of 114. Returns ``(canvas, r)``; an input point
    ``q`` is image point ``q / r``."""
    height, width = size
    h, w = image.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = max(1, int(w * r)), max(1, int(h * r))
    canvas = np.full((height, width, 3), YOLOX_PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, r


def yolox_grid(size: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points of YOLOX's output rows for an ``(H, W)`` input: ``(N, 2)`` grid cells ``(x, y)`` and
    ``(N,)`` strides, stride by stride, row-major within each stride."""
    cells, steps = [], []
    for stride in strides:
        gh, gw = size[0] // stride, size[1] // stride
        xs, ys = np.meshgrid(np.arange(gw), np.arange(gh))
        cells.append(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1))
        steps.append(np.full(gh * gw, stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(steps).astype(np.float64)


def decode_yolox(raw: np.ndarray, size: tuple[int, int],
                 strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX rows ``(N, 5 + C)`` for an ``(H, W)`` input -> boxes ``(N, 4)`` ``x0, y0, x1, y1`` in input
    pixels and scores ``(N, C)`` = objectness x class score."""
    raw = np.asarray(raw, dtype=np.float64)
    grid, stride = yolox_grid(size, strides)
    if raw.ndim != 2 or raw.shape[0] != len(grid) or raw.shape[1] < 6:
        raise ValueError(f"YOLOX output: expected ({len(grid)}, 5 + classes) rows for a {size[1]}x{size[0]} "
                         f"input, got shape {tuple(raw.shape)}")
    centre = (raw[:, :2] + grid) * stride[:, None]
    wh = np.exp(np.minimum(raw[:, 2:4], 50.0)) * stride[:, None]
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    return boxes, raw[:, 4:5] * raw[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first. A box is dropped when its
    IoU with a kept better box is above ``iou_threshold`` (continuous coordinates, area = w * h)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def box_center_scale(box, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Box ``x0, y0, x1, y1`` -> crop centre ``(cx, cy)`` and size ``(w, h)``: the box grown by ``padding``, then
    the short side lengthened so that ``w / h == aspect`` (the model input's width / height)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return centre, scale


def crop_matrix(centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix taking image pixels to pixels of the ``size = (H, W)`` model input:
    ``crop = (p - centre) * (W / scale_w) + (W / 2, H / 2)`` (``scale`` has the input's aspect ratio)."""
    height, width = size
    s = width / float(scale[0])
    return np.array([[s, 0.0, width / 2 - s * centre[0]],
                     [0.0, s, height / 2 - s * centre[1]]])


def crop_to_image(points: np.ndarray, centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`crop_matrix`: ``(..., 2)`` model-input pixels -> image pixels,
    ``p = q / (W, H) * scale + centre - scale / 2``."""
    wh = np.array([size[1], size[0]], dtype=np.float64)
    return np.asarray(points, dtype=np.float64) / wh * np.asarray(scale) + np.asarray(centre) - np.asarray(scale) / 2


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """SimCC ``(N, K, Wx)`` and ``(N, K, Wy)`` -> ``(N, K, 2)`` crop pixels (argmax / split ratio) and ``(N, K)``
    scores (the smaller of the two maxima). Points scoring <= 0 get location -1."""
    simcc_x = np.asarray(simcc_x, dtype=np.float64)
    simcc_y = np.asarray(simcc_y, dtype=np.float64)
    locs = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float64)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    locs /= split_ratio
    locs[scores <= 0] = -1.0
    return locs, scores


def _present(points: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    ok = (scores >= threshold) & (scores > 0) & np.isfinite(scores) & np.isfinite(points).all(axis=-1)
    out = np.zeros((len(points), 3))
    out[ok, :2] = points[ok]
    out[ok, 2] = scores[ok]
    return out


def to_coco18(points: np.ndarray, scores: np.ndarray, index: Sequence[int | None] = COCO18_FROM_COCO17,
              threshold: float = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """Keypoints ``(K, 2)`` + scores ``(K,)`` of another layout -> ``(18, 3)`` COCO-18 ``x, y, confidence``.

    ``index[j]`` is the source keypoint of COCO-18 joint j (None for the neck). Points scoring below
    ``threshold`` are missing (0, 0, 0); the neck is the midpoint of the shoulders when both are present,
    with the smaller of their confidences."""
    points = np.asarray(points, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    src = [i for i in index if i is not None]
    picked = _present(points[src], scores[src], threshold)
    body = np.zeros((NUM_JOINTS, 3))
    body[[j for j, i in enumerate(index) if i is not None]] = picked
    rs, ls = body[RIGHT_SHOULDER], body[LEFT_SHOULDER]
    if rs[2] > 0 and ls[2] > 0:
        body[NECK] = ((rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2, min(rs[2], ls[2]))
    return body


def keypoints_to_person(points: np.ndarray, scores: np.ndarray,
                        threshold: float = DEFAULT_SCORE_THRESHOLD) -> Person:
    """One person's model keypoints (COCO-17, Halpe-26 or COCO-WholeBody-133; image pixels) -> :class:`Person`.

    Whole-body models also give the hands (21 each) and the face (70: the 68 points plus the body's right and
    left eye as pupils, as comfyui_controlnet_aux writes them); a part with no point above ``threshold`` is
    None."""
    points = np.asarray(points, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    body = to_coco18(points[:NUM_COCO], scores[:NUM_COCO], COCO18_FROM_COCO17, threshold)
    if len(points) != NUM_WHOLEBODY:
        return Person(body)

    def part(sl):
        arr = _present(points[sl], scores[sl], threshold)
        return arr if (arr[:, 2] > 0).any() else None

    face = part(WHOLEBODY_FACE)
    if face is not None:
        face = np.concatenate([face, body[[RIGHT_EYE, LEFT_EYE]]])
    return Person(body, face, part(WHOLEBODY_LEFT_HAND), part(WHOLEBODY_RIGHT_HAND))


# --------------------------------------------------------------------------------------------------------
# onnxruntime sessions
# --------------------------------------------------------------------------------------------------------

def _check_file(path, what: str, example: str) -> str:
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError(f"{what}: expected the path of an ONNX file such as {example}, got {path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} not found; expected an ONNX file such as {example} "
                                f"(the files comfyui_controlnet_aux's DWPose preprocessor downloads)")
    return path


def _cuda_device_present() -> bool:
    """Cheap check for an NVIDIA GPU, so that onnxruntime-gpu is not asked for CUDA on a machine without one."""
    try:
        import torch
        if torch.cuda.is_available():
            return True
    except ImportError:
        return True
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version")
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None
    return False


def _choose_providers(requested) -> tuple[list[str], str | None]:
    """Execution providers to ask for, and why CUDA is not among them (None when it is or was not wanted)."""
    import onnxruntime as ort

    if requested is not None:
        return list(requested), None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["CPUExecutionProvider"], ("this onnxruntime has no CUDA provider (install onnxruntime-gpu for "
                                          "GPU detection)")
    if not _cuda_device_present():
        return ["CPUExecutionProvider"], "no CUDA GPU found"
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], None


def _open_session(path: str, what: str, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers on every load
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{what} {path!r}: expected an ONNX model onnxruntime can load, got an error: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


def _input_spec(session, path: str, what: str, default: tuple[int, int]) -> tuple[int | None, tuple[int, int], type]:
    """(fixed batch size or None, (H, W), numpy dtype) of a model's single image input."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        got = [tuple(i.shape) for i in inputs]
        raise ValueError(f"{what} {path!r}: expected one image input of shape (N, 3, H, W), got inputs {got}")
    batch, channels, height, width = inputs[0].shape
    if isinstance(channels, int) and channels != 3:
        raise ValueError(f"{what} {path!r}: expected an image input with 3 channels (N, 3, H, W), got shape "
                         f"{tuple(inputs[0].shape)}")
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    if inputs[0].type not in dtypes:
        raise ValueError(f"{what} {path!r}: expected a float32 or float16 input, got {inputs[0].type} "
                         f"(quantised uint8 models are not supported)")
    size = (height, width) if isinstance(height, int) and isinstance(width, int) else default
    if min(size) <= 0:
        raise ValueError(f"{what} {path!r}: expected a positive input size, got {tuple(inputs[0].shape)}")
    return (batch if isinstance(batch, int) and batch > 0 else None), size, dtypes[inputs[0].type]


def _shapes(outputs) -> list[tuple[int, ...]]:
    return [tuple(np.shape(o)) for o in outputs]


# --------------------------------------------------------------------------------------------------------
# The DWPose pipeline
# --------------------------------------------------------------------------------------------------------

class PoseDetector:
    """DWPose: YOLOX person boxes, then RTMPose/DWPose SimCC keypoints per box, on onnxruntime.

    ``detector_model``: YOLOX ONNX file (e.g. ``yolox_l.onnx``), or None to always use the whole image as the
    one person box. ``pose_model``: RTMPose/DWPose SimCC ONNX file (e.g. ``dw-ll_ucoco_384.onnx``; 17, 26 or
    133 keypoints). ``providers``: onnxruntime execution providers; default CUDA then CPU, and one log line on
    the ``posetransfer`` logger when it runs on the CPU.
    """

    def __init__(self, detector_model: PathLike | None, pose_model: PathLike, *,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, det_threshold: float = DEFAULT_DET_THRESHOLD,
                 nms_threshold: float = DEFAULT_NMS_THRESHOLD, providers: Sequence[str] | None = None,
                 detector_bgr: bool = True):
        self.pose_path = _check_file(pose_model, "pose model", "dw-ll_ucoco_384.onnx")
        self.detector_path = (None if detector_model is None
                              else _check_file(detector_model, "person detector", "yolox_l.onnx"))
        self.score_threshold = _threshold(score_threshold, "score_threshold")
        self.det_threshold = _threshold(det_threshold, "det_threshold")
        self.nms_threshold = _threshold(nms_threshold, "nms_threshold")
        self.detector_bgr = bool(detector_bgr)

        wanted, why_cpu = _choose_providers(providers)
        self._pose = _open_session(self.pose_path, "pose model", wanted)
        self._pose_batch, self.pose_size, self._pose_dtype = _input_spec(
            self._pose, self.pose_path, "pose model", DEFAULT_POSE_SIZE)
        self._simcc_outputs = self._find_simcc_outputs()
        self._det = None
        if self.detector_path is not None:
            self._det = _open_session(self.detector_path, "person detector", wanted)
            self._det_batch, self.detector_size, self._det_dtype = _input_spec(
                self._det, self.detector_path, "person detector", DEFAULT_DETECTOR_SIZE)
        self.providers = list(self._pose.get_providers())
        if why_cpu is None and "CUDAExecutionProvider" in wanted and "CUDAExecutionProvider" not in self.providers:
            why_cpu = ("onnxruntime could not start its CUDA provider (CUDA / cuDNN libraries missing or of another "
                       "version; see onnxruntime's message above)")
        if why_cpu is not None:
            LOGGER.warning("posetransfer pose detection falls back to the CPU: %s.", why_cpu)

    @property
    def on_gpu(self) -> bool:
        return "CUDAExecutionProvider" in self.providers

    def _find_simcc_outputs(self) -> tuple[str, str]:
        outputs = self._pose.get_outputs()
        names = [o.name for o in outputs]
        if "simcc_x" in names and "simcc_y" in names:
            return "simcc_x", "simcc_y"
        if len(outputs) != 2:
            raise ValueError(f"pose model {self.pose_path!r}: expected two SimCC outputs (simcc_x (N, K, W * 2), "
                             f"simcc_y (N, K, H * 2)) as RTMPose / DWPose export them, got {len(outputs)} "
                             f"output(s) {names} (heatmap models are not supported)")
        return names[0], names[1]

    # ------------------------------------------------------------------------------------------- detector

    def detect_boxes(self, image) -> np.ndarray:
        """Person boxes ``(M, 5)``: ``x0, y0, x1, y1, score`` in image pixels, best first."""
        if self._det is None:
            raise ValueError("detect_boxes: this PoseDetector has no person detector (detector_model=None); "
                             "use detect(image, whole_image=True) or give a YOLOX ONNX file")
        img = image_to_uint8(image)
        canvas, ratio = letterbox(img, self.detector_size)
        if self.detector_bgr:
            canvas = canvas[..., ::-1]
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=self._det_dtype)
        outputs = self._det.run(None, {self._det.get_inputs()[0].name: blob})
        boxes, scores = self._parse_detections(outputs)
        boxes = boxes / ratio
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
        return np.concatenate([boxes[ok], scores[ok, None]], axis=1)

    def _parse_detections(self, outputs) -> tuple[np.ndarray, np.ndarray]:
        """Detector outputs -> person boxes in model-input pixels and scores, after thresholding and NMS."""
        n_grid = len(yolox_grid(self.detector_size)[0])
        h, w = self.detector_size
        first = np.asarray(outputs[0]) if outputs else np.zeros(0)
        if first.ndim != 3 or first.shape[0] != 1 or first.shape[2] < 5 \
                or (first.shape[2] > 5 and first.shape[1] != n_grid):
            raise ValueError(
                f"person detector {self.detector_path!r}: expected a YOLOX output of shape (1, {n_grid}, 5 + classes) "
                f"(raw, one row per anchor of the stride 8/16/32 grids of its {w}x{h} input) or detections "
                f"(1, N, 5) = x0, y0, x1, y1, score after NMS; got outputs of shapes {_shapes(outputs)}")
        rows = first[0].astype(np.float64)
        if rows.shape[1] == 5:  # built-in decoding and NMS
            keep = rows[:, 4] > self.det_threshold
            if len(outputs) > 1:
                labels = np.asarray(outputs[1]).reshape(-1)
                if labels.shape[0] != rows.shape[0]:
                    raise ValueError(f"person detector {self.detector_path!r}: expected labels (1, {rows.shape[0]}) "
                                     f"beside the detections, got outputs of shapes {_shapes(outputs)}")
                keep &= labels == PERSON_CLASS
            rows = rows[keep]
            order = np.argsort(-rows[:, 4], kind="stable")
            return rows[order, :4], rows[order, 4]
        boxes, scores = decode_yolox(rows, self.detector_size)
        person = scores[:, PERSON_CLASS]
        keep = np.flatnonzero(person > self.det_threshold)
        kept = keep[nms(boxes[keep], person[keep], self.nms_threshold)]
        return boxes[kept], person[kept]

    # ------------------------------------------------------------------------------------------- keypoints

    def estimate(self, image, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of the person in each box ``(M, 4+)``: ``(M, K, 2)`` image pixels and ``(M, K)`` scores."""
        img = image_to_uint8(image)
        boxes = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
        if boxes.size == 0:
            return np.zeros((0, NUM_COCO, 2)), np.zeros((0, NUM_COCO))
        if boxes.ndim != 2 or boxes.shape[1] < 4:
            raise ValueError(f"boxes: expected (M, 4) or (M, 5) rows x0, y0, x1, y1[, score], got shape {boxes.shape}")
        height, width = self.pose_size
        crops, frames = [], []
        for box in boxes:
            centre, scale = box_center_scale(box, width / height)
            crop = cv2.warpAffine(img, crop_matrix(centre, scale, self.pose_size), (width, height),
                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            crops.append(((crop.astype(np.float32) - POSE_MEAN) / POSE_STD).transpose(2, 0, 1))
            frames.append((centre, scale))
        batch = self._pose_batch or len(crops)
        xs, ys = [], []
        for start in range(0, len(crops), batch):
            chunk = crops[start:start + batch]
            blob = np.stack(chunk + [chunk[-1]] * (batch - len(chunk))).astype(self._pose_dtype)
            outputs = self._pose.run(list(self._simcc_outputs), {self._pose.get_inputs()[0].name: blob})
            sx, sy = self._check_simcc(outputs, batch)
            xs.append(sx[:len(chunk)])
            ys.append(sy[:len(chunk)])
        simcc_x, simcc_y = np.concatenate(xs), np.concatenate(ys)
        split = simcc_x.shape[2] / width
        locs, scores = decode_simcc(simcc_x, simcc_y, split)
        points = np.stack([crop_to_image(loc, c, s, self.pose_size) for loc, (c, s) in zip(locs, frames)])
        return points, scores

    def _check_simcc(self, outputs, batch: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.pose_size
        sx, sy = (np.asarray(o) for o in outputs)
        ok = (sx.ndim == 3 and sy.ndim == 3 and sx.shape[0] == sy.shape[0] == batch and sx.shape[1] == sy.shape[1]
              and sx.shape[1] in SUPPORTED_KEYPOINT_COUNTS and sx.shape[2] > 0
              and math.isclose(sx.shape[2] / width, sy.shape[2] / height, rel_tol=1e-6))
        if not ok:
            raise ValueError(
                f"pose model {self.pose_path!r}: expected SimCC outputs simcc_x ({batch}, K, {width} * k) and "
                f"simcc_y ({batch}, K, {height} * k) for its {width}x{height} input, with K in "
                f"{SUPPORTED_KEYPOINT_COUNTS} and the same split ratio k (2 for DWPose); got shapes "
                f"{_shapes(outputs)}")
        return sx, sy

    # ------------------------------------------------------------------------------------------- all

    def detect(self, image, whole_image: bool = False, score_threshold: float | None = None) -> Pose:
        """People in ``image`` (``(H, W, 3)`` RGB, float 0..1 or uint8) -> :class:`Pose` on an ``W x H`` canvas.

        ``whole_image`` (forced when there is no detector): skip YOLOX and treat the whole image as one person
        box, for a photo of a single person. ``score_threshold`` overrides the detector's for this call."""
        img = image_to_uint8(image)
        threshold = self.score_threshold if score_threshold is None else _threshold(score_threshold,
                                                                                    "score_threshold")
        h, w = img.shape[:2]
        if whole_image or self._det is None:
            boxes = np.array([[0.0, 0.0, float(w), float(h)]])
        else:
            boxes = self.detect_boxes(img)
        points, scores = self.estimate(img, boxes)
        return Pose([keypoints_to_person(p, s, threshold) for p, s in zip(points, scores)], w, h)


def _threshold(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what}: expected a number from 0 to 1, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------------
# MediaPipe (optional extra)
# --------------------------------------------------------------------------------------------------------

def mediapipe_available() -> bool:
    """True when the optional ``mediapipe`` package can be imported."""
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


def _import_mediapipe():
    try:
        import mediapipe
    except ImportError as exc:
        raise ImportError(f"MediaPipe pose detection needs the optional extra: pip install "
                          f"'{MEDIAPIPE_EXTRA}' (mediapipe=={MEDIAPIPE_VERSION}, whose wheel bundles the BlazePose "
                          f"model); it could not be imported ({exc}). Or use the DWPose ONNX files "
                          f"(PoseDetector).") from None
    return mediapipe


class MediaPipeDetector:
    """MediaPipe Pose (BlazePose, model complexity 1: the model bundled in the mediapipe wheel, so nothing is
    downloaded), single person, mapped to COCO-18: neck = midpoint of the shoulders, confidence = landmark
    visibility, joints below ``score_threshold`` (0.5) missing. The samples' keypoints were made this way."""

    def __init__(self, score_threshold: float = MEDIAPIPE_SCORE_THRESHOLD, min_detection_confidence: float = 0.5):
        mp = _import_mediapipe()
        self.score_threshold = _threshold(score_threshold, "score_threshold")
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                            min_detection_confidence=_threshold(min_detection_confidence,
                                                                                "min_detection_confidence"))

    def detect(self, image, whole_image: bool = False, score_threshold: float | None = None) -> Pose:
        """The (single) person in ``image`` -> :class:`Pose` (no people when none is found). ``whole_image`` is
        accepted for interface compatibility; BlazePose always looks at the whole image."""
        img = image_to_uint8(image)
        threshold = self.score_threshold if score_threshold is None else _threshold(score_threshold,
                                                                                    "score_threshold")
        h, w = img.shape[:2]
        result = self._pose.process(img)
        if result.pose_landmarks is None:
            return Pose([], w, h)
        marks = result.pose_landmarks.landmark
        points = np.array([(m.x * w, m.y * h) for m in marks])
        scores = np.array([m.visibility for m in marks])
        return Pose([Person(to_coco18(points, scores, BLAZEPOSE_TO_COCO18, threshold))], w, h)

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------------------

def build_detector(pose_model: PathLike | None = None, detector_model: PathLike | None = None,
                   score_threshold: float | None = None):
    """The detector the CLI asks for: DWPose on ONNX files when ``pose_model`` is given (``detector_model``
    optional: without it the whole image is one person), else MediaPipe (needs ``posetransfer[mediapipe]``)."""
    if pose_model is not None:
        kwargs = {} if score_threshold is None else {"score_threshold": score_threshold}
        return PoseDetector(detector_model, pose_model, **kwargs)
    if detector_model is not None:
        raise ValueError(f"pose_model: a person detector ({os.fspath(detector_model)!r}) needs a pose model "
                         f"too; expected e.g. dw-ll_ucoco_384.onnx, got none")
    if not mediapipe_available():
        raise ValueError(f"pose_model: expected a DWPose ONNX file (e.g. dw-ll_ucoco_384.onnx, with yolox_l.onnx "
                         f"as person detector), or MediaPipe installed with pip install '{MEDIAPIPE_EXTRA}'; "
                         f"got neither")
    return MediaPipeDetector() if score_threshold is None else MediaPipeDetector(score_threshold)


def detect_pose_file(image_path: PathLike, out_json: PathLike | None, detector,
                     whole_image: bool = False) -> Pose:
    """Detect the people in an image file and write them as OpenPose JSON (pixels, canvas = image size) to
    ``out_json`` (skipped when None). Returns the :class:`Pose`."""
    if not callable(getattr(detector, "detect", None)):
        raise ValueError(f"detector: expected a PoseDetector or MediaPipeDetector, got {type(detector).__name__}")
    pose = detector.detect(load_image(image_path), whole_image=whole_image)
    if out_json is not None:
        write_openpose_json(out_json, pose)
    return pose


__all__ = ["PoseDetector", "MediaPipeDetector", "mediapipe_available", "build_detector", "detect_pose_file",
           "image_to_uint8", "letterbox", "yolox_grid", "decode_yolox", "nms", "box_center_scale", "crop_matrix",
           "crop_to_image", "decode_simcc", "to_coco18", "keypoints_to_person", "COCO18_FROM_COCO17",
           "BLAZEPOSE_TO_COCO18", "DETECT_MODES", "MEDIAPIPE_EXTRA", "LOGGER"]
