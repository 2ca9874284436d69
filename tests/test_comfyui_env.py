"""Installing the pack into an existing ComfyUI must not move any package ComfyUI installed.

pip resolves only what it is asked to install: it does not hold the requirements of packages already there.
In a ComfyUI of October 2025 (v0.3.64: transformers 4.57.6, which needs huggingface_hub < 1.0) a plain
``diffusers`` requirement pulled diffusers 0.42 and huggingface_hub 2.4, and ComfyUI no longer started.
These tests build such environments for real (a venv, pip, the package registry) and install our
requirements.txt into them. They need the package registry (as does ``make test``'s own set-up); they are
marked ``env_install`` so that ``make test-quick`` can leave them out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENVS = Path(__file__).resolve().parent / "data" / "comfyui_envs"

pytestmark = pytest.mark.env_install


def pins(name: str) -> dict[str, str]:
    """``{normalised name: version}`` of a pins file; torch becomes the running torch (a CPU build stands in for
    ComfyUI's CUDA one, and pip finds it where the test environment's came from)."""
    found = {}
    for line in (ENVS / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, version = line.split("==")
            found[canonical(pkg)] = version
    found["torch"] = torch.__version__
    return found


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def venv_with(tmp_path: Path, installed: dict[str, str], no_deps: bool = False) -> Path:
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    spec = [f"{k}=={v}" for k, v in installed.items()]
    pip(python, "install", *(["--no-deps"] if no_deps else []), *spec)
    return python


def pip(python: Path, *args: str, timeout: int = 900) -> str:
    out = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"pip {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def versions(python: Path) -> dict[str, str]:
    listed = json.loads(pip(python, "list", "--format", "json"))
    return {canonical(p["name"]): p["version"] for p in listed}


def test_requirements_keep_comfyui_v0_3_64_packages(tmp_path):
    """A venv with ComfyUI v0.3.64's pins, then ``pip install -r requirements.txt``: every pinned package keeps its
    version, and transformers, diffusers and the pack (imported as ComfyUI imports a custom-node folder) load."""
    before = pins("v0.3.64.txt")
    python = venv_with(tmp_path, before)
    pip(python, "install", "-r", str(ROOT / "requirements.txt"))
    after = versions(python)
    moved = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not moved, f"installing requirements.txt moved ComfyUI's packages (before, after): {moved}"
    assert "diffusers" in after and "accelerate" in after

    # transformers' own import-time dependency check is what refused huggingface_hub 2.4.
    code = f"""
import importlib.util, sys
import transformers, diffusers, huggingface_hub
from transformers import CLIPVisionModelWithProjection
spec = importlib.util.spec_from_file_location("ComfyUI-posetransfer", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
# diffusers' save / load of each PCDMs model (a tiny config), through the hub helpers from_pretrained uses
import importlib, tempfile, torch
kinds = importlib.import_module(spec.name + ".core.pcdms.kinds")
for kind in kinds.KINDS:
    model = kinds.model_class(kind)(**kinds.tiny_config(kind))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        again = type(model).from_pretrained(d)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind
print(transformers.__version__, huggingface_hub.__version__, diffusers.__version__, len(pack.NODE_CLASS_MAPPINGS))
"""
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    tf, hub, diffusers_version, n_nodes = out.stdout.split()
    assert (tf, hub) == (before["transformers"], before["huggingface-hub"])
    assert int(n_nodes) > 10


@pytest.mark.parametrize("env_file,installer", [("v0.3.64.txt", "pip"), ("v0.3.64.txt", "pip==26.3"),
                                                  ("v0.3.64.txt", "uv"), ("2026-12.txt", "pip")])
def test_installers_plan_to_move_nothing(tmp_path, env_file, installer):
    """The installer's plan (``--dry-run``) for requirements.txt on a venv holding just the pinned distributions:
    with the venv's own pip, a current pip and uv (ComfyUI-Manager can use either), for ComfyUI's packages of
    October 2025 and of today (transformers 5.25 needs huggingface_hub >= 2.4: nothing may be downgraded to suit
    us either)."""
    before = pins(env_file)
    python = venv_with(tmp_path, {k: v for k, v in before.items() if k != "torch"}, no_deps=True)
    request = ["-r", str(ROOT / "requirements.txt"), f"torch=={before['torch']}"]
    if installer == "uv":
        pip(python, "install", "uv")
        # uv reads no pip configuration (the local torch file): it plans against the public release's metadata
        request[-1] = f"torch=={before['torch'].split('+')[0]}"
        out = subprocess.run([str(python.parent / "uv"), "pip", "install", "--python", str(python), "--dry-run",
                              *request], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        planned = dict(line.strip()[2:].split("==", 1) for line in out.stderr.splitlines()
                       if line.strip().startswith("+ ") and "==" in line)
        planned = {canonical(k): v for k, v in planned.items()}
    else:
        if installer != "pip":
            pip(python, "install", installer)
        report = tmp_path / "report.json"
        pip(python, "install", "--dry-run", "--report", str(report), *request)
        planned = {canonical(i["metadata"]["name"]): i["metadata"]["version"]
                   for i in json.loads(report.read_text())["install"]}
    moved = {k: (before[k], v) for k, v in planned.items() if k in before and k != "torch" and v != before[k]}
    assert not moved, f"{installer} would move (before, planned): {moved}"
    assert "diffusers" in planned
