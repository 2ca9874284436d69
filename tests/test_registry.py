"""The pack meets the Comfy Registry's pyproject specification and security standards.

Sources: comfy-cli ``comfy_cli/registry/config_parser.py`` (the fields it reads from ``[project]`` and
``[tool.comfy]``, the accepted OS / accelerator classifiers, the version pattern of ``requires-comfyui``), the
Registry's specifications page (node id rules) and its standards page: no ``eval`` / ``exec``, no subprocess calls
that install packages at run time, no code downloaded at run time, no obfuscation.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SKIP = {".venv", "venv", "build", "dist", ".git", "outputs", "__pycache__", ".gl"}

# comfy-cli's validate_and_extract_accelerator_classifiers / validate_and_extract_os_classifiers
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
# comfy-cli's validate_version: [operator]X.Y.Z[-suffix], comma-separated parts
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
# Modules whose use would fetch code or weights over the network at run time.
NETWORK_MODULES = {"requests", "urllib.request", "http.client", "httpx", "aiohttp", "huggingface_hub", "wget",
                   "pip", "ensurepip"}
# torch.hub's downloading functions (torch.hub.get_dir only names the cache folder).
HUB_DOWNLOADS = {"load_state_dict_from_url", "download_url_to_file", "hf_hub_download", "snapshot_download"}
SUBPROCESS_CALLS = {("subprocess", name) for name in ("run", "call", "check_call", "check_output", "Popen")} | {
    ("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "spawnv")}


def archive_exclusions() -> set[str]:
    """Top-level folders ``.comfyignore`` keeps out of the Registry archive (comfy-cli reads that file)."""
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")}


def pack_python_files() -> list[Path]:
    """The Python files the Registry archive ships: everything but caches and what .comfyignore leaves out."""
    skip = SKIP | archive_exclusions()
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def test_the_archive_keeps_what_comfyui_loads():
    kept = {"__init__.py", "core", "nodes", "web", "workflows", "samples", "training", "pyproject.toml",
            "requirements.txt", "README.md", "LICENSE"}
    assert not kept & archive_exclusions()
    assert {"tests", "benchmarks"} <= archive_exclusions()


def test_project_section():
    project = PYPROJECT["project"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name) and "comfyui" not in name.lower(), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the Registry wants X.Y.Z"
    assert project.get("description") and project.get("license")
    assert project["urls"]["Repository"].startswith("https://")


def test_classifiers_are_ones_the_registry_reads():
    classifiers = PYPROJECT["project"]["classifiers"]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    assert accelerators and set(accelerators) <= ACCELERATORS, accelerators
    assert systems and all(s.startswith(OS_PREFIXES) for s in systems), systems
    # setuptools >= 77 rejects License classifiers next to an SPDX license expression
    assert not any(c.startswith("License ::") for c in classifiers)


def test_tool_comfy_section():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    parts = [p.strip() for p in comfy["requires-comfyui"].split(",")]
    assert all(VERSION_PART.match(p) for p in parts), comfy["requires-comfyui"]
    assert isinstance(comfy["includes"], list)
    for key in ("Icon", "Banner"):
        assert comfy.get(key, "https://").startswith("https://"), f"{key}: a URL or left out"
    assert set(comfy) <= {"PublisherId", "DisplayName", "Icon", "Banner", "includes", "requires-comfyui",
                          "Models", "web"}, "a key comfy-cli does not read"


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def security_findings(source: str, where: str) -> list[str]:
    """What the Registry's standards forbid, found in one file's syntax tree."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "__import__"):
                found.append(f"{where}:{node.lineno}: {node.func.id}()")
            target = tuple(_dotted(node.func).split(".")[-2:])
            if target in SUBPROCESS_CALLS:
                words = " ".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant)
                                 and isinstance(c.value, str))
                if re.search(r"\b(pip|install|uv|conda|easy_install)\b", words):
                    found.append(f"{where}:{node.lineno}: a package install through {'.'.join(target)}")
            name = _dotted(node.func)
            if name.split(".")[-1] in HUB_DOWNLOADS or name.endswith("hub.load"):
                found.append(f"{where}:{node.lineno}: {name} downloads")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name in NETWORK_MODULES or name.split(".")[0] in NETWORK_MODULES - {"urllib", "http"}:
                    found.append(f"{where}:{node.lineno}: imports {name}")
    return found


def test_no_eval_exec_runtime_installs_or_downloads():
    """Over every Python file the archive ships (the tests, which build pip environments, are left out of it)."""
    files = pack_python_files()
    assert len(files) > 50, "the scan must see the pack"
    findings = [f for p in files for f in security_findings(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not findings, "\n".join(findings)


@pytest.mark.parametrize("code, what", [
    ("eval('1 + 1')", "eval()"),
    ("exec(text)", "exec()"),
    ("import subprocess\nsubprocess.check_call(['python', '-m', 'pip', 'install', 'x'])", "package install"),
    ("import os\nos.system('pip install x')", "package install"),
    ("import requests", "imports requests"),
    ("from huggingface_hub import hf_hub_download", "imports huggingface_hub"),
    ("import torch\ntorch.hub.load('a/b', 'c')", "downloads"),
    ("import torch\ntorch.hub.load_state_dict_from_url('https://x/y.pth')", "downloads"),
])
def test_scan_catches_forbidden_code(code, what):
    assert any(what in f for f in security_findings(code, "x.py")), code


def test_scan_allows_ordinary_code():
    code = ("import subprocess, torch\nsubprocess.run(['git', 'rev-parse', 'HEAD'])\nmodel = torch.nn.Linear(2, 2)"
            "\nmodel.eval()\ncache = torch.hub.get_dir()\n")
    assert security_findings(code, "x.py") == []


def test_no_obfuscated_or_binary_python():
    """No compiled / packed Python shipped (the Registry forbids obfuscation): no .pyc / .so / .pyd in the tree
    outside caches, no long base64 blobs in sources."""
    bad = [p for ext in ("*.pyc", "*.so", "*.pyd", "*.pyz")
           for p in ROOT.rglob(ext) if not SKIP & set(p.relative_to(ROOT).parts)]
    assert not bad, bad
    blob = re.compile(r"[A-Za-z0-9+/=]{400,}")
    assert not [p for p in pack_python_files() if blob.search(p.read_text(encoding="utf-8"))]
