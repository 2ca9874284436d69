"""posetransfer: pose-guided person image synthesis for ComfyUI and Python.

This folder is both a ComfyUI custom-node pack (ComfyUI imports it under the folder's own name and reads
``NODE_CLASS_MAPPINGS``) and the installable package ``posetransfer``. Only relative imports inside.
"""

import os

__version__ = "0.1.0"

# Idle OpenMP threads spin by default; on a busy machine that slows torch's CPU kernels several times.
# Only a default: it takes effect when torch is imported after this (CLI, scripts), never overrides the user.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
