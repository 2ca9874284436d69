"""Readers and writers for every keypoint format the project speaks (see ``shared/reference/formats.md``).

All readers return :class:`~.keypoints.Pose` objects in PIXEL coordinates of their canvas; every bad input
raises a ``ValueError`` that names the input (a ``what`` label or the file path), says what was expected
and what came.

* ComfyUI ``POSE_KEYPOINT`` / OpenPose JSON: :func:`load_pose_keypoint`, :func:`dump_pose_keypoint`,
  :func:`is_normalized`, :func:`read_openpose_json`, :func:`write_openpose_json`.
* GFLA / PIDM annotation and pairs CSVs: :func:`parse_gfla_keypoints`, :func:`format_gfla_keypoints`,
  :func:`read_gfla_annotations`, :func:`write_gfla_annotations`, :func:`read_pairs_csv`,
  :func:`write_pairs_csv`.
* PCDMs pose text files: :func:`write_pcdms_pose_txt`, :func:`read_pcdms_pose_txt`,
  :func:`pcdms_pose_vector`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import numbers
import os
from typing import Any, Iterable, Sequence

import numpy as np

from .keypoints import NUM_HAND, NUM_JOINTS, Person, Pose, _as_keypoint_array, check_joints

PathLike = str | os.PathLike

BODY_KEY = "pose_keypoints_2d"
FACE_KEY = "face_keypoints_2d"
LEFT_HAND_KEY = "hand_left_keypoints_2d"
RIGHT_HAND_KEY = "hand_right_keypoints_2d"
PERSON_KEYS = (BODY_KEY, FACE_KEY, LEFT_HAND_KEY, RIGHT_HAND_KEY)
FRAME_KEYS = ("people", "canvas_width", "canvas_height")
COORDS = ("auto", "pixel", "normalized")
# A point within this of pixel (-1, -1) is a producer's "missing" marker (see _drop_missing_markers).
MARKER_TOLERANCE = 1e-3

# GFLA / PIDM datasets: (height, width) of the frame the annotation CSV coordinates live in.
DEEPFASHION_SIZE = (256, 176)
MARKET_SIZE = (128, 64)
GFLA_HEADER = "name:keypoints_y:keypoints_x"
GFLA_MISSING = -1
PCDMS_MISSING = -1.0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------------------
# ComfyUI POSE_KEYPOINT and OpenPose JSON
# --------------------------------------------------------------------------------------------------------

def _keypoints(value: Any, count: int | None, what: str) -> np.ndarray:
    """A flat list of ``count`` x (x, y, confidence) real numbers -> ``(count, 3)`` float64."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{what}: expected a flat list of numbers, element {i} is "
                                 f"{type(v).__name__} {_short(v)}")
    elif not isinstance(value, np.ndarray):
        raise ValueError(f"{what}: expected a flat list of numbers, got {type(value).__name__} {_short(value)}")
    return _as_keypoint_array(value, count, what)


def _optional_keypoints(person: dict, key: str, count: int | None, where: str) -> np.ndarray | None:
    """An optional array of a person's dict: None, ``[]`` or an absent key give None."""
    value = person.get(key)
    if value is None or (isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0):
        return None
    return _keypoints(value, count, f"{where}.{key}")


def _parse_person(person: Any, where: str) -> Person:
    """One person dict of a frame -> :class:`Person`; unknown keys go to ``Person.extra``."""
    if not isinstance(person, dict):
        raise ValueError(f"{where}: expected a person dict with '{BODY_KEY}', got "
                         f"{type(person).__name__} {_short(person)}")
    if BODY_KEY not in person:
        raise ValueError(f"{where}: expected a '{BODY_KEY}' key, got keys {sorted(person)}")
    body = _optional_keypoints(person, BODY_KEY, NUM_JOINTS, where)
    if body is None:  # an editor's blank person (``[]``): no joint detected
        body = np.zeros((NUM_JOINTS, 3))
    extra = {k: copy.deepcopy(v) for k, v in person.items() if k not in PERSON_KEYS}
    return Person(body,
                  _optional_keypoints(person, FACE_KEY, None, where),
                  _optional_keypoints(person, LEFT_HAND_KEY, NUM_HAND, where),
                  _optional_keypoints(person, RIGHT_HAND_KEY, NUM_HAND, where),
                  extra)


def _parse_people(frame: Any, where: str) -> list[Person]:
    """The ``people`` list of a frame dict, validated."""
    if not isinstance(frame, dict):
        raise ValueError(f"{where}: expected a frame dict with a 'people' list, got "
                         f"{type(frame).__name__} {_short(frame)}")
    if "people" not in frame:
        raise ValueError(f"{where}: expected a 'people' key, got keys {sorted(frame)}")
    people = frame["people"]
    if not isinstance(people, (list, tuple)):
        raise ValueError(f"{where}.people: expected a list of person dicts, got "
                         f"{type(people).__name__} {_short(people)}")
    return [_parse_person(p, f"{where}.people[{i}]") for i, p in enumerate(people)]


def _canvas_size(width: Any, height: Any, what: str) -> tuple[int, int]:
    """Validated ``(width, height)`` (the rule is :class:`Pose`'s)."""
    try:
        pose = Pose([], width, height)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return pose.width, pose.height


def _frame_canvas(frame: dict, where: str, default_size: tuple[int, int] | None) -> tuple[int, int]:
    """``(width, height)`` of a frame, from its canvas keys or else ``default_size=(height, width)``."""
    present = [k for k in ("canvas_width", "canvas_height") if frame.get(k) is not None]
    if len(present) == 2:
        return _canvas_size(frame["canvas_width"], frame["canvas_height"], where)
    if present:
        raise ValueError(f"{where}: expected both 'canvas_width' and 'canvas_height', got only '{present[0]}'")
    if default_size is None:
        raise ValueError(f"{where}: expected 'canvas_width' and 'canvas_height' (or pass "
                         f"default_size=(height, width)), got neither")
    if not isinstance(default_size, (tuple, list)) or len(default_size) != 2:
        raise ValueError(f"default_size: expected (height, width), got {_short(default_size)}")
    return _canvas_size(default_size[1], default_size[0], "default_size")


def _people_normalized(people: Iterable[Person]) -> bool:
    """True iff there is a present keypoint and every present one has |x| and |y| <= 1 (controlnet_aux's rule:
    its OpenPose hands and faces mark failed points at (-1 / W, -1 / H))."""
    any_present = False
    for person in people:
        for arr in _arrays(person):
            xy = arr[arr[:, 2] > 0, :2]
            if xy.size and (np.abs(xy) > 1).any():
                return False
            any_present |= bool(xy.size)
    return any_present


def _arrays(person: Person) -> list[np.ndarray]:
    return [a for a in (person.body, person.face, person.left_hand, person.right_hand) if a is not None]


def _drop_missing_markers(people: list[Person]) -> list[Person]:
    """Producers that mark a missing point by its position, not by confidence 0, get confidence 0 there: a point
    at pixel (-1, -1) (ComfyUI's SDPose Keypoint Extractor keeps the score of a point it moved there;
    controlnet_aux's OpenPose writes failed hand / face peaks as (-1 / W, -1 / H), -1 once scaled)."""
    out = []
    for person in people:
        person = person.copy()
        for arr in _arrays(person):
            arr[(np.abs(arr[:, :2] + 1) < MARKER_TOLERANCE).all(axis=1), 2] = 0.0
        out.append(person)
    return out


def is_normalized(frame: dict, what: str = "frame") -> bool:
    """Whether a ``POSE_KEYPOINT`` frame dict holds normalised 0..1 coordinates.

    As controlnet_aux decides it: every coordinate of every PRESENT keypoint (confidence > 0; body, face and
    hands) lies in [-1, 1] (its ``abs(x) <= 1``). A frame with no present keypoint counts as pixel (False). Points
    at the missing-marker (-1, -1) do not count (see :func:`load_pose_keypoint`).
    """
    return _people_normalized(_drop_missing_markers(_parse_people(frame, what)))


def _load_frame(frame: Any, coords: str, where: str, default_size: tuple[int, int] | None) -> Pose:
    people = _drop_missing_markers(_parse_people(frame, where))
    width, height = _frame_canvas(frame, where, default_size)
    if coords == "normalized" or (coords == "auto" and _people_normalized(people)):
        scale = np.array([width, height], dtype=np.float64)
        people = _drop_missing_markers([p.map_points(lambda xy: xy * scale) for p in people])
    extra = {k: copy.deepcopy(v) for k, v in frame.items() if k not in FRAME_KEYS}
    pose = Pose(people, width, height, extra)
    check_joints(pose, where)
    return pose


def _parse_json(data: str | bytes | bytearray, what: str) -> Any:
    """JSON text (or UTF-8 bytes) -> Python data; ValueError naming ``what`` for binary data, invalid JSON or
    nesting too deep for the parser (``[`` x 100000 would otherwise raise RecursionError)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what}: expected OpenPose JSON text (UTF-8), got binary data (byte {exc.start} "
                             f"is not UTF-8)") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{what}: expected JSON text of a frame dict or a list of them, got JSON nested too "
                         f"deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"{what}: expected JSON text of a frame dict or a list of them, "
                         f"got invalid JSON ({exc})") from None


def load_pose_keypoint(data: Any, coords: str = "auto", what: str = "pose_keypoint",
                       default_size: tuple[int, int] | None = None) -> list[Pose]:
    """ComfyUI ``POSE_KEYPOINT`` (or OpenPose JSON content) -> one :class:`Pose` per frame, in pixels.

    ``data``: a list of frame dicts ``{"people": [...], "canvas_width": W, "canvas_height": H}``, a single bare
    frame dict, or a JSON string (or bytes) of either. Keypoint arrays are flat ``[x0, y0, c0, ...]``.

    ``coords``: ``"pixel"``, ``"normalized"`` (0..1, multiplied by the canvas size) or ``"auto"``, decided per
    frame by :func:`is_normalized`. Only present keypoints are scaled; missing ones keep their stored values.

    Producers' shapes: comfyui_controlnet_aux's DWPose / OpenPose (normalised, failed hand / face points at
    (-1 / W, -1 / H)), ComfyUI's SDPose Keypoint Extractor (pixels, every point scored, missing ones at (-1, -1),
    an extra ``foot_keypoints_2d``), OpenPose editors (a single frame dict; a blank person with
    ``pose_keypoints_2d: []``). A point at pixel (-1, -1) is missing whatever its confidence.

    Missing face/hand arrays (None, ``[]`` or absent) stay None; an empty body array is a person with no joint.
    Unknown keys of a frame go to
    ``Pose.extra``, of a person to ``Person.extra``, so :func:`dump_pose_keypoint` restores them.
    A frame without canvas keys raises unless ``default_size=(height, width)`` is given. Canvases beyond
    :data:`~.keypoints.MAX_SIDE` / :data:`~.keypoints.MAX_PIXELS` and present joints far off the canvas
    (:func:`~.keypoints.check_joints`) raise before anything of the canvas' size is made.
    """
    if coords not in COORDS:
        raise ValueError(f"coords: expected one of {COORDS}, got {_short(coords)}")
    if isinstance(data, (str, bytes, bytearray)):
        data = _parse_json(data, what)
    if isinstance(data, dict):
        return [_load_frame(data, coords, what, default_size)]
    if isinstance(data, (list, tuple)):
        return [_load_frame(f, coords, f"{what}[{i}]", default_size) for i, f in enumerate(data)]
    raise ValueError(f"{what}: expected a frame dict, a list of frame dicts or JSON text, got "
                     f"{type(data).__name__} {_short(data)}")


def _flat(arr: np.ndarray | None) -> list[float] | None:
    return None if arr is None else [float(v) for v in arr.reshape(-1)]


def _dump_person(person: Person) -> dict:
    out = {BODY_KEY: _flat(person.body), FACE_KEY: _flat(person.face),
           LEFT_HAND_KEY: _flat(person.left_hand), RIGHT_HAND_KEY: _flat(person.right_hand)}
    for key, value in person.extra.items():
        out.setdefault(key, copy.deepcopy(value))
    return out


def _as_pose_list(poses: Pose | Sequence[Pose], what: str) -> list[Pose]:
    if isinstance(poses, Pose):
        return [poses]
    if isinstance(poses, (list, tuple)) and all(isinstance(p, Pose) for p in poses):
        return list(poses)
    raise ValueError(f"{what}: expected a Pose or a list of Pose, got {type(poses).__name__} {_short(poses)}")


def dump_pose_keypoint(poses: Pose | Sequence[Pose], normalized: bool = False) -> list[dict]:
    """Poses -> ComfyUI ``POSE_KEYPOINT``: always a list of frame dicts, JSON-serialisable.

    Pixel coordinates by default (as the DWPose node of comfyui_controlnet_aux outputs); ``normalized=True``
    divides present keypoints by the canvas size. Body arrays are always written; face and hands as flat
    lists when present, else None. ``Pose.extra`` / ``Person.extra`` are restored.
    """
    frames = []
    for pose in _as_pose_list(poses, "poses"):
        people = pose.people
        if normalized:
            scale = np.array([pose.width, pose.height], dtype=np.float64)
            people = [p.map_points(lambda xy: xy / scale) for p in people]
        frame = {"people": [_dump_person(p) for p in people],
                 "canvas_width": int(pose.width), "canvas_height": int(pose.height)}
        for key, value in pose.extra.items():
            frame.setdefault(key, copy.deepcopy(value))
        frames.append(frame)
    return frames


def read_openpose_json(path: PathLike, coords: str = "auto", default_size: tuple[int, int] | None = None,
                       what: str | None = None) -> list[Pose]:
    """An OpenPose-style JSON file (one frame dict, optionally with "version" and several people, or a list
    of frame dicts) -> list of :class:`Pose`. See :func:`load_pose_keypoint`; errors name ``what`` (default:
    the file's path), binary files included."""
    with open(path, "rb") as f:
        data = f.read()
    return load_pose_keypoint(data, coords=coords, what=os.fspath(path) if what is None else what,
                              default_size=default_size)


def write_openpose_json(path: PathLike, poses: Pose | Sequence[Pose], normalized: bool = False) -> None:
    """Write poses as OpenPose-style JSON: a single frame dict for one Pose, a list for several."""
    frames = dump_pose_keypoint(_as_pose_list(poses, os.fspath(path)), normalized=normalized)
    try:
        text = json.dumps(frames[0] if len(frames) == 1 else frames, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: expected finite keypoint values to write JSON ({exc})") from None
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------------------------------------
# GFLA / PIDM annotation and pairs CSVs
# --------------------------------------------------------------------------------------------------------
# Annotation CSV: ':' separator, header ``name:keypoints_y:keypoints_x``; each field a JSON list of 18 ints
# in COCO-18 order, Y FIRST, -1 for a missing joint. Coordinates are pixels of the dataset's frame:
# DeepFashion 256x176 (height x width; images are often stored 256x256 with 40 px of white on each side:
# subtract 40 from x when cropping to 176 wide) and Market-1501 128x64. Files are named
# ``fasion-annotation-{train,test}.csv`` and ``fasion-pairs-{train,test}.csv`` (sic).

def _gfla_field(value: Any, what: str) -> list[float]:
    """One keypoint field (JSON text or list) -> 18 finite numbers."""
    if isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what}: expected a JSON list of {NUM_JOINTS} integers, got invalid JSON "
                             f"({exc})") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != NUM_JOINTS:
        got = f"{len(value)} values" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(f"{what}: expected a list of {NUM_JOINTS} integers (-1 for missing), got {got}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{what}: expected {NUM_JOINTS} finite numbers, element {i} is {_short(v)}")
    return [float(v) for v in value]


def parse_gfla_keypoints(ys: str | Sequence[float], xs: str | Sequence[float], width: int = 176,
                         height: int = 256, what: str = "gfla keypoints") -> Pose:
    """One GFLA/PIDM annotation row (Y list first, then X list) -> one-person :class:`Pose`.

    A joint is missing when its y or x is -1 (stored as ``0, 0, 0``); present joints get confidence 1.
    Default canvas: DeepFashion's 176 wide x 256 high (Market-1501: ``width=64, height=128``).
    """
    y = _gfla_field(ys, f"{what}: keypoints_y")
    x = _gfla_field(xs, f"{what}: keypoints_x")
    width, height = _canvas_size(width, height, what)
    body = np.zeros((NUM_JOINTS, 3))
    for i in range(NUM_JOINTS):
        if y[i] != GFLA_MISSING and x[i] != GFLA_MISSING:
            body[i] = (x[i], y[i], 1.0)
    return Pose([Person(body)], width, height)


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def format_gfla_keypoints(pose: Pose, what: str = "pose") -> tuple[str, str]:
    """The first person of ``pose`` -> ``(keypoints_y, keypoints_x)`` strings like ``"[12, -1, ...]"``.

    Pixel coordinates are rounded half up to int (the datasets store ints) and NOT rescaled: bring the pose
    to the dataset's frame first. Missing joints -> -1; a present joint that rounds to -1 is indistinguishable
    from the sentinel and so reads back as missing.
    """
    person = pose.person(0, what)
    ys, xs = [], []
    for (x, y), ok in zip(person.xy, person.present):
        ys.append(_round_half_up(y) if ok else GFLA_MISSING)
        xs.append(_round_half_up(x) if ok else GFLA_MISSING)
    return str(ys), str(xs)


def read_gfla_annotations(path: PathLike, width: int = 176, height: int = 256) -> dict[str, Pose]:
    """A GFLA/PIDM annotation CSV -> ``{image name: Pose}`` (see :func:`parse_gfla_keypoints`)."""
    name_of_file = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != GFLA_HEADER:
        got = _short(lines[0]) if lines else "an empty file"
        raise ValueError(f"{name_of_file}, line 1: expected the header {GFLA_HEADER!r}, got {got}")
    poses: dict[str, Pose] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rsplit(":", 2)
        where = f"{name_of_file}, line {n}"
        if len(fields) != 3 or not fields[0].strip():
            raise ValueError(f"{where}: expected 'name:[18 ys]:[18 xs]', got {_short(line)}")
        name = fields[0].strip()
        if name in poses:
            raise ValueError(f"{where}: image name {name!r} appears twice")
        poses[name] = parse_gfla_keypoints(fields[1], fields[2], width, height, what=where)
    return poses


def write_gfla_annotations(path: PathLike, poses: dict[str, Pose]) -> None:
    """``{image name: Pose}`` -> a GFLA/PIDM annotation CSV (first person of each pose, pixel ints)."""
    if not isinstance(poses, dict):
        raise ValueError(f"{os.fspath(path)}: expected a dict of image name -> Pose, got {type(poses).__name__}")
    rows = [GFLA_HEADER]
    for name, pose in poses.items():
        what = f"{os.fspath(path)}: poses[{name!r}]"
        if not isinstance(name, str) or not name or any(c in name for c in ":\r\n"):
            raise ValueError(f"{what}: expected a non-empty image name without ':' or line breaks")
        if not isinstance(pose, Pose):
            raise ValueError(f"{what}: expected a Pose, got {type(pose).__name__}")
        ys, xs = format_gfla_keypoints(pose, what)
        rows.append(f"{name}:{ys}:{xs}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")


def read_pairs_csv(path: PathLike) -> list[tuple[str, str]]:
    """A pairs CSV (comma separated, header with columns ``from`` and ``to``; other columns such as a pandas
    index are ignored) -> list of ``(source name, target name)``."""
    name_of_file = os.fspath(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if "from" not in header or "to" not in header:
            raise ValueError(f"{name_of_file}, line 1: expected a header with columns 'from' and 'to', "
                             f"got {_short(header)}")
        i_from, i_to = header.index("from"), header.index("to")
        pairs = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(i_from, i_to) or not row[i_from].strip() or not row[i_to].strip():
                raise ValueError(f"{name_of_file}, line {reader.line_num}: expected {len(header)} columns "
                                 f"with non-empty 'from' and 'to', got {_short(row)}")
            pairs.append((row[i_from].strip(), row[i_to].strip()))
    return pairs


def write_pairs_csv(path: PathLike, pairs: Iterable[tuple[str, str]]) -> None:
    """``[(source, target), ...]`` -> a pairs CSV with header ``from,to``."""
    rows = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(s, str) and s for s in pair)):
            raise ValueError(f"{os.fspath(path)}: pairs[{i}]: expected (source name, target name), "
                             f"got {_short(pair)}")
        rows.append(pair)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["from", "to"])
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------------
# PCDMs pose text files
# --------------------------------------------------------------------------------------------------------
# PCDMs' prior reads 18 lines ``x y`` of normalised coordinates; the authors never published how they
# normalised. OUR definition: x / canvas_width, y / canvas_height (so it does not change when PCDMs squashes
# the image to 512x512), COCO-18 order, a missing joint written as ``-1 -1``.

def _pcdms_xy(pose: Pose, what: str) -> np.ndarray:
    """``(18, 2)`` float64: our PCDMs normalisation of the first person, -1 for missing joints."""
    person = pose.person(0, what)
    xy = person.xy / np.array([pose.width, pose.height], dtype=np.float64)
    xy[~person.present] = PCDMS_MISSING
    return xy


def pcdms_pose_vector(pose: Pose, what: str = "pose") -> np.ndarray:
    """``(36,)`` float32 ``[x0, y0, x1, y1, ...]`` of the first person: x / canvas_width, y / canvas_height,
    ``-1, -1`` for a missing joint. This normalisation is the project's own (PCDMs never published one)."""
    return _pcdms_xy(pose, what).reshape(-1).astype(np.float32)


def write_pcdms_pose_txt(path: PathLike, pose: Pose) -> None:
    """The first person of ``pose`` -> 18 lines ``x y``: x / canvas_width, y / canvas_height (our own
    normalisation, as in :func:`pcdms_pose_vector`), ``-1 -1`` for a missing joint."""
    xy = _pcdms_xy(pose, os.fspath(path))
    present = pose.people[0].present
    lines = [f"{float(x)!r} {float(y)!r}" if ok else "-1 -1" for (x, y), ok in zip(xy, present)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def read_pcdms_pose_txt(path: PathLike, width: int = 512, height: int = 512) -> Pose:
    """18 lines ``x y`` (normalised as in :func:`write_pcdms_pose_txt`) -> one-person Pose on a ``width`` x
    ``height`` canvas (PCDMs' 512x512 by default). ``-1 -1`` reads as missing (``0, 0, 0``); present joints
    get confidence 1. Blank lines are skipped."""
    name_of_file = os.fspath(path)
    width, height = _canvas_size(width, height, name_of_file)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    body = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            x, y = (float(v) for v in line.split())
        except ValueError:
            raise ValueError(f"{name_of_file}, line {n}: expected two numbers 'x y', got {_short(line)}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{name_of_file}, line {n}: expected finite numbers, got {_short(line)}")
        missing = x == PCDMS_MISSING and y == PCDMS_MISSING
        body.append((0.0, 0.0, 0.0) if missing else (x * width, y * height, 1.0))
    if len(body) != NUM_JOINTS:
        raise ValueError(f"{name_of_file}: expected {NUM_JOINTS} lines 'x y', got {len(body)}")
    return Pose([Person(np.array(body))], width, height)
