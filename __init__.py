"""posetransfer: pose-guided person image synthesis for ComfyUI and Python.

This folder is both a ComfyUI custom-node pack (ComfyUI imports it under the folder's own name and reads
``NODE_CLASS_MAPPINGS``) and the installable package ``posetransfer``. Only relative imports inside.
"""

import os

__version__ = "0.1.0"

# Idle OpenMP threads spin by default; on a busy machine that slows torch's CPU kernels several times.
# Only a default: it takes effect when torch is imported after this (CLI, scripts), never overrides the user.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Imported as a lone module, outside any package: pytest does this to the checkout folder (it holds an
    # __init__.py) when the folder's name is not an identifier, e.g. ``ComfyUI-posetransfer``. There is no
    # package to import the nodes from then, and nothing reads the mappings.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

# ComfyUI serves this folder to the frontend; its docs/<NodeClass>.md are the nodes' help pages.
WEB_DIRECTORY = "./web"


def __getattr__(name):
    """``posetransfer.transfer`` / ``posetransfer.load_models`` (core/transfer.py), imported on first use."""
    if name in ("transfer", "load_models") and __package__:
        from .core import transfer as _entry

        return getattr(_entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__", "transfer",
           "load_models"]
