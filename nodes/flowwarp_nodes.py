"""FlowWarp node: move the photographed person into a target pose by warping pixels (no diffusion).

A thin wrapper over :func:`..core.warp.flowwarp.flow_warp`: ComfyUI tensors in, ComfyUI tensors out. The
``generate_mask`` output marks what the warp could not take from the photo (hidden body parts, background
the person covered); feed it, with the warped image, to an inpainting stage.
"""

from __future__ import annotations

import torch

from ..core.warp.flowwarp import (BACKGROUNDS, METHODS, FlowWarpOptions, check_flow_model, flow_model_method,
                                  iter_flow_warp)
from ..core.images import tensor_to_images
from ..core.warp.hole_fill import INPAINT_METHODS
from ..core.pose.keypoints import Pose
from ..core.pose.formats import dump_pose_keypoint
from ..core.pose.retarget import ANCHORS
from ..core.body.segmentation import SEGMENTATION_METHODS
from . import bridge
from .checks import IMAGE_NOTE, with_person
from .checks import poses as _poses

CATEGORY = "posetransfer/warp"
FLOW_MODEL_TYPE = "POSE_FLOW_MODEL"
# Saved workflows from before the methods were named single / structure say "model": still listed (ComfyUI
# refuses a combo value that is not), it takes the connected flow model's own kind.
OLD_MODEL_METHOD = "model"
DEFAULTS = FlowWarpOptions()  # the widgets' defaults are core's (the CLI's too)


def _size(pose: Pose) -> str:
    return f"{pose.width}x{pose.height}"


def _method(method: str, flow_model) -> str:
    """The FlowWarp method to run: ``method``, or for the old name ``model`` the connected flow model's kind."""
    if method != OLD_MODEL_METHOD:
        return method
    if flow_model is None:
        raise ValueError("flow_model: method 'model' needs a flow model; connect a POSE_FLOW_MODEL loader to "
                         "flow_model, or use method 'parts' (no model needed)")
    kind = flow_model_method(flow_model)
    if kind is None:
        raise ValueError(f"flow_model: method 'model' takes the kind of the flow model, but this "
                         f"{type(flow_model).__name__} does not say its kind; choose method 'single' or 'structure'")
    return kind


def _check_batch(n_images: int, n_sources: int, n_targets: int) -> None:
    if n_images == n_sources == n_targets or (n_images == 1 and n_sources == 1):
        return
    raise ValueError(f"image / source_pose / target_pose: got {n_images} image(s), {n_sources} source_pose frame(s) "
                     f"and {n_targets} target_pose frame(s); expected N images with N source_pose frames and N "
                     f"target_pose frames, or 1 image with 1 source_pose frame and any number of target_pose frames "
                     f"(a pose sequence)")


class PoseTransferFlowWarp:
    """Warp the photographed person into the target pose(s): image, mask of what is missing, flow picture."""

    DESCRIPTION = ("FlowWarp: move the person in the photo into the target pose by moving its pixels along a "
                   "dense flow, without diffusion. Body parts are cut out along the skeleton and placed onto the "
                   "target bones ('parts', no model), or a learned flow model supplies the flow ('single': the "
                   "single-spatial-transformation model, 'structure': the structure-aware part-flow model). The "
                   "result keeps "
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
                               "detected on a resized copy of the image (same frame, each side within a pixel) is "
                               "rescaled to it; another frame (a crop, another aspect ratio) is refused."}),
                "target_pose": ("POSE_KEYPOINT", {
                    "tooltip": "The pose(s) to move the person into: one frame per output image (a pose sequence "
                               "gives an animation)."}),
                "method": (list(METHODS) + [OLD_MODEL_METHOD], {
                    "default": DEFAULTS.method,
                    "tooltip": "parts: no model; cut the body into parts along the skeleton and move each part "
                               "onto its target bone (fast, always available). single / structure: the connected "
                               "flow_model predicts the flow, a single-spatial-transformation or a structure-aware "
                               "part-flow model (the kind that was trained and loaded). model: older workflows' "
                               "name, the connected flow_model's own kind."}),
                "segmentation": (list(SEGMENTATION_METHODS), {
                    "default": DEFAULTS.segmentation,
                    "tooltip": "How the person is cut out of the photo. grabcut: follows the real outline "
                               "(loose clothes, hair) from colour, best when person and background differ in "
                               "colour. skeleton: a fixed-width shape around the bones; faster and predictable, "
                               "but clips wide clothes and hair."}),
                "background": (list(BACKGROUNDS), {
                    "default": DEFAULTS.background,
                    "tooltip": "What appears behind the moved person. inpaint: the photo with the person removed "
                               "and the gap filled (see 'fill'), so the person is not shown twice. keep: the photo "
                               "unchanged (the old pose stays visible behind). black / white: a cut-out on a "
                               "plain background."}),
                "fill": (list(INPAINT_METHODS), {
                    "default": DEFAULTS.fill,
                    "tooltip": "How the area the source person leaves is filled before any diffusion: mirror: the "
                               "backdrop beside it mirrored in, so a street or wall keeps its grain (a seam can show "
                               "in the middle). pyramid: smooth colours blended in from around the gap (fast, soft; "
                               "a flat patch on busy backdrops). telea: OpenCV inpainting that continues nearby "
                               "edges a little (slower on big areas). Holes inside the person that no part's "
                               "texture covers are filled smoothly (pyramid) with mirror. Each is a placeholder: "
                               "generate_mask marks these areas for a proper inpainting pass."}),
                "retarget": ("BOOLEAN", {
                    "default": DEFAULTS.retarget,
                    "tooltip": "On: first give the target pose the photographed person's body proportions (bone "
                               "lengths) on the photo's canvas, so a tall model copying a short dancer keeps "
                               "their own build. Off: use target_pose exactly as given (e.g. when a Retarget Pose "
                               "node already did this)."}),
                "anchor": (list(ANCHORS), {
                    "default": DEFAULTS.anchor,
                    "tooltip": "Only with retarget on. source: the moved person stays where they stand in the "
                               "photo. target: they move to where the target person stands."}),
                "source_person": ("INT", {
                    "default": DEFAULTS.source_person, "min": 0, "max": 1000,
                    "tooltip": "Which person of the photo to move, when the source pose has several "
                               "(0 = first in the keypoint file)."}),
                "target_person": ("INT", {
                    "default": DEFAULTS.target_person, "min": 0, "max": 1000,
                    "tooltip": "Which person of each target frame gives the pose (0 = first in the keypoint "
                               "file)."}),
            },
            "optional": {
                "flow_model": (FLOW_MODEL_TYPE, {
                    "tooltip": "A learned flow model (POSE_FLOW_MODEL from a posetransfer model loader). Used "
                               "only with method single / structure (or model); ignored with 'parts'."}),
            },
        }

    def warp(self, image, source_pose, target_pose, method=DEFAULTS.method, segmentation=DEFAULTS.segmentation,
             background=DEFAULTS.background, fill=DEFAULTS.fill, retarget=DEFAULTS.retarget, anchor=DEFAULTS.anchor,
             source_person=DEFAULTS.source_person, target_person=DEFAULTS.target_person, flow_model=None):
        images = tensor_to_images(image, "image")
        sources = _poses(source_pose, "source_pose")
        targets = _poses(target_pose, "target_pose")
        _check_batch(len(images), len(sources), len(targets))
        method = _method(method, flow_model)
        estimator = None if method == "parts" else flow_model  # a connected model is ignored with parts
        check_flow_model(method, estimator, "flow_model")
        options = FlowWarpOptions(method=method, segmentation=segmentation, background=background, fill=fill,
                                  retarget=bool(retarget), anchor=anchor, source_person=int(source_person),
                                  target_person=int(target_person))
        with_person(sources, "source_pose", options.source_person, "source_person")
        with_person(targets, "target_pose", options.target_person, "target_person")
        height, width = images.shape[1:3]
        if not options.retarget:  # retargeted poses all lie on the photo's canvas
            for i, t in enumerate(targets[1:], 1):
                if (t.width, t.height) != (targets[0].width, targets[0].height):
                    raise ValueError(
                        f"target_pose[{i}]: canvas {_size(t)} differs from target_pose[0]'s {_size(targets[0])}; "
                        f"the frames of one batch are stacked into one IMAGE and need one size. Turn retarget on "
                        f"(every frame on the photo's canvas) or bring the target poses to one canvas")

        # Checks every frame's input now; rescales a source pose detected on a resized copy of its image.
        frames = iter_flow_warp(list(images), sources, targets, options, estimator=estimator)
        # The outputs are allocated once and filled frame by frame; no frame's intermediate results are kept,
        # so memory follows the output batch (a long pose sequence used to hold every frame's results twice).
        total = len(targets)
        height, width = (height, width) if options.retarget else (targets[0].height, targets[0].width)
        out_image = torch.empty(total, height, width, 3)
        generate = torch.empty(total, height, width)
        flow_image = torch.empty(total, height, width, 3)
        person = torch.empty(total, height, width)
        used = []
        bar = bridge.ProgressBar(total)
        bridge.check_interrupt()
        for i in range(total):  # not enumerate(frames): its cached tuple would keep the last frame alive
            r = next(frames)
            if tuple(r.image.shape[-2:]) != (height, width):
                raise ValueError(f"target_pose[{i}]: output size {r.image.shape[-1]}x{r.image.shape[-2]} differs "
                                 f"from the batch's {width}x{height}; all frames of one batch need one canvas"
                                 + ("" if estimator is None else " (check flow_model)"))
            if not torch.isfinite(r.image).all() or not torch.isfinite(r.flow).all():
                raise ValueError(f"target_pose[{i}]: the warp produced NaN or infinite values"
                                 + ("" if estimator is None else " (check flow_model)"))
            out_image[i] = r.image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1)
            generate[i] = r.generate_mask.cpu()
            flow_image[i] = r.flow_image.cpu().permute(1, 2, 0)
            person[i] = r.person.detach().float().cpu().clamp(0, 1)
            used.append(r.target_pose)
            del r  # before the next frame is made
            bar.update(1)
            if i + 1 < total:  # ComfyUI's cancel stops the run within one frame
                bridge.check_interrupt()
        return out_image, generate, flow_image, person, dump_pose_keypoint(used)


NODE_CLASS_MAPPINGS = {"PoseTransferFlowWarp": PoseTransferFlowWarp}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseTransferFlowWarp": "FlowWarp (posetransfer)"}
