"""The pack explains itself in ComfyUI's frontend: a help page per node and the workflows in the template browser.

What the frontend and server do (read in their sources):

* Help pages: ComfyUI_frontend ``src/services/nodeHelpService.ts`` fetches, for a custom node, first
  ``/extensions/<pack>/docs/<NodeClass>/<locale>.md`` then ``/extensions/<pack>/docs/<NodeClass>.md``, and drops an
  answer that looks like HTML; the server serves the pack's ``WEB_DIRECTORY`` under ``/extensions/<pack>/``.
* Templates: ComfyUI ``app/custom_node_manager.py`` lists ``custom_nodes/<pack>/<folder>/*.json`` for the folder
  names ``example_workflows``, ``example``, ``examples``, ``workflow``, ``workflows``; the frontend's template store
  shows each with the thumbnail ``/api/workflow_templates/<pack>/<name>.jpg``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import comfy_doubles
from comfy_doubles import REPO

TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
SECTIONS = ("## Inputs", "## Outputs", "## Typical wiring", "## Pitfalls")


@pytest.fixture(scope="module")
def pack():
    module = comfy_doubles.load_pack("posetransfer_help_pack")
    try:
        yield module
    finally:
        comfy_doubles.unload_pack("posetransfer_help_pack")


def docs_dir(pack) -> Path:
    return (REPO / pack.WEB_DIRECTORY).resolve() / "docs"


def section(text: str, title: str) -> str:
    start = text.index(title) + len(title)
    rest = text[start:]
    nxt = rest.find("\n## ")
    return rest if nxt < 0 else rest[:nxt]


def test_web_directory_is_a_folder_of_the_pack(pack):
    web = (REPO / pack.WEB_DIRECTORY).resolve()
    assert web.is_dir() and web.parent == REPO


def test_every_node_has_a_help_page(pack):
    pages = {p.stem for p in docs_dir(pack).glob("*.md")}
    nodes = set(pack.NODE_CLASS_MAPPINGS)
    assert nodes <= pages, f"nodes without web/docs/<NodeClass>.md: {sorted(nodes - pages)}"
    assert pages <= nodes, f"help pages of no registered node: {sorted(pages - nodes)}"


def test_help_pages_follow_the_declarations(pack):
    """Title = display name; the four sections; every input and output named in its table, with its type."""
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        text = (docs_dir(pack) / f"{name}.md").read_text(encoding="utf-8")
        assert not re.match(r"\s*(<!doctype html|<html)", text, re.I), name  # the frontend would drop it
        assert text.startswith(f"# {pack.NODE_DISPLAY_NAME_MAPPINGS[name]}\n"), name
        for title in SECTIONS:
            assert title in text, f"{name}: missing {title}"
        inputs = section(text, "## Inputs")
        declared = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for key, spec in (declared.get(group) or {}).items():
                kind = "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]
                assert f"| `{key}` | {kind} |" in inputs, f"{name}: input {key} ({kind}) not in the Inputs table"
        outputs = section(text, "## Outputs")
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        for out, kind in zip(names, cls.RETURN_TYPES):
            assert f"| `{out}` | {kind} |" in outputs, f"{name}: output {out} ({kind}) not in the Outputs table"
        assert section(text, "## Pitfalls").strip().startswith("- "), f"{name}: no pitfall listed"


def test_help_page_check_is_not_vacuous(pack):
    text = (docs_dir(pack) / "PoseTransferFlowWarp.md").read_text(encoding="utf-8")
    assert "| `generate_mask` | MASK |" in section(text, "## Outputs")
    assert "| `generate_mask` | MASK |" not in section(text, "## Inputs")


def test_workflows_folder_is_a_template_folder():
    folders = [f for f in TEMPLATE_FOLDERS if (REPO / f).is_dir()]
    assert folders == ["workflows"], f"one template folder, 'workflows', expected; found {folders}"


def test_every_template_is_a_workflow_with_a_thumbnail():
    """Every JSON there is listed as a template: each must be a UI workflow, each with its .jpg thumbnail."""
    for path in sorted((REPO / "workflows").glob("*.json")):
        wf = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(wf.get("nodes"), list) and wf.get("version") == 0.4, path.name
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name}: no thumbnail {thumb.name}"
        data = thumb.read_bytes()
        assert data[:3] == b"\xff\xd8\xff", f"{thumb.name}: not a JPEG"
        assert len(data) < 200_000, f"{thumb.name}: {len(data)} bytes; keep thumbnails small"
    stray = {p.stem for p in (REPO / "workflows").glob("*.jpg")} - {p.stem for p in (REPO / "workflows").glob("*.json")}
    assert not stray, f"thumbnails of no workflow: {sorted(stray)}"


def test_every_workflow_has_a_note_with_models_and_sources():
    """Each workflow's Note says which files go where (a models/ folder, a file name) and that nothing downloads."""
    for path in sorted((REPO / "workflows").glob("*.json")):
        wf = json.loads(path.read_text(encoding="utf-8"))
        notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert notes, f"{path.name}: no Note node"
        text = "\n".join(notes)
        assert "models/" in text, f"{path.name}: the Note names no models/ folder"
        assert re.search(r"\.(safetensors|ckpt|pth|pt|onnx)\b", text), f"{path.name}: the Note names no model file"
        assert "ComfyUI/input" in text, f"{path.name}: the Note does not say where the sample inputs go"
