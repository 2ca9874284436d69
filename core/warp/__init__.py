"""The training-free FlowWarp: the part warp, hole filling, the flowwarp entry, compositing."""
