"""ComfyUI nodes: thin wrappers over ``core``. Each module exports its own mappings; merged here."""

from . import bridge
from . import composite_nodes
from . import detect_nodes
from . import flow_model_nodes
from . import flowwarp_nodes
from . import pcdms_nodes
from . import pose_nodes
from . import repose_nodes

# Add new node modules here (e.g. ``flowwarp_nodes``): import them above and list them in _MODULES.
_MODULES = (pose_nodes, flowwarp_nodes, composite_nodes, flow_model_nodes, detect_nodes, pcdms_nodes, repose_nodes)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

bridge.register_model_folder()  # no-op outside ComfyUI
