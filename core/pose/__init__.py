"""Poses: keypoints, pose files, geometry, retargeting, rendering, detection, input checks."""
