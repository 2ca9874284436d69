"""posetransfer: pose-guided person image synthesis for ComfyUI and Python.

This folder is both a ComfyUI custom-node pack (ComfyUI imports it under the folder's own name and reads
``NODE_CLASS_MAPPINGS``) and the installable package ``posetransfer``. Only relative imports inside.
"""

__version__ = "0.1.0"

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
