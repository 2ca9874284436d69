"""Flow model loader node: a learned flow model from ``models/posetransfer`` -> POSE_FLOW_MODEL for FlowWarp.

Lists what ``posetransfer train-flow`` saves: model folders (``OUT/model`` copied or linked into the model
folder: ``flow_net/`` + ``refiner/`` for the single-transformation model, a ``PartFlowNet`` folder for the part-flow
model) and one-file exports (``--single-file``: ``flow_model.safetensors``, renamed as you like). Loading goes
through :func:`..core.flow_models.model_files.load_flow_model`, as the CLI's ``transfer --model`` does.
"""

from __future__ import annotations

import os
import posixpath

from ..core.flow_models.model_files import KINDS, MARKER, load_flow_model, model_file_kind
from . import bridge
from .loaded_models import LoadCache, chosen_kind, chosen_model, config_class, kind_input, model_input
from .flowwarp_nodes import FLOW_MODEL_TYPE

CATEGORY = "posetransfer/warp"

_CACHE = LoadCache(1)  # (path stamp, kind) -> ManagedFlowModel


class ManagedFlowModel:
    """POSE_FLOW_MODEL: a loaded flow estimator whose networks are handed to ComfyUI's model management.

    FlowWarp calls ``estimate`` / ``generate``; each call first makes the networks resident
    (:meth:`bridge.ManagedModel.load`: ComfyUI's ``load_models_gpu`` inside ComfyUI, which keeps them loaded
    between runs and may offload them between calls) and points the estimator at that device."""

    def __init__(self, estimator):
        self.estimator = estimator
        modules = {name: getattr(estimator, name, None) for name in ("flow_net", "refiner", "model")}
        self.managed = bridge.managed(modules)

    def _ready(self):
        device = self.managed.load()
        if hasattr(self.estimator, "device"):  # the single-transformation estimator places its inputs there
            self.estimator.device = device
        return self.estimator

    def estimate(self, source, source_pose, target_pose):
        return self._ready().estimate(source, source_pose, target_pose)

    def __getattr__(self, name):  # everything else (generate, refiner, flow_net, ...) from the estimator
        if name in ("estimator", "managed"):
            raise AttributeError(name)
        value = getattr(self.estimator, name)
        if name == "generate":  # runs the networks too (only the single-transformation estimator has it)
            return lambda *args, **kwargs: getattr(self._ready(), name)(*args, **kwargs)
        return value


def _folder_candidates(name: str) -> tuple[str, ...]:
    """Files that make ``name`` (a folder, relative to the model folder) a flow model, in the order tried."""
    join = (lambda f: f) if name in ("", ".") else (lambda f: f"{name}/{f}")
    return join(MARKER), join("flow_net/config.json"), join("config.json")


def list_flow_models() -> list[str]:
    """Flow model folders (relative, ``/``-separated) and one-file exports in the posetransfer model folder(s)."""
    files = bridge.list_model_files({".json", ".safetensors"})
    folders: set[str] = set()
    for name in files:
        base, parent = posixpath.basename(name), posixpath.dirname(name)
        if base == MARKER:
            folders.add(parent or ".")
        elif base == "config.json":
            cls = config_class(name)
            if cls == "SingleTransformFlowNet" and posixpath.basename(parent) == "flow_net":
                folders.add(posixpath.dirname(parent) or ".")
            elif cls in ("SingleTransformFlowNet", "PartFlowNet"):
                folders.add(parent or ".")
    singles = []
    for name in files:
        if not name.lower().endswith(".safetensors"):
            continue
        if any(name.startswith(f + "/") for f in folders if f != "."):
            continue  # weights inside a model folder
        try:
            if model_file_kind(bridge.model_file_path(name)) is not None:
                singles.append(name)
        except FileNotFoundError:
            continue
    return sorted(folders) + sorted(singles)


def model_path(name: str) -> str:
    """Full path of a listed flow model (folder or file); FileNotFoundError saying where it looked."""
    if name.lower().endswith(".safetensors"):
        return bridge.model_file_path(name)
    for rel in _folder_candidates(name):
        try:
            path = bridge.model_file_path(rel)
        except FileNotFoundError:
            continue
        folder = os.path.dirname(path)
        return os.path.dirname(folder) if rel.endswith("flow_net/config.json") else folder
    raise FileNotFoundError(f"flow model {name!r} not found in the posetransfer model folder(s); expected a folder "
                            f"saved by 'posetransfer train-flow' (OUT/model) or its --single-file export there")


class PoseTransferFlowModelLoader:
    """Load a learned flow model (single spatial transformation or structure-aware part flow) for FlowWarp."""

    DESCRIPTION = ("Load a learned flow model trained with 'posetransfer train-flow' from models/posetransfer: the "
                   "single-spatial-transformation model or the structure-aware part-flow model (copy the run's "
                   "OUT/model folder, or its flow_model.safetensors file, there). Connect the output to FlowWarp's "
                   "flow_model input and set FlowWarp's method to the model's kind ('single' or 'structure').")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (FLOW_MODEL_TYPE,)
    RETURN_NAMES = ("flow_model",)
    OUTPUT_TOOLTIPS = ("The flow model; connect it to FlowWarp's flow_model input (method 'single' or 'structure', the kind of the model).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": model_input(list_flow_models(), "A flow model in models/posetransfer: a folder written by "
                                                          "train-flow (OUT/model) or a one-file .safetensors export "
                                                          "(--single-file)."),
            "kind": kind_input(KINDS, "auto: read the model kind from its files. single / parts: also check that the "
                                      "model is of this kind (single spatial transformation / structure-aware part "
                                      "flow)."),
        }}

    def load(self, model_name, kind="auto"):
        chosen_model(model_name, "model_name", "no flow model found in the posetransfer model folder; train one with "
                                               "'posetransfer train-flow', copy its OUT/model folder there and "
                                               "refresh")
        kind = chosen_kind(kind, KINDS)
        path = model_path(model_name)

        def load():
            return ManagedFlowModel(load_flow_model(path, None if kind == "auto" else kind, device="cpu"))

        # corrupt files (diffusers: OSError; torch: RuntimeError) -> ValueError naming the model
        return (_CACHE.load(path, (kind,), load, f"model_name: cannot load flow model {model_name!r}",
                            errors=(OSError, ValueError, RuntimeError)),)


NODE_CLASS_MAPPINGS = {"PoseTransferFlowModelLoader": PoseTransferFlowModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseTransferFlowModelLoader": "Load Flow Model (posetransfer)"}
