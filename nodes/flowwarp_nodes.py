"""FlowWarp node: move the photographed person into a target pose by warping pixels (no diffusion).

A thin wrapper over :func:`..core.flowwarp.flow_warp`: ComfyUI tensors in, ComfyUI tensors out. The
``generate_mask`` output marks what the warp could not take from the photo (hidden body parts, background
the person covered); feed it, with the warped image, to an inpainting stage.
"""

from __future__ import annotations

import torch

from ..core.flow import flow_to_color
from ..core.flowwarp import BACKGROUNDS, METHODS, FlowWarpOptions, flow_warp
from ..core.geometry import resize
from ..core.images import tensor_to_images
from ..core.inpaint import INPAINT_METHODS
from ..core.keypoints import Pose
from ..core.pose_io import dump_pose_keypoint, load_pose_keypoint
from ..core.retarget import ANCHORS
from ..core.segmentation import SEGMENTATION_METHODS
from . import bridge
from .checks import IMAGE_NOTE, with_person

CATEGORY = "posetransfer/warp"
FLOW_MODEL_TYPE = "POSE_FLOW_MODEL"
ASPECT_TOLERANCE = 0.01  # a source pose whose canvas has the image's aspect ratio (within 1 %) is rescaled to it


def _poses(data, what: str) -> list[Pose]:
    poses = load_pose_keypoint(data, what=what)
    if not poses:
        raise ValueError(f"{what}: expected at least one frame, got an empty list")
    return poses


def _size(pose: Pose) -> str:
    return f"{pose.width}x{pose.height}"


def _fit_source_pose(pose: Pose, width: int, height: int, what: str) -> Pose:
    """``pose`` on the image canvas: unchanged when the canvases agree, rescaled when only the resolution
    differs (the image was resized after pose detection), else a ValueError."""
    if (pose.width, pose.height) == (width, height):
        return pose
    if abs(pose.width / pose.height - width / height) > ASPECT_TOLERANCE * (width / height):
        raise ValueError(f"{what}: canvas {_size(pose)} does not match the image {width}x{height} (another aspect "
                         f"ratio); detect the source pose on this image, or crop / resize image and pose together")
    return resize(None, pose, width, height)[1]


def _check_batch(n_images: int, n_sources: int, n_targets: int) -> None:
    if n_images == n_sources == n_targets or (n_images == 1 and n_sources == 1):
        return
    raise ValueError(f"image / source_pose / target_pose: got {n_images} image(s), {n_sources} source_pose frame(s) "
                     f"and {n_targets} target_pose frame(s); expected N images with N source_pose frames and N "
                     f"target_pose frames, or 1 image with 1 source_pose frame and any number of target_pose frames "
                     f"(a pose sequence)")


def _check_flow_model(flow_model, method: str) -> None:
    if method != "model":
        return
    if flow_model is None:
        raise ValueError("flow_model: method 'model' needs a flow model; connect a POSE_FLOW_MODEL loader to "
                         "flow_model, or use method 'parts' (no model needed)")
    if not callable(getattr(flow_model, "estimate", None)):
        raise ValueError(f"flow_model: expected a flow model with an estimate(source, source_pose, target_pose) "
                         f"method, got {type(flow_model).__name__}")


class PoseTransferFlowWarp:
    """Warp the photographed person into the target pose(s): image, mask of what is missing, flow picture."""

    DESCRIPTION = ("FlowWarp: move the person in the photo into the target pose by moving its pixels along a "
                   "dense flow, without diffusion. Body parts are cut out along the skeleton and placed onto the "
                   "target bones ('parts'), or a learned flow model supplies the flow ('model'). The result keeps "
                   "the person's exact clothes and face; what the photo cannot show (a hidden arm, the background "
                   "behind the old pose) is marked in generate_mask, ready for an inpainting node. "
                   "Batches: 1 image + 1 source pose + N target poses (animate a photo along a pose sequence), "
                   "or N images + N source poses + N target poses.")
    CATEGORY = CATEGORY
    FUNCTION = "warp"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "MASK", "POSE_KEYPOINT")
    RETURN_NAMES = ("image", "generate_mask", "flow_image", "person_mask", "target_pose")
    OUTPUT_TOOLTIPS = (
        "The warped picture, one frame per target pose, on the target canvas (the photo's canvas when "
        "retarget is on).",
        "1 where content had to be made up (body parts the photo hides, background the person covered), 0 where "
        "the pixels are real. Connect it to an inpainting node (e.g. VAE Encode (for Inpainting)) together with "
        "'image' to repaint just those areas.",
        "A colour picture of the flow, for checking: white = pixel stayed put, hue = direction it came from, "
        "stronger colour = moved further.",
        "Where the moved person is (soft edge), e.g. to composite it over another background.",
        "The pose each frame was warped into, in pixels of the output canvas (after retargeting); connect it to "
        "an OpenPose ControlNet for a diffusion refinement pass.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {
                    "tooltip": "The photo(s) of the person to move: 1 image (animated along all target poses) or "
                               "one image per target pose." + IMAGE_NOTE}),
                "source_pose": ("POSE_KEYPOINT", {
                    "tooltip": "OpenPose keypoints detected on 'image' (e.g. DWPose): one frame per image. A pose "
                               "detected on a resized copy of the image is rescaled if the aspect ratio matches."}),
                "target_pose": ("POSE_KEYPOINT", {
                    "tooltip": "The pose(s) to move the person into: one frame per output image (a pose sequence "
                               "gives an animation)."}),
                "method": (list(METHODS), {
                    "default": "parts",
                    "tooltip": "parts: no model; cut the body into parts along the skeleton and move each part "
                               "onto its target bone (fast, always available). model: the connected flow_model "
                               "predicts the flow (needs flow_model)."}),
                "segmentation": (list(SEGMENTATION_METHODS), {
                    "default": "grabcut",
                    "tooltip": "How the person is cut out of the photo. grabcut: follows the real outline "
                               "(loose clothes, hair) from colour, best when person and background differ in "
                               "colour. skeleton: a fixed-width shape around the bones; faster and predictable, "
                               "but clips wide clothes and hair."}),
                "background": (list(BACKGROUNDS), {
                    "default": "inpaint",
                    "tooltip": "What appears behind the moved person. inpaint: the photo with the person removed "
                               "and the gap filled (see 'fill'), so the person is not shown twice. keep: the photo "
                               "unchanged (the old pose stays visible behind). black / white: a cut-out on a "
                               "plain background."}),
                "fill": (list(INPAINT_METHODS), {
                    "default": "pyramid",
                    "tooltip": "How gaps are filled before any diffusion: pyramid: smooth colours blended in from "
                               "around the gap (fast, soft). telea: OpenCV inpainting that continues nearby edges "
                               "a little (slower on big areas). Either is a placeholder: generate_mask marks these "
                               "areas for a proper inpainting pass."}),
                "retarget": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "On: first give the target pose the photographed person's body proportions (bone "
                               "lengths) on the photo's canvas, so a tall model copying a short dancer keeps "
                               "their own build. Off: use target_pose exactly as given (e.g. when a Retarget Pose "
                               "node already did this)."}),
                "anchor": (list(ANCHORS), {
                    "default": "source",
                    "tooltip": "Only with retarget on. source: the moved person stays where they stand in the "
                               "photo. target: they move to where the target person stands."}),
                "source_person": ("INT", {
                    "default": 0, "min": 0, "max": 1000,
                    "tooltip": "Which person of the photo to move, when the source pose has several "
                               "(0 = first in the keypoint file)."}),
                "target_person": ("INT", {
                    "default": 0, "min": 0, "max": 1000,
                    "tooltip": "Which person of each target frame gives the pose (0 = first in the keypoint "
                               "file)."}),
            },
            "optional": {
                "flow_model": (FLOW_MODEL_TYPE, {
                    "tooltip": "A learned flow model (POSE_FLOW_MODEL from a posetransfer model loader). Used "
                               "only when method is 'model'; ignored with 'parts'."}),
            },
        }

    def warp(self, image, source_pose, target_pose, method="parts", segmentation="grabcut", background="inpaint",
             fill="pyramid", retarget=True, anchor="source", source_person=0, target_person=0, flow_model=None):
        images = tensor_to_images(image, "image")
        sources = _poses(source_pose, "source_pose")
        targets = _poses(target_pose, "target_pose")
        _check_batch(len(images), len(sources), len(targets))
        options = FlowWarpOptions(method=method, segmentation=segmentation, background=background, fill=fill,
                                  retarget=bool(retarget), anchor=anchor, source_person=int(source_person),
                                  target_person=int(target_person))
        _check_flow_model(flow_model, method)
        with_person(sources, "source_pose", options.source_person, "source_person")
        with_person(targets, "target_pose", options.target_person, "target_person")
        height, width = images.shape[1:3]
        sources = [_fit_source_pose(p, width, height, f"source_pose[{i}]") for i, p in enumerate(sources)]
        if not options.retarget:  # retargeted poses all lie on the photo's canvas
            for i, t in enumerate(targets[1:], 1):
                if (t.width, t.height) != (targets[0].width, targets[0].height):
                    raise ValueError(
                        f"target_pose[{i}]: canvas {_size(t)} differs from target_pose[0]'s {_size(targets[0])}; "
                        f"the frames of one batch are stacked into one IMAGE and need one size. Turn retarget on "
                        f"(every frame on the photo's canvas) or bring the target poses to one canvas")

        total = len(targets)
        bar = bridge.ProgressBar(total)

        def progress(done, n):
            bar.update(1)
            if done < n:
                bridge.check_interrupt()

        bridge.check_interrupt()
        results = flow_warp(list(images), sources, targets, options,
                            estimator=flow_model if method == "model" else None, progress=progress)

        first = tuple(results[0].image.shape[-2:])
        for i, r in enumerate(results):
            if tuple(r.image.shape[-2:]) != first:
                raise ValueError(f"target_pose[{i}]: output size {r.image.shape[-1]}x{r.image.shape[-2]} differs "
                                 f"from frame 0's {first[1]}x{first[0]}; all frames of one batch need one canvas")
            if not torch.isfinite(r.image).all() or not torch.isfinite(r.flow).all():
                raise ValueError(f"target_pose[{i}]: the warp produced NaN or infinite values"
                                 + (" (check flow_model)" if method == "model" else ""))

        out_image = torch.stack([r.image.detach().float().cpu().permute(1, 2, 0) for r in results]).clamp(0, 1)
        visibility = torch.stack([r.visibility.detach().float().cpu() for r in results])
        person = torch.stack([r.person.detach().float().cpu() for r in results]).clamp(0, 1)
        flows = torch.stack([r.flow.detach().float().cpu() for r in results])
        flow_image = flow_to_color(flows).permute(0, 2, 3, 1)
        return (out_image.contiguous(), (1 - visibility).clamp(0, 1).contiguous(),
                flow_image.float().contiguous(), person.contiguous(),
                dump_pose_keypoint([r.target_pose for r in results]))


NODE_CLASS_MAPPINGS = {"PoseTransferFlowWarp": PoseTransferFlowWarp}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseTransferFlowWarp": "FlowWarp (posetransfer)"}
