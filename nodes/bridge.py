"""The one place that talks to ComfyUI. Every function falls back cleanly when ComfyUI is not installed.

ComfyUI modules are imported lazily, inside each function, so the nodes run (and tests can inject fake
``comfy`` / ``folder_paths`` modules) without ComfyUI.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import weakref

import torch

MODEL_FOLDER = "posetransfer"
MODEL_EXTENSIONS = {".safetensors", ".pt", ".pth", ".bin", ".onnx", ".json"}

_interrupt_callback = None


def _optional(name: str):
    """The module ``name``, or None when it cannot be imported (ComfyUI absent)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def comfy_available() -> bool:
    """True when running inside ComfyUI (its ``folder_paths`` and ``comfy.model_management`` import)."""
    return _optional("folder_paths") is not None and _optional("comfy.model_management") is not None


def get_device() -> torch.device:
    """ComfyUI's compute device, else CUDA when available, else the CPU."""
    mm = _optional("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ProgressBar:
    """Progress reporting: forwards to ``comfy.utils.ProgressBar`` when present; always counts in
    ``current`` / ``total`` so tests can inspect it."""

    def __init__(self, total: int):
        self.total = int(total)
        self.current = 0
        utils = _optional("comfy.utils")
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, n: int = 1, preview=None) -> None:
        """Advance by ``n``; ``preview`` (from a :func:`latent_previewer`) is shown on the node while it runs."""
        self.current += n
        if self._bar is not None:
            if preview is None:
                self._bar.update(n)
            else:
                self._bar.update_absolute(self.current, self.total, preview)


def latent_previewer():
    """A function ``latents -> preview`` for :meth:`ProgressBar.update`, drawing the clean-latent estimate of a
    sampling step the way ComfyUI's own samplers do (its ``--preview-method``: Latent2RGB factors or TAESD, for
    the SD 1.x / 2.x latent space that our models use, latents scaled by the VAE's scaling factor; latents with
    other than 4 channels get no preview). None without ComfyUI or with previews off."""
    lp, formats = _optional("latent_preview"), _optional("comfy.latent_formats")
    if lp is None or formats is None:
        return None
    previewer = lp.get_previewer(get_device(), formats.SD15())
    if previewer is None:
        return None

    def preview(latents: torch.Tensor):
        if latents is None or latents.ndim != 4 or latents.shape[1] != 4:
            return None
        return previewer.decode_latent_to_preview_image("JPEG", latents[:1].detach().float())

    return preview


def set_interrupt_callback(callback) -> None:
    """Install a callable that :func:`check_interrupt` also runs (raise in it to cancel); None removes it."""
    global _interrupt_callback
    _interrupt_callback = callback


def check_interrupt() -> None:
    """Raise if the user cancelled the run (ComfyUI's interrupt, or the installed test callback)."""
    if _interrupt_callback is not None:
        _interrupt_callback()
    mm = _optional("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def input_directory() -> str:
    """ComfyUI's input folder; else ``$POSETRANSFER_INPUT_DIR``, default ``./input``."""
    fp = _optional("folder_paths")
    if fp is not None:
        return fp.get_input_directory()
    return os.environ.get("POSETRANSFER_INPUT_DIR") or os.path.join(os.getcwd(), "input")


def _fallback_models_dir() -> str:
    return os.environ.get("POSETRANSFER_MODELS_DIR") or os.path.join(os.getcwd(), "models", MODEL_FOLDER)


def register_model_folder() -> str:
    """Register ``models/posetransfer`` with ComfyUI (extensions :data:`MODEL_EXTENSIONS`); return its path.

    Without ComfyUI nothing is registered and the fallback folder is returned."""
    fp = _optional("folder_paths")
    if fp is None:
        return _fallback_models_dir()
    path = os.path.join(fp.models_dir, MODEL_FOLDER)
    fp.add_model_folder_path(MODEL_FOLDER, path)
    paths, exts = fp.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    if path not in paths:  # old ComfyUI only appends to folders it already knows
        paths = [*paths, path]
    fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | MODEL_EXTENSIONS)
    return path


def list_model_files(extensions=None) -> list[str]:
    """Sorted model file names (relative, ``/``-separated) in the posetransfer model folder(s)."""
    exts = {e.lower() for e in (extensions or MODEL_EXTENSIONS)}
    fp = _optional("folder_paths")
    if fp is not None:
        names = fp.get_filename_list(MODEL_FOLDER)
    else:
        root = _fallback_models_dir()
        names = [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                 for d, _, files in os.walk(root, followlinks=True) for f in files]
    return sorted(n for n in names if os.path.splitext(n)[1].lower() in exts)


def model_file_path(name: str) -> str:
    """Full path of model file ``name``; FileNotFoundError saying where it looked when it is missing."""
    fp = _optional("folder_paths")
    if fp is not None:
        path = fp.get_full_path(MODEL_FOLDER, name)
        where = fp.folder_names_and_paths.get(MODEL_FOLDER, ([],))[0]
    else:
        path = os.path.join(_fallback_models_dir(), name)
        where = [_fallback_models_dir()]
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"model file {name!r} not found in the posetransfer model folder(s) "
                                f"{list(where)}; put it there (or set POSETRANSFER_MODELS_DIR outside ComfyUI)")
    return path


# ------------------------------------------------------------------------------------- model management
class _Holder(torch.nn.Module):
    """The plain module ComfyUI's ModelPatcher wraps: it sets attributes on its model (``device``, lowvram
    counters), which diffusers' ModelMixin refuses (``device`` is a read-only property there)."""

    def __init__(self, modules: dict):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)


def make_plain(module: torch.nn.Module) -> None:
    """Replace, in place, parameters and buffers that are inference tensors (made under ComfyUI's
    ``torch.inference_mode()``, e.g. by its offload) with plain copies, so autograd can save them for backward.
    Setting ``.data`` is not enough: the Parameter object itself stays an inference tensor."""
    with torch.inference_mode(False):
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()


class ManagedModel:
    """One or more of our torch modules, handed to ComfyUI's model management.

    Inside ComfyUI the modules (in one :class:`_Holder`) get one ``comfy.model_patcher.ModelPatcher`` (load device
    ``get_torch_device()``, offload device ``unet_offload_device()``), made once and kept, so ComfyUI counts their
    memory, keeps them loaded between runs and unloads them when another model needs the room. Without ComfyUI
    they are simply moved to :func:`get_device` (and back to the CPU by :func:`on_device`). Make one per loaded
    model with :func:`managed` (the same object for the same modules)."""

    def __init__(self, modules: dict):
        self.modules = dict(modules)
        # A subclass named after the modules: ComfyUI logs "Requested to load <class name>".
        name = "_".join(type(m).__name__ for m in self.modules.values()) or "_Holder"
        self._holder = type(name, (_Holder,), {})(self.modules)
        self.patcher = None  # made on the first load inside ComfyUI

    @property
    def module(self) -> torch.nn.Module:
        """The module, when there is one."""
        (module,) = self.modules.values()
        return module

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        for t in self._holder.parameters():
            return t.device
        return torch.device("cpu")

    def comfy_patcher(self):
        """The ModelPatcher (made on the first call), or None without ComfyUI."""
        if self.patcher is None:
            mm = _manager()
            if mm is None:
                return None
            patcher_class = importlib.import_module("comfy.model_patcher").ModelPatcher
            self.patcher = patcher_class(self._holder, load_device=mm.get_torch_device(),
                                         offload_device=mm.unet_offload_device())
        return self.patcher

    def load(self) -> torch.device:
        """Make the modules resident on the compute device (:func:`load_models`); returns it."""
        return load_models(self)


_MANAGED: "weakref.WeakValueDictionary[tuple, ManagedModel]" = weakref.WeakValueDictionary()


def managed(modules) -> ManagedModel:
    """The :class:`ManagedModel` of ``modules`` (one module or a dict name -> module; None entries dropped): the
    same object while it is alive, so a model loaded once keeps one ModelPatcher however many nodes use it."""
    if isinstance(modules, torch.nn.Module):
        modules = {"model": modules}
    modules = {k: m for k, m in modules.items() if m is not None}
    key = tuple((k, id(m)) for k, m in modules.items())
    found = _MANAGED.get(key)
    if found is None:  # the entry dies with the ManagedModel, which holds the modules: ids cannot be reused
        found = _MANAGED[key] = ManagedModel(modules)
    return found


def _manager():
    """ComfyUI's ``comfy.model_management`` when ComfyUI (with its ModelPatcher) is present, else None."""
    mm = _optional("comfy.model_management")
    return mm if mm is not None and _optional("comfy.model_patcher") is not None else None


def _comfy_patchers(objects) -> list:
    """ComfyUI's own models (a VAE, a CLIP_VISION: they carry a ``patcher``), for loading beside ours."""
    return [o.patcher for o in objects if o is not None and getattr(o, "patcher", None) is not None]


def load_models(*models: ManagedModel, comfy_objects=()) -> torch.device:
    """Make ``models`` resident on the compute device together; returns the device.

    Inside ComfyUI: one ``load_models_gpu`` call with their patchers and those of ``comfy_objects`` (e.g. the
    VAE a stage calls into), fully loaded (plain torch modules cannot run partially loaded, unlike ComfyUI's cast
    ops). It runs outside inference mode so that moved weights stay plain tensors that autograd can use.
    Without ComfyUI: each model moved to :func:`get_device`."""
    models = [m for m in models if m is not None]
    mm = _manager()
    if mm is not None:
        patchers = [m.comfy_patcher() for m in models] + _comfy_patchers(comfy_objects)
        if patchers:
            with torch.inference_mode(False):
                mm.load_models_gpu(patchers, force_full_load=True)
        device = mm.get_torch_device()
    else:
        device = get_device()
        for m in models:
            m._holder.to(device)
    return device


def keep_loaded(fn, *models: ManagedModel):
    """``fn`` (a call into a ComfyUI model: VAE encode, CLIP vision), followed inside ComfyUI by a reload of
    ``models``: ComfyUI's load of its own model may unload ours to make room, in the middle of our run."""
    models = [m for m in models if m is not None]
    if not models:
        return fn

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        if _manager() is not None:  # without ComfyUI nothing unloads our models behind our back
            load_models(*models)
        return out

    return call


@contextlib.contextmanager
def on_device(*models: ManagedModel, comfy_objects=()):
    """:func:`load_models` for the block, yielding the device. Inside ComfyUI the models stay loaded after it
    (ComfyUI offloads them when it needs the memory); without ComfyUI they go back to the CPU."""
    models = [m for m in models if m is not None]
    device = load_models(*models, comfy_objects=comfy_objects)
    try:
        yield device
    finally:
        if _manager() is None:
            for m in models:
                m._holder.to("cpu")


__all__ = ["MODEL_FOLDER", "MODEL_EXTENSIONS", "comfy_available", "get_device", "ProgressBar",
           "set_interrupt_callback", "check_interrupt", "input_directory", "register_model_folder",
           "list_model_files", "model_file_path", "ManagedModel", "managed", "load_models", "on_device",
           "make_plain", "keep_loaded"]
