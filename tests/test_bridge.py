"""nodes.bridge: clean fallbacks without ComfyUI, and the real ComfyUI calls when it is present (faked)."""

import os
import sys
import types

import pytest
import torch

from posetransfer.nodes import bridge

COMFY_MODULES = ("comfy", "comfy.model_management", "comfy.utils", "folder_paths")


@pytest.fixture
def no_comfy(monkeypatch):
    """Hide any ComfyUI modules (None in sys.modules makes the import fail)."""
    for name in COMFY_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    """Fake ``comfy`` and ``folder_paths`` modules that record what the bridge calls."""
    calls = []
    comfy = types.ModuleType("comfy")
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: calls.append("get_torch_device") or torch.device("meta")
    mm.throw_exception_if_processing_interrupted = lambda: calls.append("interrupt")
    utils = types.ModuleType("comfy.utils")

    class FakeBar:
        def __init__(self, total):
            calls.append(("bar", total))

        def update(self, n):
            calls.append(("update", n))

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("update_absolute", value, total, preview))

    utils.ProgressBar = FakeBar
    comfy.model_management, comfy.utils = mm, utils

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}
    fp.get_input_directory = lambda: str(tmp_path / "comfy_input")

    def add_model_folder_path(name, path, is_default=False):
        calls.append(("add_model_folder_path", name, path))
        fp.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    def get_full_path(name, filename):
        calls.append(("get_full_path", name, filename))
        path = os.path.join(fp.folder_names_and_paths[name][0][0], filename)
        return path if os.path.isfile(path) else None

    fp.add_model_folder_path = add_model_folder_path
    fp.get_full_path = get_full_path
    fp.get_filename_list = lambda name: calls.append(("get_filename_list", name)) or ["b.onnx", "a.safetensors",
                                                                                      "notes.txt"]
    for name, mod in zip(COMFY_MODULES, (comfy, mm, utils, fp)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(calls=calls, folder_paths=fp, root=tmp_path)


def test_fallbacks_without_comfy(no_comfy, monkeypatch, tmp_path):
    assert not bridge.comfy_available()
    assert bridge.get_device().type in ("cpu", "cuda")
    bar = bridge.ProgressBar(3)
    bar.update()
    bar.update(2)
    assert (bar.current, bar.total) == (3, 3)
    bridge.check_interrupt()  # nothing to do
    monkeypatch.delenv("POSETRANSFER_INPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bridge.input_directory() == str(tmp_path / "input")
    monkeypatch.setenv("POSETRANSFER_INPUT_DIR", str(tmp_path / "elsewhere"))
    assert bridge.input_directory() == str(tmp_path / "elsewhere")


def test_model_files_fallback(no_comfy, monkeypatch, tmp_path):
    monkeypatch.delenv("POSETRANSFER_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bridge.register_model_folder() == str(tmp_path / "models" / "posetransfer")
    assert bridge.list_model_files() == []  # folder missing: no files, no error
    root = tmp_path / "weights"
    (root / "sub").mkdir(parents=True)
    for name in ("a.safetensors", "sub/b.PTH", "readme.txt"):
        (root / name).write_bytes(b"x")
    monkeypatch.setenv("POSETRANSFER_MODELS_DIR", str(root))
    assert bridge.list_model_files() == ["a.safetensors", "sub/b.PTH"]
    assert bridge.list_model_files(extensions={".pth"}) == ["sub/b.PTH"]
    assert bridge.model_file_path("sub/b.PTH") == str(root / "sub/b.PTH")
    with pytest.raises(FileNotFoundError, match=r"'missing.onnx'.*weights"):
        bridge.model_file_path("missing.onnx")


def test_interrupt_callback(no_comfy):
    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    bridge.set_interrupt_callback(cancel)
    try:
        with pytest.raises(Cancelled):
            bridge.check_interrupt()
    finally:
        bridge.set_interrupt_callback(None)
    bridge.check_interrupt()


def test_calls_comfy_when_present(fake_comfy):
    calls = fake_comfy.calls
    assert bridge.comfy_available()
    assert bridge.get_device() == torch.device("meta")
    bridge.check_interrupt()
    bar = bridge.ProgressBar(5)
    bar.update(2)
    assert bar.current == 2
    assert bridge.input_directory() == str(fake_comfy.root / "comfy_input")
    assert calls == ["get_torch_device", "interrupt", ("bar", 5), ("update", 2)]


def test_step_previews_go_through_comfys_previewer(fake_comfy, monkeypatch):
    # Without ComfyUI's latent_preview module: no previewer (the nodes then send plain progress).
    monkeypatch.setitem(sys.modules, "latent_preview", None)
    assert bridge.latent_previewer() is None
    drawn = []

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            drawn.append((fmt, x0.clone()))
            return ("JPEG", "picture", 512)

    formats = types.ModuleType("comfy.latent_formats")
    formats.SD15 = lambda: "sd15-format"
    lp = types.ModuleType("latent_preview")
    previewers = {"sd15-format": Previewer()}
    lp.get_previewer = lambda device, fmt: fake_comfy.calls.append(("get_previewer", device, fmt)) or \
        previewers.get(fmt)
    monkeypatch.setitem(sys.modules, "latent_preview", lp)
    monkeypatch.setitem(sys.modules, "comfy.latent_formats", formats)
    preview = bridge.latent_previewer()
    assert ("get_previewer", torch.device("meta"), "sd15-format") in fake_comfy.calls
    x0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    assert preview(x0) == ("JPEG", "picture", 512)
    fmt, seen = drawn[0]
    assert fmt == "JPEG" and seen.dtype == torch.float32 and torch.equal(seen, x0[:1].float())   # first image only
    assert preview(torch.randn(1, 8, 3, 5)) is None and len(drawn) == 1                      # not an SD latent
    bar = bridge.ProgressBar(3)
    bar.update(1, preview(x0))
    bar.update(1)
    assert fake_comfy.calls[-2:] == [("update_absolute", 1, 3, ("JPEG", "picture", 512)), ("update", 1)]
    previewers.clear()                                                  # ComfyUI's --preview-method none
    assert bridge.latent_previewer() is None


def test_model_folder_with_comfy(fake_comfy):
    fp = fake_comfy.folder_paths
    path = bridge.register_model_folder()
    assert path == os.path.join(fp.models_dir, "posetransfer")
    assert ("add_model_folder_path", "posetransfer", path) in fake_comfy.calls
    paths, exts = fp.folder_names_and_paths["posetransfer"]
    assert paths == [path] and exts >= {".safetensors", ".pt", ".pth", ".bin", ".onnx", ".json"}
    assert bridge.list_model_files() == ["a.safetensors", "b.onnx"]
    os.makedirs(path)
    open(os.path.join(path, "a.safetensors"), "wb").close()
    assert bridge.model_file_path("a.safetensors") == os.path.join(path, "a.safetensors")
    with pytest.raises(FileNotFoundError, match="b.onnx"):
        bridge.model_file_path("b.onnx")
    assert ("get_full_path", "posetransfer", "b.onnx") in fake_comfy.calls


def test_register_keeps_user_paths_and_old_comfy(fake_comfy):
    fp = fake_comfy.folder_paths
    fp.folder_names_and_paths["posetransfer"] = (["/from/extra_model_paths"], set())
    path = bridge.register_model_folder()
    assert fp.folder_names_and_paths["posetransfer"][0] == ["/from/extra_model_paths", path]
    # Old ComfyUI: add_model_folder_path ignores folders it does not know yet.
    fp.folder_names_and_paths.clear()
    fp.add_model_folder_path = lambda name, path: None
    assert fp.folder_names_and_paths == {}
    path = bridge.register_model_folder()
    assert fp.folder_names_and_paths["posetransfer"][0] == [path]


# ------------------------------------------------------------------------------------- model management
from comfy_doubles import FakeModelManager, FakeModelPatcher, spy_module_moves  # noqa: E402


class Tiny(torch.nn.Module):
    """A module with a read-only ``device`` like diffusers' ModelMixin: ModelPatcher cannot write on it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))

    @property
    def device(self):
        return self.lin.weight.device


def test_managed_model_without_comfy(no_comfy, monkeypatch):
    net, other = Tiny(), Tiny()
    mm = bridge.managed(net)
    assert bridge.managed(net) is mm and bridge.managed(other) is not mm  # one wrapper per loaded model
    assert mm.module is net and mm.patcher is None
    moves = spy_module_moves(monkeypatch, move=False)
    monkeypatch.setattr(bridge, "get_device", lambda: torch.device("cuda"))
    with bridge.on_device(mm, None) as device:
        assert device == torch.device("cuda")
    # Without ComfyUI the run owns the memory: to the compute device, back to the CPU after.
    assert [(type(m).__name__, a) for m, a, _ in moves] == [("Tiny", (torch.device("cuda"),)), ("Tiny", ("cpu",))]
    assert mm.patcher is None


def test_managed_model_with_comfy(monkeypatch):
    fake = FakeModelManager(monkeypatch)
    net, est = Tiny(), Tiny()
    model, estimator = bridge.managed(net), bridge.managed({"estimator": est, "none": None})
    assert list(estimator.modules) == ["estimator"]
    moves = spy_module_moves(monkeypatch)

    class ComfyVAE:  # ComfyUI's VAE / CLIP_VISION carry their own ModelPatcher
        def __init__(self):
            self.patcher = FakeModelPatcher(torch.nn.Linear(1, 1), fake.device, torch.device("cpu"))

    vae = ComfyVAE()
    for _ in range(2):
        with torch.inference_mode(), bridge.on_device(model, estimator, comfy_objects=(vae, None)) as device:
            assert device == fake.device
    assert len(fake.patchers) == 2  # one ModelPatcher per model, made once, reused by every run
    p_model, p_est = model.patcher, estimator.patcher
    assert [p.model for p in fake.patchers] == [model._holder, estimator._holder]
    assert p_model.model.parts["model"] is net and type(p_model.model).__name__ == "Tiny"  # ComfyUI logs it
    # One load_models_gpu call per run with all of them, fully loaded, outside inference mode (so moved weights
    # stay plain tensors for autograd).
    assert fake.loads == [([p_model, p_est, vae.patcher], {"force_full_load": True}, False)] * 2
    assert (p_model.load_device, p_model.offload_device) == (fake.device, torch.device("cpu"))
    assert p_model.model.device == fake.device  # ModelPatcher writes on the holder, not on our module
    assert moves == []  # never moved by hand: ComfyUI offloads when it needs the memory


def test_keep_loaded_reloads_after_comfy_calls(monkeypatch):
    fake = FakeModelManager(monkeypatch)
    model = bridge.managed(Tiny())
    decode = bridge.keep_loaded(lambda x: x + 1, model, None)
    assert bridge.keep_loaded(len) is len
    model.load()
    assert decode(1) == 2
    assert fake.loaded_with(model.patcher) == [[model.patcher]] * 2
    # Without ComfyUI nothing unloads our models behind our back: no reload.
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", None)
    plain = bridge.managed(Tiny())
    calls = []
    monkeypatch.setattr(bridge, "load_models", lambda *a, **k: calls.append(a))
    assert bridge.keep_loaded(lambda: 3, plain)() == 3 and calls == []


def test_make_plain_lets_autograd_use_inference_weights():
    with torch.inference_mode():
        net = Tiny()
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (net.lin(x) * net.scale).sum().backward()
    weight = net.lin.weight.detach().clone()
    bridge.make_plain(net)
    assert not any(t.is_inference() for t in [*net.parameters(), *net.buffers()])
    assert net.lin.weight.requires_grad and torch.equal(net.lin.weight, weight)
    (net.lin(x) * net.scale).sum().backward()
    assert x.grad is not None and net.lin.weight.grad is not None
