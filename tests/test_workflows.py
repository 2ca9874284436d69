"""Every shipped workflow in ``workflows/``: valid UI JSON (frontend schema 0.4), only known node types, links
and widget values that fit the node declarations, an API-format copy that agrees, and the graph RUNS.

A UI workflow ``workflows/NAME.json`` must have its API-format copy in ``tests/workflows/NAME_api.json``.
Core ComfyUI nodes are replaced by the doubles of ``comfy_doubles.py`` (add a double there to use a new one).
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import comfy_doubles
from comfy_doubles import CORE_NODES, FRONTEND_ONLY, REPO, SAMPLES

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
API_DIR = REPO / "tests" / "workflows"
PACK = "posetransfer_workflow_pack"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# The size every image output should have, per workflow stem and node id (unlisted outputs: any size).
EXPECTED_SIZES = {
    "flowwarp_basic": {"6": (1, 350, 350, 3), "7": (1, 350, 350, 3), "9": (1, 350, 350, 3),
                       "10": (1, 350, 350, 3), "12": (1, 350, 350, 3)},
    # PCDMs: the output has the target pose's canvas size (jumper.pose.json: 400 x 400)
    "pcdms_full": {"14": (1, 400, 400, 3), "15": (1, 400, 400, 3)},
    "pcdms_simplified": {"9": (1, 400, 400, 3)},
    # FlowWarp (retarget: the photo's 350 x 350 canvas) -> inpainting (the VAE sees a 344 x 344 crop) -> composited
    # back onto the full 350 x 350
    "flowwarp_inpaint_sd": {"19": (1, 350, 350, 3), "20": (1, 350, 350, 3), "21": (1, 350, 350, 3)},
    # PCDMs Refine keeps the coarse (FlowWarp) image's size, not a multiple of 8
    "flowwarp_refine_pcdms": {"10": (1, 350, 350, 3), "11": (1, 350, 350, 3)},
}

ids = [p.stem for p in WORKFLOWS]


def test_workflows_exist():
    assert WORKFLOWS, "no workflow in workflows/"


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    """ComfyUI hidden; the input folder (POSETRANSFER_INPUT_DIR) holds the sample pose files and photos,
    as the workflow notes tell the user to copy them. The model folder (POSETRANSFER_MODELS_DIR) holds the tiny
    models of ``comfy_doubles.prepare_model_folder``."""
    folder = tmp_path_factory.mktemp("comfy_input")
    models = comfy_doubles.prepare_model_folder(tmp_path_factory.mktemp("comfy_models"))
    for path in SAMPLES.iterdir():
        if path.suffix in (".json", ".png"):
            shutil.copy(path, folder / path.name)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
            mp.setitem(sys.modules, name, None)
        mp.setenv("POSETRANSFER_INPUT_DIR", str(folder))
        mp.setenv("POSETRANSFER_MODELS_DIR", str(models))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
        try:
            yield folder
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classes(input_dir):
    """Node type -> class: our pack loaded the way ComfyUI loads it, plus the core doubles."""
    pack = comfy_doubles.load_pack(PACK)
    try:
        assert not set(pack.NODE_CLASS_MAPPINGS) & set(CORE_NODES)
        yield {**CORE_NODES, **pack.NODE_CLASS_MAPPINGS}
    finally:
        comfy_doubles.unload_pack(PACK)


def load(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def api_path(path: Path) -> Path:
    return API_DIR / f"{path.stem}_api.json"


def backend_nodes(workflow):
    """UI nodes that the frontend sends to the server (not notes, not muted / bypassed)."""
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY and n.get("mode", 0) == 0]


# ------------------------------------------------------------------------------- declarations of a class

def input_specs(cls) -> dict[str, tuple]:
    """Input name -> (type, options) over required then optional inputs, in declaration order."""
    declared = cls.INPUT_TYPES()
    specs = {}
    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            specs[name] = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return specs


def type_name(kind) -> str:
    return "COMBO" if isinstance(kind, (list, tuple)) else kind


def is_widget(kind, options) -> bool:
    return type_name(kind) in WIDGET_TYPES and not options.get("forceInput", False)


def widget_slots(cls) -> list[tuple[str, object, dict]]:
    """The values the frontend stores in ``widgets_values``, in order: (name, type, options).

    Widget inputs follow INPUT_TYPES order; an INT with ``control_after_generate`` (or named seed /
    noise_seed) is followed by its control value; a combo with ``image_upload`` by the upload button's value."""
    slots = []
    for name, (kind, options) in input_specs(cls).items():
        if not is_widget(kind, options):
            continue
        slots.append((name, kind, options))
        if type_name(kind) == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append(("control_after_generate", "CONTROL", {}))
        if type_name(kind) == "COMBO" and options.get("image_upload"):
            slots.append(("upload", "UPLOAD", {}))
    return slots


def socket_inputs(cls) -> dict[str, str]:
    return {name: type_name(kind) for name, (kind, options) in input_specs(cls).items()
            if not is_widget(kind, options)}


def required_sockets(cls) -> set[str]:
    required = cls.INPUT_TYPES().get("required") or {}
    return {name for name in required if name in socket_inputs(cls)}


def check_widget_value(where: str, name: str, kind, options: dict, value) -> None:
    t = type_name(kind)
    if t == "COMBO":
        choices = list(kind) if isinstance(kind, (list, tuple)) else list(options.get("options", []))
        assert value in choices, f"{where}.{name}: {value!r} is not one of {choices}"
    elif t == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}.{name}: {value!r} is not an int"
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), f"{where}.{name}: {value}"
    elif t == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}.{name}: {value!r}"
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), f"{where}.{name}: {value}"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), f"{where}.{name}: {value!r} is not a bool"
    elif t == "STRING":
        assert isinstance(value, str), f"{where}.{name}: {value!r} is not a string"
    elif t == "CONTROL":
        assert value in CONTROL_VALUES, f"{where}.{name}: {value!r}"
    elif t == "UPLOAD":
        assert value == "image", f"{where}.{name}: the upload button stores 'image', got {value!r}"


# ------------------------------------------------------------------------------------------- UI format

@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_ui_structure(path):
    wf = load(path)
    assert wf.get("version") == 0.4, "expected a frontend workflow, schema version 0.4"
    for key, kind in (("last_node_id", int), ("last_link_id", int), ("nodes", list), ("links", list),
                      ("groups", list), ("config", dict), ("extra", dict)):
        assert isinstance(wf.get(key), kind), f"{key}: expected {kind.__name__}"
    node_ids = [n["id"] for n in wf["nodes"]]
    assert len(set(node_ids)) == len(node_ids), "node ids must be unique"
    assert wf["last_node_id"] >= max(node_ids)
    orders = [n["order"] for n in wf["nodes"]]
    assert len(set(orders)) == len(orders), "node 'order' values must be unique"
    for n in wf["nodes"]:
        where = f"node {n.get('id')}"
        assert isinstance(n["id"], int) and isinstance(n["type"], str), where
        for key in ("pos", "size"):
            assert len(n[key]) == 2 and all(isinstance(v, (int, float)) for v in n[key]), f"{where}.{key}"
        assert isinstance(n["flags"], dict) and isinstance(n["order"], int) and isinstance(n["mode"], int), where
        assert isinstance(n["properties"], dict), where
        if n["type"] not in FRONTEND_ONLY:
            assert n["properties"].get("Node name for S&R") == n["type"], where
        for inp in n.get("inputs", []):
            assert isinstance(inp["name"], str) and isinstance(inp["type"], str), where
            assert inp.get("link") is None or isinstance(inp["link"], int), where
        for out in n.get("outputs", []):
            assert isinstance(out["name"], str) and isinstance(out["type"], str), where
            assert out.get("links") is None or all(isinstance(v, int) for v in out["links"]), where
        assert isinstance(n.get("widgets_values", []), list), where


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_ui_links_are_consistent(path):
    wf = load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    link_ids = [link[0] for link in wf["links"]]
    assert len(set(link_ids)) == len(link_ids), "link ids must be unique"
    assert not link_ids or wf["last_link_id"] >= max(link_ids)
    by_id = {}
    for link in wf["links"]:
        assert len(link) == 6, f"link {link}: expected [id, from, from_slot, to, to_slot, type]"
        lid, a, a_slot, b, b_slot, kind = link
        by_id[lid] = link
        assert a in nodes and b in nodes, f"link {lid} joins a missing node"
        out, inp = nodes[a]["outputs"][a_slot], nodes[b]["inputs"][b_slot]
        assert lid in (out.get("links") or []), f"link {lid}: not listed on node {a} output {a_slot}"
        assert inp.get("link") == lid, f"link {lid}: node {b} input {b_slot} does not point back"
        assert out["type"] == inp["type"] == kind, f"link {lid}: {out['type']} -> {inp['type']} ({kind})"
        assert nodes[a]["order"] < nodes[b]["order"], f"link {lid}: node {a} must run before node {b}"
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            if inp.get("link") is not None:
                assert inp["link"] in by_id and by_id[inp["link"]][3] == n["id"], f"node {n['id']}.{inp['name']}"
        for slot, out in enumerate(n.get("outputs", [])):
            for lid in out.get("links") or []:
                assert lid in by_id and by_id[lid][1:3] == [n["id"], slot], f"node {n['id']} output {slot}"


def check_ui_nodes(wf, classes) -> None:
    """Node types known; outputs, input sockets and widget values as the node classes declare them."""
    for n in wf["nodes"]:
        where = f"node {n['id']} ({n['type']})"
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n["type"] in classes, f"{where}: neither a posetransfer node nor a core node of comfy_doubles.py"
        cls = classes[n["type"]]
        # Outputs: names and types as declared, all of them, in order.
        assert [(o["name"], o["type"]) for o in n.get("outputs", [])] == \
            list(zip(comfy_doubles.output_names(cls), cls.RETURN_TYPES)), f"{where}: outputs"
        # Inputs: declared names with the declared type (widget entries, as newer frontends save them, carry
        # a "widget" key); every required socket is connected.
        specs, sockets = input_specs(cls), socket_inputs(cls)
        linked = set()
        for inp in n.get("inputs", []):
            assert inp["name"] in specs, f"{where}: unknown input {inp['name']!r}"
            assert inp["type"] == type_name(specs[inp["name"]][0]), f"{where}.{inp['name']}: type {inp['type']}"
            assert inp["name"] in sockets or "widget" in inp, f"{where}.{inp['name']}: a widget, not a socket"
            if inp.get("link") is not None:
                linked.add(inp["name"])
        missing = required_sockets(cls) - linked
        assert not missing, f"{where}: required inputs not connected: {sorted(missing)}"
        # Widget values: one per widget, each valid.
        slots = widget_slots(cls)
        values = n.get("widgets_values", [])
        assert len(values) == len(slots), \
            f"{where}: {len(values)} widgets_values for widgets {[s[0] for s in slots]}"
        for (name, kind, options), value in zip(slots, values):
            check_widget_value(where, name, kind, options, value)


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_ui_nodes_match_their_declarations(path, classes):
    check_ui_nodes(load(path), classes)


def _node(wf, node_type):
    return next(n for n in wf["nodes"] if n["type"] == node_type)


@pytest.mark.parametrize("break_it, message", [
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["widgets_values"].__setitem__(0, "magic"), "method"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["widgets_values"].__setitem__(4, 1), "retarget"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["widgets_values"].__setitem__(6, -1), "source_person"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["widgets_values"].pop(), "widgets_values"),
    (lambda wf: _node(wf, "LoadImage")["widgets_values"].pop(), "widgets_values"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["outputs"][1].__setitem__("type", "IMAGE"), "outputs"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp")["inputs"][0].__setitem__("link", None), "not connected"),
    (lambda wf: _node(wf, "PoseTransferFlowWarp").__setitem__("type", "PoseTransferNoSuchNode"), "neither"),
])
def test_checks_catch_broken_workflows(classes, break_it, message):
    """The checks are not vacuous: each break of the basic workflow is reported."""
    wf = load(REPO / "workflows" / "flowwarp_basic.json")
    check_ui_nodes(wf, classes)
    break_it(wf)
    with pytest.raises(AssertionError, match=message):
        check_ui_nodes(wf, classes)


def test_old_flowwarp_method_model_still_loads(classes):
    """Workflows saved when FlowWarp's learned method was called 'model' (now single / structure) still pass the
    server's combo check: 'model' stays listed, as an alias for the connected flow model's kind."""
    wf = load(REPO / "workflows" / "flowwarp_basic.json")
    _node(wf, "PoseTransferFlowWarp")["widgets_values"][0] = "model"
    check_ui_nodes(wf, classes)


# ------------------------------------------------------------------------------------------ API format

@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_api_copy_agrees_with_ui(path, classes):
    assert api_path(path).is_file(), f"{path.name}: expected its API-format copy at {api_path(path)}"
    wf, api = load(path), load(api_path(path))
    ui = {str(n["id"]): n for n in backend_nodes(wf)}
    assert set(api) == set(ui), "the API copy must hold exactly the UI's backend nodes"
    links = {link[0]: link for link in wf["links"]}
    for node_id, entry in api.items():
        n, cls = ui[node_id], classes[entry["class_type"]]
        where = f"node {node_id} ({n['type']})"
        assert entry["class_type"] == n["type"], where
        inputs = entry["inputs"]
        for (name, kind, _), value in zip(widget_slots(cls), n.get("widgets_values", [])):
            if kind == "CONTROL":
                continue
            assert name in inputs and inputs[name] == value, f"{where}.{name}: API {inputs.get(name)!r}, UI {value!r}"
        for inp in n.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                assert inputs.get(inp["name"]) == [str(link[1]), link[2]], f"{where}.{inp['name']}"
        for name, value in inputs.items():
            if isinstance(value, list):
                assert len(value) == 2 and value[0] in api and isinstance(value[1], int), f"{where}.{name}"
                source_cls = classes[api[value[0]]["class_type"]]
                assert source_cls.RETURN_TYPES[value[1]] == socket_inputs(cls).get(name), f"{where}.{name}: type"


def topological_order(api) -> list[str]:
    deps = {k: {v[0] for v in e["inputs"].values() if isinstance(v, list)} for k, e in api.items()}
    order, done = [], set()
    while len(order) < len(api):
        ready = sorted((k for k in api if k not in done and deps[k] <= done), key=int)
        assert ready, "the graph has a cycle"
        order += ready
        done |= set(ready)
    return order


def run_api(api, classes) -> dict[str, tuple]:
    """Execute an API-format graph as ComfyUI does: declared inputs only (hidden ones filled in), links
    resolved, VALIDATE_INPUTS first, nodes in dependency order."""
    results = {}
    for node_id in topological_order(api):
        entry = api[node_id]
        cls = classes[entry["class_type"]]
        declared = input_specs(cls)
        kwargs = {}
        for name, value in entry["inputs"].items():
            if name in declared:  # undeclared inputs (LoadImage's "upload") are ignored by the server
                kwargs[name] = results[value[0]][value[1]] if isinstance(value, list) else value
        if hasattr(cls, "VALIDATE_INPUTS"):
            wanted = inspect.signature(cls.VALIDATE_INPUTS).parameters
            verdict = cls.VALIDATE_INPUTS(**{k: v for k, v in kwargs.items() if k in wanted})
            assert verdict is True, f"node {node_id}: {verdict}"
        hidden = {"UNIQUE_ID": node_id, "PROMPT": api, "EXTRA_PNGINFO": None}
        for name, kind in (cls.INPUT_TYPES().get("hidden") or {}).items():
            kwargs[name] = hidden.get(kind)
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if getattr(cls, "OUTPUT_NODE", False) and not cls.RETURN_TYPES:
            results[node_id] = ()
        else:
            assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES), f"node {node_id}: outputs"
            results[node_id] = out
    return results


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_api_graph_runs(path, classes):
    api = comfy_doubles.apply_overrides(load(api_path(path)))
    comfy_doubles.RECORDS.clear()
    run_api(api, classes)
    output_ids = {k for k, e in api.items() if getattr(classes[e["class_type"]], "OUTPUT_NODE", False)}
    assert output_ids, "the workflow has no output node"
    received = {node_id: images for node_id, _, images in comfy_doubles.RECORDS}
    assert set(received) == output_ids and len(comfy_doubles.RECORDS) == len(output_ids)
    for node_id, images in sorted(received.items()):
        assert isinstance(images, torch.Tensor) and images.dtype == torch.float32, node_id
        assert images.ndim == 4 and images.shape[-1] == 3 and images.shape[0] >= 1, (node_id, tuple(images.shape))
        assert torch.isfinite(images).all(), f"node {node_id}: NaN or infinity"
        assert images.min() >= 0 and images.max() <= 1, f"node {node_id}: values outside 0..1"
    for node_id, shape in EXPECTED_SIZES.get(path.stem, {}).items():
        assert tuple(received[node_id].shape) == shape, f"node {node_id}: {tuple(received[node_id].shape)}"


def test_inpaint_workflow_keeps_real_pixels(classes):
    """In the shipped inpainting graph, the saved image is FlowWarp's wherever generate_mask is 0 (bit for bit)
    and the sampler's picture deep inside the holes."""
    api = comfy_doubles.apply_overrides(load(api_path(REPO / "workflows" / "flowwarp_inpaint_sd.json")))
    results = run_api(api, classes)
    warped, generate = results["4"][0], results["4"][1]
    final = results["18"][0]
    real = generate[0] == 0
    assert real.any() and (~real).any()
    assert torch.equal(final[0][real], warped[0][real])
    decoded = results["17"][0]  # 344 x 344, placed back at offset 3
    deep = generate[0, 3:347, 3:347] == 1
    assert not torch.equal(final[0, 3:347, 3:347][deep], warped[0, 3:347, 3:347][deep])
    inner = torch.nn.functional.max_pool2d(1 - generate[None], 9, stride=1, padding=4)[0, 0, 3:347, 3:347] == 0
    assert inner.any()
    assert torch.equal(final[0, 3:347, 3:347][inner], decoded[0][inner])


def test_inpaint_workflow_runs_a_pose_sequence(classes):
    """The same graph animates the photo: a target pose file of N frames gives N finished frames, each with
    FlowWarp's real pixels kept."""
    api = comfy_doubles.apply_overrides(load(api_path(REPO / "workflows" / "flowwarp_inpaint_sd.json")))
    frames = [json.loads((SAMPLES / name).read_text(encoding="utf-8"))
              for name in ("jumper.pose.json", "fashion_standing.pose.json")]
    api["3"]["inputs"]["pose_json"] = json.dumps([f[0] if isinstance(f, list) else f for f in frames])
    results = run_api(api, classes)
    warped, generate = results["4"][0], results["4"][1]
    final = results["18"][0]
    assert final.shape == (2, 350, 350, 3) and not torch.equal(warped[0], warped[1])
    real = generate == 0
    assert torch.equal(final[real], warped[real])


# A workflow saved before the nodes shared one scheduler vocabulary holds the former names (core.schedulers'
# FORMER_SCHEDULER_NAMES); ComfyUI checks a COMBO value against the node's list, so the lists keep them.
FORMER_SCHEDULERS = {"unipc": "uni_pc_bh2", "dpmsolver++": "dpmpp_2m"}


def _run_with_scheduler(api, classes, value) -> dict[str, torch.Tensor]:
    """Every scheduler widget of our nodes set to ``value`` (checked as ComfyUI checks a saved value), the graph run:
    output node id -> images."""
    samplers = [k for k, e in api.items() if e["class_type"].startswith("PoseTransfer")
                and "scheduler" in input_specs(classes[e["class_type"]])]
    assert samplers
    for k in samplers:
        api[k]["inputs"]["scheduler"] = value
        kind, options = input_specs(classes[api[k]["class_type"]])["scheduler"]
        check_widget_value(f"node {k}", "scheduler", kind, options, value)
    comfy_doubles.RECORDS.clear()
    run_api(api, classes)
    return {node_id: images for node_id, _, images in comfy_doubles.RECORDS}


@pytest.mark.parametrize("stem", ["pcdms_full", "repose"])
def test_former_scheduler_names_still_run(stem, classes):
    """Each former name passes the widget check and gives exactly what its new name gives; another scheduler gives
    another image (so the comparison can fail)."""
    from posetransfer.core.schedulers import FORMER_SCHEDULER_NAMES, SCHEDULER_CHOICES

    assert set(FORMER_SCHEDULERS) == set(FORMER_SCHEDULER_NAMES)
    api = comfy_doubles.apply_overrides(load(API_DIR / f"{stem}_api.json"))
    for entry in api.values():  # ComfyUI's names first, the former ones last, said so in the tooltip
        kind, options = input_specs(classes[entry["class_type"]]).get("scheduler", (None, {}))
        if entry["class_type"].startswith("PoseTransfer") and kind is not None:
            assert kind == [*SCHEDULER_CHOICES, *FORMER_SCHEDULER_NAMES]
            assert all(f"{former} (= {name})" in options["tooltip"] for former, name in FORMER_SCHEDULERS.items())
    for former, name in FORMER_SCHEDULERS.items():
        old, new = _run_with_scheduler(api, classes, former), _run_with_scheduler(api, classes, name)
        assert old and old.keys() == new.keys()
        for node_id in new:
            assert torch.equal(old[node_id], new[node_id]), f"{former} / {name}: node {node_id} differs"
    other = _run_with_scheduler(api, classes, "euler")
    assert any(not torch.equal(other[k], new[k]) for k in new), "the scheduler choice changes nothing"
    with pytest.raises(AssertionError, match="is not one of"):
        _run_with_scheduler(api, classes, "dpm++_2m")  # an alias of the core, never a widget value
