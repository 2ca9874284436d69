"""Load the repository root the way ComfyUI loads a custom-node folder, and check every node's declaration."""

import importlib.util
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK = "custom_pack_xyz"
OUR_NODES = {"PoseTransferLoadPose", "PoseTransferRenderPose", "PoseTransferRetargetPose", "PoseTransferSelectPerson",
             "PoseTransferFlowWarp", "PoseTransferPoseDetect", "PoseTransferFlowModelLoader",
             "PoseTransferPCDMsLoader", "PoseTransferPCDMsEncoders", "PoseTransferPriorEmbed",
             "PoseTransferPCDMsInpaint", "PoseTransferPCDMsRefine", "PoseTransferRePoseLoader",
             "PoseTransferPoseAlign", "PoseTransferPoseGuidance", "PoseTransferRePoseSampler"}


def load_pack(name=PACK):
    """What ComfyUI's ``load_custom_node`` does with a folder: import its __init__.py under the folder's name."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pack(monkeypatch):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    yield load_pack()
    for name in [m for m in sys.modules if m == PACK or m.startswith(PACK + ".")]:
        del sys.modules[name]


def node_items(pack):
    return sorted(pack.NODE_CLASS_MAPPINGS.items())


def test_mappings(pack):
    assert OUR_NODES <= set(pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    for type_name, cls in node_items(pack):
        assert type_name.startswith("PoseTransfer"), type_name
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[type_name].endswith(" (posetransfer)"), type_name
        assert cls.__module__.startswith(PACK + "."), (type_name, cls.__module__)


def test_every_node_is_declared_completely(pack):
    for type_name, cls in node_items(pack):
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"} and inputs.get("required") is not None, type_name
        for section in ("required", "optional"):
            for input_name, spec in inputs.get(section, {}).items():
                assert isinstance(spec, tuple) and len(spec) == 2, (type_name, input_name)
                assert isinstance(spec[0], (str, list)), (type_name, input_name)
                tooltip = spec[1].get("tooltip")
                assert isinstance(tooltip, str) and tooltip.strip(), f"{type_name}.{input_name} has no tooltip"
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES, type_name
        for attr in ("RETURN_NAMES", "OUTPUT_TOOLTIPS"):
            value = getattr(cls, attr, None)
            assert isinstance(value, tuple) and len(value) == len(cls.RETURN_TYPES), (type_name, attr)
        assert callable(getattr(cls, cls.FUNCTION, None)), type_name
        assert cls.CATEGORY.startswith("posetransfer"), type_name
        assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION.strip(), type_name


def test_registers_model_folder_when_comfy_present(monkeypatch, tmp_path):
    fp = types.ModuleType("folder_paths")
    fp.models_dir, fp.folder_names_and_paths = str(tmp_path), {}
    fp.add_model_folder_path = lambda name, path, is_default=False: fp.folder_names_and_paths.setdefault(
        name, ([], set()))[0].append(path)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    try:
        load_pack(PACK + "_with_comfy")
    finally:
        for name in [m for m in sys.modules if m.startswith(PACK + "_with_comfy")]:
            del sys.modules[name]
    assert fp.folder_names_and_paths["posetransfer"][0] == [str(tmp_path / "posetransfer")]


def test_loads_with_relative_imports_only():
    """A fresh interpreter where ``posetransfer`` cannot be imported and ``nodes`` is ComfyUI's own module."""
    script = textwrap.dedent(f"""
        import importlib.util, sys, types
        sys.modules["posetransfer"] = None
        sys.modules["nodes"] = types.ModuleType("nodes")  # ComfyUI's nodes.py
        spec = importlib.util.spec_from_file_location("some_folder_name", {str(REPO / "__init__.py")!r},
                                                      submodule_search_locations=[{str(REPO)!r}])
        module = importlib.util.module_from_spec(spec)
        sys.modules["some_folder_name"] = module
        spec.loader.exec_module(module)
        print(len(module.NODE_CLASS_MAPPINGS))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= len(OUR_NODES)


def test_comfy_only_through_the_bridge():
    for path in sorted((REPO / "core").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "import comfy" not in text and "folder_paths" not in text, f"{path} talks to ComfyUI"
    comfy_import = re.compile(r"^\s*(import|from)\s+(comfy|folder_paths|server)\b", re.M)
    for path in sorted((REPO / "nodes").rglob("*.py")):
        if path.name != "bridge.py":
            assert not comfy_import.search(path.read_text(encoding="utf-8")), f"{path}: use nodes/bridge.py"
