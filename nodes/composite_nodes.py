"""Composite Where Real: an inpainting model's picture back over FlowWarp's, real pixels untouched.

A thin wrapper over :func:`..core.warp.composite.composite_where_real`. ComfyUI's ImageCompositeMasked blends with
any mask and stretches a differently sized source; this node keeps FlowWarp's real pixels bit-identical, feathers
only inside the area to generate, and puts a VAE-cropped picture back where the inpainting encoder cut it.
"""

from __future__ import annotations

import torch

from ..core.warp.composite import MAX_VAE_CROP, composite_where_real
from ..core.images import tensor_to_mask
from .checks import IMAGE_NOTE, image, int_in

CATEGORY = "posetransfer/warp"


class PoseTransferCompositeReal:
    """Generated pixels where FlowWarp made content up, FlowWarp's real pixels everywhere else."""

    DESCRIPTION = ("Finish a FlowWarp image with your own inpainting model: takes the inpainted picture only "
                   "where generate_mask says content had to be made up, and keeps every pixel FlowWarp took "
                   "from the photo exactly as it was (the VAE round trip of the inpainting model never blurs "
                   "the real face and clothes). 'feather' softens the seam inside the generated area only. "
                   "A picture a few pixels smaller (inpainting encoders crop to a multiple of 8) is put back "
                   "where the encoder cut it.")
    CATEGORY = CATEGORY
    FUNCTION = "composite"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("FlowWarp's image with the generated pixels inside generate_mask; same size as "
                       "warped_image.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "warped_image": ("IMAGE", {
                "tooltip": "FlowWarp's 'image' output (1 frame, or one per generated frame)." + IMAGE_NOTE}),
            "generated_image": ("IMAGE", {
                "tooltip": "The inpainting model's result (VAE Decode after the KSampler). The same size as "
                           "warped_image, up to " + str(MAX_VAE_CROP - 1) + " pixels smaller per side (an "
                           "encoder's crop, placed back centred), or any other size (resized)." + IMAGE_NOTE}),
            "generate_mask": ("MASK", {
                "tooltip": "FlowWarp's 'generate_mask' output, NOT the grown / blurred copy made for the "
                           "sampler: pixels where it is 0 are kept from warped_image bit for bit."}),
            "feather": ("INT", {
                "default": 4, "min": 0, "max": 256,
                "tooltip": "Width in pixels of the soft transition, measured from the edge of the real area "
                           "INTO the generated area (real pixels are never blended). 0: hard edge."}),
        }}

    def composite(self, warped_image, generated_image, generate_mask, feather=4):
        warped = image(warped_image, "warped_image")
        generated = image(generated_image, "generated_image")
        mask = torch.from_numpy(tensor_to_mask(generate_mask, "generate_mask"))
        feather = int_in(feather, "feather", 0, 256)
        for what, frames in (("generated_image", generated.shape[0]), ("generate_mask", mask.shape[0])):
            if frames not in (1, warped.shape[0]) and warped.shape[0] != 1:
                raise ValueError(f"{what}: expected 1 frame or one per warped_image frame ({warped.shape[0]}), "
                                 f"got {frames}")
        return (composite_where_real(warped, generated, mask, feather),)


NODE_CLASS_MAPPINGS = {"PoseTransferCompositeReal": PoseTransferCompositeReal}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseTransferCompositeReal": "Composite Where Real (posetransfer)"}
