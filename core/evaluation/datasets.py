"""Dataset tools: build GFLA/PIDM-layout annotation and pairs files from a folder of photos, and convert
between the GFLA/PIDM and PCDMs layouts (``shared/reference/formats.md``, "Research dataset formats").

GFLA / PIDM layout: ``fasion-annotation-{split}.csv`` (``name:keypoints_y:keypoints_x``, integer pixels of
the dataset frame, -1 missing) and ``fasion-pairs-{split}.csv`` (``from,to``).
PCDMs layout: a pairs JSON list of ``{"source_image": ..., "target_image": ...}`` and one text file of 18
lines ``x y`` per image (normalised by the frame: x / width, y / height -- the project's definition, see
:func:`..pose.formats.write_pcdms_pose_txt`; ``-1 -1`` missing), named like the image with ``.txt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pose.keypoints import Person, Pose
from ..pose.formats import (read_gfla_annotations, read_openpose_json, read_pairs_csv, read_pcdms_pose_txt,
                            write_gfla_annotations, write_pairs_csv, write_pcdms_pose_txt)
from .profiles import IMAGE_EXTENSIONS, read_rgb_uint8

GROUP_BY = ("folder", "prefix", "none")
DEEPFASHION_FRAME = (256, 176)  # (height, width)


def annotation_file_name(split: str) -> str:
    return f"fasion-annotation-{split}.csv"


def pairs_file_name(split: str) -> str:
    return f"fasion-pairs-{split}.csv"


def _check_split(split: str) -> str:
    if not isinstance(split, str) or not split or any(c in split for c in "/\\:"):
        raise ValueError(f"split: expected a name such as 'train' or 'test', got {split!r}")
    return split


def _check_frame(frame, what: str = "frame") -> tuple[int, int] | None:
    if frame is None:
        return None
    if not (isinstance(frame, (tuple, list)) and len(frame) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in frame)):
        raise ValueError(f"{what}: expected (height, width) positive integers, got {frame!r}")
    return int(frame[0]), int(frame[1])


def _safe_relative(name: str, what: str) -> str:
    """A dataset image name usable as a relative path below an output folder."""
    norm = name.replace("\\", "/")
    if not norm or norm.startswith("/") or ".." in norm.split("/") or ":" in norm:
        raise ValueError(f"{what}: image name {name!r} cannot be used as a relative file name")
    return norm


def _image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file (header only when Pillow is there)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except ImportError:  # pragma: no cover
        pass
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"image file {path!r}: expected an image, got unreadable data ({exc})") from None
    h, w = read_rgb_uint8(path).shape[:2]
    return h, w


def list_photos(folder: str, what: str = "--photos") -> list[str]:
    """Relative POSIX paths of every image below ``folder``, sorted (hidden files and folders skipped)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: no such folder: {folder}")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    return sorted(out)


def main_person(pose: Pose, min_joints: int = 1) -> Person | None:
    """The person with the largest keypoint bounding box among those with at least ``min_joints`` joints."""
    best, best_area = None, -1.0
    for person in pose.people:
        if int(person.present.sum()) < min_joints:
            continue
        x0, y0, x1, y1 = person.bbox()
        area = (x1 - x0) * (y1 - y0)
        if area > best_area:
            best, best_area = person, area
    return best


def _openpose_file(json_dir: str, rel: str) -> str | None:
    stem = os.path.splitext(rel)[0]
    for cand in (f"{stem}_keypoints.json", f"{stem}.json"):
        path = os.path.join(json_dir, *cand.split("/"))
        if os.path.isfile(path):
            return path
    return None


def _to_frame(person: Person, size_hw: tuple[int, int], frame: tuple[int, int] | None) -> Pose:
    """The person on the annotation frame: scaled from the image size, joints outside the frame dropped."""
    h, w = size_hw
    fh, fw = frame or size_hw
    body = person.body.copy()
    ok = body[:, 2] > 0
    body[ok, 0] *= fw / w
    body[ok, 1] *= fh / h
    xr = np.floor(body[:, 0] + 0.5)
    yr = np.floor(body[:, 1] + 0.5)
    outside = ok & ((xr < 0) | (yr < 0) | (xr > fw - 1) | (yr > fh - 1))
    body[outside] = 0.0
    return Pose([Person(body)], fw, fh)


def _group_key(rel: str, group_by: str) -> str:
    if group_by == "folder":
        return rel.rsplit("/", 1)[0] if "/" in rel else ""
    if group_by == "prefix":
        stem = os.path.splitext(rel)[0]
        return stem.rsplit("_", 1)[0] if "_" in stem.rsplit("/", 1)[-1] else stem
    return ""


def make_pairs(names: list[str], group_by: str = "folder") -> list[tuple[str, str]]:
    """Every ordered pair ``(a, b)``, ``a != b``, of images of one group: the same sub-folder
    (``"folder"``), the same name up to the last ``_`` (``"prefix"``, DeepFashion-like ``id_1front``), or all
    images (``"none"``)."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by: expected one of {GROUP_BY}, got {group_by!r}")
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_group_key(n, group_by), []).append(n)
    pairs = []
    for key in sorted(groups):
        members = groups[key]
        pairs.extend((a, b) for a in members for b in members if a != b)
    return pairs


@dataclass
class BuildReport:
    annotation_file: str
    pairs_file: str
    images: int
    annotated: int
    pairs: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"annotation_file": self.annotation_file, "pairs_file": self.pairs_file, "images": self.images,
                "annotated": self.annotated, "pairs": self.pairs, "skipped": [list(s) for s in self.skipped]}


def build_dataset(photos_dir: str, out_dir: str, *, openpose_dir: str | None = None, detector=None,
                  split: str = "test", frame: tuple[int, int] | None = None, group_by: str = "folder",
                  min_joints: int = 1) -> BuildReport:
    """A GFLA/PIDM-layout annotation CSV and pairs CSV for the photos below ``photos_dir``.

    Each photo's pose comes from its OpenPose JSON (``<name>_keypoints.json`` or ``<name>.json`` in
    ``openpose_dir``, default ``photos_dir``, same sub-folders; pixel or normalised coordinates), else from
    ``detector.detect(image)`` when a detector is given; photos with neither, or without a person with
    ``min_joints`` joints, are skipped (listed in the report). With several people, the largest (keypoint
    bounding box) is kept. Image names are the photos' paths relative to ``photos_dir``.

    ``frame=(height, width)``: the annotation frame (DeepFashion: (256, 176)); coordinates are scaled from each
    photo's size to it; None keeps each photo's own pixels. Joints outside the frame are written as missing.
    Pairs: :func:`make_pairs` with ``group_by``. Writes ``fasion-annotation-{split}.csv`` and
    ``fasion-pairs-{split}.csv`` into ``out_dir``.
    """
    split = _check_split(split)
    frame = _check_frame(frame)
    if isinstance(min_joints, bool) or not isinstance(min_joints, int) or min_joints < 1:
        raise ValueError(f"min_joints: expected a positive integer, got {min_joints!r}")
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by: expected one of {GROUP_BY}, got {group_by!r}")
    if not os.path.isdir(photos_dir):
        raise FileNotFoundError(f"--photos: no such folder: {photos_dir}")
    json_dir = openpose_dir if openpose_dir is not None else photos_dir
    if not os.path.isdir(json_dir):
        raise FileNotFoundError(f"--openpose: no such folder: {json_dir}")
    if detector is not None and not callable(getattr(detector, "detect", None)):
        raise ValueError(f"detector: expected an object with detect(image) -> Pose, got {type(detector).__name__}")
    photos = list_photos(photos_dir)
    if not photos:
        raise ValueError(f"--photos: no images ({', '.join(IMAGE_EXTENSIONS)}) below {photos_dir}")
    poses: dict[str, Pose] = {}
    skipped: list[tuple[str, str]] = []
    for rel in photos:
        if ":" in rel or "\n" in rel:
            skipped.append((rel, "the name contains ':' (the annotation separator)"))
            continue
        path = os.path.join(photos_dir, *rel.split("/"))
        size = _image_size(path)
        jpath = _openpose_file(json_dir, rel)
        if jpath is not None:
            frames = read_openpose_json(jpath, default_size=size)
            pose = frames[0] if frames else Pose([], size[1], size[0])
            if (pose.height, pose.width) != size:   # the JSON's canvas -> this photo's pixels
                s = np.array([size[1] / pose.width, size[0] / pose.height])
                pose = pose.map_points(lambda xy: xy * s, width=size[1], height=size[0])
        elif detector is not None:
            image = read_rgb_uint8(path).astype(np.float32) / np.float32(255.0)
            pose = detector.detect(image)
            if not isinstance(pose, Pose):
                raise ValueError(f"detector: detect({rel}) returned {type(pose).__name__}, expected a Pose")
        else:
            skipped.append((rel, "no OpenPose JSON (and no detector)"))
            continue
        person = main_person(pose, min_joints)
        if person is None:
            skipped.append((rel, f"no person with at least {min_joints} joint(s)"))
            continue
        poses[rel] = _to_frame(person, size, frame)
    if not poses:
        why = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise ValueError(f"--photos: no photo below {photos_dir} got a pose ({why}{' ...' if len(skipped) > 3 else ''})")
    os.makedirs(out_dir, exist_ok=True)
    ann = os.path.join(out_dir, annotation_file_name(split))
    prs = os.path.join(out_dir, pairs_file_name(split))
    write_gfla_annotations(ann, poses)
    pairs = make_pairs(list(poses), group_by)
    write_pairs_csv(prs, pairs)
    return BuildReport(ann, prs, len(photos), len(poses), len(pairs), skipped)


# ----------------------------------------------------------------------------------------------- pairs

def read_pairs_json(path: str) -> list[tuple[str, str]]:
    """A PCDMs pairs JSON (list of ``{"source_image", "target_image"}``) -> ``[(source, target), ...]``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs JSON: no such file: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: expected a JSON list of pairs, got invalid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'source_image', 'target_image'}}, got "
                         f"{type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item.get(k)
                                                 for k in ("source_image", "target_image")):
            raise ValueError(f"{path}: item {i}: expected {{'source_image': name, 'target_image': name}}, got "
                             f"{str(item)[:60]}")
        out.append((item["source_image"], item["target_image"]))
    return out


def write_pairs_json(path: str, pairs) -> None:
    """``[(source, target), ...]`` -> a PCDMs pairs JSON list."""
    items = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) and s for s in pair)):
            raise ValueError(f"{path}: pairs[{i}]: expected (source name, target name), got {pair!r}")
        items.append({"source_image": pair[0], "target_image": pair[1]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(items, f, indent=1)
        f.write("\n")


def pairs_csv_to_json(csv_path: str, json_path: str) -> int:
    """GFLA/PIDM pairs CSV -> PCDMs pairs JSON; returns the number of pairs."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"pairs CSV: no such file: {csv_path}")
    pairs = read_pairs_csv(csv_path)
    write_pairs_json(json_path, pairs)
    return len(pairs)


def pairs_json_to_csv(json_path: str, csv_path: str) -> int:
    """PCDMs pairs JSON -> GFLA/PIDM pairs CSV; returns the number of pairs."""
    pairs = read_pairs_json(json_path)
    write_pairs_csv(csv_path, pairs)
    return len(pairs)


# ------------------------------------------------------------------------------------------ annotations

def txt_name(image_name: str) -> str:
    """The PCDMs pose file of an image: the same relative path with ``.txt`` for the extension."""
    rel = _safe_relative(image_name, "annotation")
    return os.path.splitext(rel)[0] + ".txt"


def annotations_to_pcdms(annotation_csv: str, out_dir: str, frame: tuple[int, int] = DEEPFASHION_FRAME) -> int:
    """GFLA/PIDM annotation CSV (coordinates in ``frame=(height, width)``) -> one PCDMs 18-line txt per image
    in ``out_dir`` (x / width, y / height; ``-1 -1`` missing). Returns the number of files written."""
    frame = _check_frame(frame)
    if not os.path.isfile(annotation_csv):
        raise FileNotFoundError(f"annotation CSV: no such file: {annotation_csv}")
    poses = read_gfla_annotations(annotation_csv, width=frame[1], height=frame[0])
    for name, pose in poses.items():
        path = os.path.join(out_dir, *txt_name(name).split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_pcdms_pose_txt(path, pose)
    return len(poses)


def pcdms_to_annotations(txt_dir: str, annotation_csv: str, frame: tuple[int, int] = DEEPFASHION_FRAME,
                         image_ext: str = ".jpg") -> int:
    """A folder of PCDMs pose txt files -> a GFLA/PIDM annotation CSV in ``frame=(height, width)`` pixels
    (rounded half up). Image names are the txt paths relative to ``txt_dir`` with ``image_ext``. Returns the
    number of rows."""
    frame = _check_frame(frame)
    if not isinstance(image_ext, str) or not image_ext.startswith(".") or len(image_ext) < 2:
        raise ValueError(f"image_ext: expected an extension such as '.jpg', got {image_ext!r}")
    if not os.path.isdir(txt_dir):
        raise FileNotFoundError(f"PCDMs pose folder: no such folder: {txt_dir}")
    poses: dict[str, Pose] = {}
    for root, dirs, files in os.walk(txt_dir):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".txt") and not f.startswith("."):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, txt_dir).replace(os.sep, "/")
                poses[rel[:-4] + image_ext] = read_pcdms_pose_txt(path, width=frame[1], height=frame[0])
    if not poses:
        raise ValueError(f"PCDMs pose folder: no .txt files in {txt_dir}")
    os.makedirs(os.path.dirname(os.path.abspath(annotation_csv)), exist_ok=True)
    write_gfla_annotations(annotation_csv, dict(sorted(poses.items())))
    return len(poses)


def to_pcdms(annotation_csv: str | None, pairs_csv: str | None, out_dir: str,
             frame: tuple[int, int] = DEEPFASHION_FRAME) -> dict:
    """GFLA/PIDM -> PCDMs layout in ``out_dir``: ``pairs.json`` and ``poses/<image>.txt``."""
    if annotation_csv is None and pairs_csv is None:
        raise ValueError("to-pcdms: expected --annotations and/or --pairs")
    os.makedirs(out_dir, exist_ok=True)
    out: dict[str, Any] = {}
    if pairs_csv is not None:
        out["pairs_json"] = os.path.join(out_dir, "pairs.json")
        out["pairs"] = pairs_csv_to_json(pairs_csv, out["pairs_json"])
    if annotation_csv is not None:
        out["poses_dir"] = os.path.join(out_dir, "poses")
        out["poses"] = annotations_to_pcdms(annotation_csv, out["poses_dir"], frame)
    return out


def from_pcdms(poses_dir: str | None, pairs_json: str | None, out_dir: str, split: str = "test",
               frame: tuple[int, int] = DEEPFASHION_FRAME, image_ext: str = ".jpg") -> dict:
    """PCDMs -> GFLA/PIDM layout in ``out_dir``: ``fasion-annotation-{split}.csv``, ``fasion-pairs-{split}.csv``."""
    split = _check_split(split)
    if poses_dir is None and pairs_json is None:
        raise ValueError("from-pcdms: expected --poses and/or --pairs-json")
    os.makedirs(out_dir, exist_ok=True)
    out: dict[str, Any] = {}
    if pairs_json is not None:
        out["pairs_csv"] = os.path.join(out_dir, pairs_file_name(split))
        out["pairs"] = pairs_json_to_csv(pairs_json, out["pairs_csv"])
    if poses_dir is not None:
        out["annotation_csv"] = os.path.join(out_dir, annotation_file_name(split))
        out["poses"] = pcdms_to_annotations(poses_dir, out["annotation_csv"], frame, image_ext)
    return out


# -------------------------------------------------------------------------------------------------- CLI

def _hw(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame: expected HxW such as 256x176, got {text!r}") from None
    return _check_frame((h, w), "--frame")


def add_dataset_arguments(p, add_detector_flags=None) -> None:
    """Sub-commands of ``posetransfer dataset`` (call on its sub-parser); ``add_detector_flags(parser)``
    adds the CLI's detector options to ``build`` (photos without OpenPose JSON are then detected)."""
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="GFLA/PIDM annotation + pairs CSVs from photos with OpenPose JSON")
    b.add_argument("--photos", required=True, metavar="DIR", help="folder of photos (sub-folders = people)")
    b.add_argument("--openpose", metavar="DIR", help="OpenPose JSON folder (default: --photos)")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--split", default="test", help="file name part: fasion-annotation-SPLIT.csv (default: test)")
    b.add_argument("--frame", metavar="HxW", help="annotation frame, e.g. 256x176 (default: each photo's size)")
    b.add_argument("--group-by", default="folder", choices=GROUP_BY,
                   help="which photos pair up: same sub-folder, same name prefix, or all")
    b.add_argument("--min-joints", type=int, default=1, help="skip people with fewer joints")
    if add_detector_flags is not None:
        add_detector_flags(b)
    t = sub.add_parser("to-pcdms", help="GFLA/PIDM CSVs -> PCDMs pairs.json + poses/*.txt")
    t.add_argument("--annotations", metavar="CSV")
    t.add_argument("--pairs", metavar="CSV")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--frame", default="256x176", metavar="HxW", help="annotation frame (default: 256x176)")
    f = sub.add_parser("from-pcdms", help="PCDMs pairs.json + poses/*.txt -> GFLA/PIDM CSVs")
    f.add_argument("--poses", metavar="DIR", help="folder of PCDMs 18-line pose txt files")
    f.add_argument("--pairs-json", metavar="JSON")
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--split", default="test")
    f.add_argument("--frame", default="256x176", metavar="HxW", help="annotation frame (default: 256x176)")
    f.add_argument("--image-ext", default=".jpg", help="extension of the image names (default: .jpg)")


def dataset_main(args, detector=None) -> int:
    """Run ``posetransfer dataset ACTION`` from parsed arguments; returns 0."""
    if args.dataset_command == "build":
        rep = build_dataset(args.photos, args.out, openpose_dir=args.openpose, detector=detector,
                            split=args.split, frame=_hw(args.frame), group_by=args.group_by,
                            min_joints=args.min_joints)
        print(f"annotated {rep.annotated} of {rep.images} photos, {rep.pairs} pairs")
        for name, why in rep.skipped[:10]:
            print(f"  skipped {name}: {why}")
        if len(rep.skipped) > 10:
            print(f"  ... and {len(rep.skipped) - 10} more skipped")
        print(f"wrote {rep.annotation_file} and {rep.pairs_file}")
    elif args.dataset_command == "to-pcdms":
        out = to_pcdms(args.annotations, args.pairs, args.out, _hw(args.frame))
        print(json.dumps(out))
    elif args.dataset_command == "from-pcdms":
        out = from_pcdms(args.poses, args.pairs_json, args.out, args.split, _hw(args.frame), args.image_ext)
        print(json.dumps(out))
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(f"dataset: unknown action {args.dataset_command!r}")
    return 0
