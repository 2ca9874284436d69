"""The body in the picture: body parts, their distance fields and transforms, segmentation, views."""
