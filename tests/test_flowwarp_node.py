"""The FlowWarp node on real (shrunk) samples: outputs, batching rules, flow models, progress, interrupt."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posetransfer.core.flow import flow_to_color
from posetransfer.core.warp.flowwarp import flow_model_method
from posetransfer.core.pose.geometry import resize
from posetransfer.core.images import images_to_tensor, load_image
from posetransfer.core.pose.formats import dump_pose_keypoint, load_pose_keypoint
from posetransfer.nodes import bridge
from posetransfer.nodes.flowwarp_nodes import PoseTransferFlowWarp

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SIZE = 96  # small frames keep the tests fast


def sample(name, size=SIZE):
    """(image (H, W, 3), POSE_KEYPOINT frame) of a sample, resized to size x size."""
    image = load_image(SAMPLES / f"{name}.png")
    pose = load_pose_keypoint((SAMPLES / f"{name}.pose.json").read_text())[0]
    image, pose = resize(image, pose, size, size, "area")
    return image, dump_pose_keypoint(pose)[0]


def pose_only(name, width=SIZE, height=SIZE):
    pose = load_pose_keypoint((SAMPLES / f"{name}.pose.json").read_text())[0]
    return dump_pose_keypoint(resize(None, pose, width, height)[1])[0]


@pytest.fixture(autouse=True)
def no_comfy(monkeypatch):
    for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
        monkeypatch.setitem(sys.modules, name, None)
    yield
    bridge.set_interrupt_callback(None)


@pytest.fixture
def bars(monkeypatch):
    """Every ProgressBar the node creates."""
    made = []

    class Recording(bridge.ProgressBar):
        def __init__(self, total):
            super().__init__(total)
            made.append(self)

    monkeypatch.setattr(bridge, "ProgressBar", Recording)
    return made


@pytest.fixture(scope="module")
def fashion():
    return sample("fashion_standing")


def run(image, source, targets, **options):
    return PoseTransferFlowWarp().warp(images_to_tensor(image), source, targets, **options)


class IdentityFlow:
    """A fake learned flow model: every output pixel comes from the same place (zero flow), all visible."""

    def __init__(self):
        self.calls = []

    def estimate(self, source, source_pose, target_pose):
        self.calls.append((tuple(source.shape), target_pose.width, target_pose.height))
        h, w = target_pose.height, target_pose.width
        return torch.zeros(1, 2, h, w), torch.ones(1, 1, h, w)


# ------------------------------------------------------------------------------------------ declaration

def test_declaration_and_defaults():
    required = PoseTransferFlowWarp.INPUT_TYPES()["required"]
    assert list(required) == ["image", "source_pose", "target_pose", "method", "segmentation", "background",
                              "fill", "retarget", "anchor", "source_person", "target_person"]
    defaults = {name: spec[1].get("default") for name, spec in required.items()}
    assert defaults["method"] == "parts" and defaults["segmentation"] == "grabcut"
    assert defaults["background"] == "inpaint" and defaults["fill"] == "mirror"
    assert defaults["retarget"] is True and defaults["anchor"] == "source"
    for name in ("method", "segmentation", "background", "fill", "anchor"):
        assert defaults[name] in required[name][0], name
    assert PoseTransferFlowWarp.INPUT_TYPES()["optional"]["flow_model"][0] == "POSE_FLOW_MODEL"
    assert PoseTransferFlowWarp.RETURN_TYPES == ("IMAGE", "MASK", "IMAGE", "MASK", "POSE_KEYPOINT")


# ---------------------------------------------------------------------------------------------- outputs

def test_outputs_shapes_types_ranges(fashion, bars):
    image, source = fashion
    out_image, generate, flow_image, person, pose = run(image, source, pose_only("jumper"))
    assert out_image.dtype == torch.float32 and tuple(out_image.shape) == (1, SIZE, SIZE, 3)
    assert flow_image.dtype == torch.float32 and tuple(flow_image.shape) == (1, SIZE, SIZE, 3)
    for mask in (generate, person):
        assert mask.dtype == torch.float32 and tuple(mask.shape) == (1, SIZE, SIZE)
    for t in (out_image, generate, flow_image, person):
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
    assert set(generate.unique().tolist()) <= {0.0, 1.0}  # binary, as inpainting expects
    assert 0 < generate.mean() < 0.5 and person.mean() > 0.05
    # The person moved: the picture changed and the flow picture is not all white.
    assert (out_image[0].numpy() - image).__abs__().mean() > 0.01
    assert flow_image.min() < 0.9
    # The pose used: retargeted onto the photo's canvas, in pixels, JSON-able.
    assert len(pose) == 1 and (pose[0]["canvas_width"], pose[0]["canvas_height"]) == (SIZE, SIZE)
    assert len(pose[0]["people"]) == 1 and max(pose[0]["people"][0]["pose_keypoints_2d"]) > 1.5
    json.dumps(pose)
    assert [(b.total, b.current) for b in bars] == [(1, 1)]


def test_one_image_with_a_pose_sequence(fashion, bars):
    image, source = fashion
    targets = [pose_only("jumper"), pose_only("model_red_background"), source]
    out_image, generate, flow_image, person, pose = run(image, source, targets, segmentation="skeleton")
    assert tuple(out_image.shape) == (3, SIZE, SIZE, 3) and tuple(generate.shape) == (3, SIZE, SIZE)
    assert tuple(flow_image.shape) == (3, SIZE, SIZE, 3) and tuple(person.shape) == (3, SIZE, SIZE)
    assert len(pose) == 3
    assert not torch.allclose(out_image[0], out_image[1])
    assert [(b.total, b.current) for b in bars] == [(3, 3)]


def test_n_images_with_n_poses(fashion, bars):
    other = sample("model_red_background")
    images = np.stack([fashion[0], other[0]])
    sources = [fashion[1], other[1]]
    targets = [pose_only("jumper"), pose_only("jumper")]
    out_image, generate, _, _, pose = run(images, sources, targets, segmentation="skeleton", background="keep")
    assert tuple(out_image.shape) == (2, SIZE, SIZE, 3) and len(pose) == 2
    # Each frame is its own photo: the red backdrop of the second sample (top, left of the model) stays red.
    corner = out_image[:, 2:10, 14:22].mean(dim=(1, 2))
    assert corner[1, 0] > corner[1, 1] + 0.2 and abs(float(corner[0, 0] - corner[0, 1])) < 0.1
    assert bars[0].current == 2


def test_batch_mismatch_names_the_inputs(fashion):
    image, source = fashion
    images = np.stack([image, image])
    targets = [pose_only("jumper")] * 3
    with pytest.raises(ValueError, match=r"image / source_pose / target_pose.*2 image.*2 source_pose.*3 target_pose"):
        run(images, [source, source], targets)
    with pytest.raises(ValueError, match=r"image / source_pose / target_pose.*1 image.*2 source_pose"):
        run(image, [source, source], targets)


def test_without_retarget_target_canvases_must_agree(fashion):
    image, source = fashion
    targets = [pose_only("jumper"), pose_only("jumper", 80, 80)]
    with pytest.raises(ValueError, match=r"target_pose\[1\].*80x80.*96x96"):
        run(image, source, targets, retarget=False, segmentation="skeleton")
    # With retarget on, every frame lands on the photo's canvas: fine.
    out_image = run(image, source, targets, segmentation="skeleton")[0]
    assert tuple(out_image.shape) == (2, SIZE, SIZE, 3)


def test_without_retarget_the_target_canvas_is_the_output_canvas(fashion):
    image, source = fashion
    out_image, generate, _, _, pose = run(image, source, pose_only("jumper", 64, 80), retarget=False,
                                          segmentation="skeleton")
    assert tuple(out_image.shape) == (1, 80, 64, 3) and tuple(generate.shape) == (1, 80, 64)
    assert (pose[0]["canvas_width"], pose[0]["canvas_height"]) == (64, 80)


def test_source_pose_of_a_resized_photo(fashion):
    image, _ = fashion
    big = dump_pose_keypoint(load_pose_keypoint((SAMPLES / "fashion_standing.pose.json").read_text()))
    out_image = run(image, big, pose_only("jumper"), segmentation="skeleton")[0]  # 350x350 pose, 96x96 photo
    assert tuple(out_image.shape) == (1, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match=r"source_pose\[0\].*aspect"):
        run(image, pose_only("fashion_standing", 96, 120), pose_only("jumper"))


# ------------------------------------------------------------------------------------------ flow models

def test_model_method_uses_the_flow_model(fashion):
    image, source = fashion
    model = IdentityFlow()
    out_image, generate, flow_image, person, _ = run(image, source, [pose_only("jumper")] * 2, method="single",
                                                     flow_model=model, segmentation="skeleton")
    assert len(model.calls) == 2 and model.calls[0] == ((1, 3, SIZE, SIZE), SIZE, SIZE)
    for frame, mask in zip(out_image, person):  # the person (composited over the background like 'parts')
        on = mask.numpy() >= 1
        assert on.sum() > 100
        np.testing.assert_allclose(frame.numpy()[on], image[on], atol=1e-5)
    assert generate.max() == 0 and flow_image.min() > 0.999  # nothing made up; zero flow is white


def tiny_flow_models():
    """The two learned flow models' estimators, tiny and seeded."""
    from posetransfer.core.flow_models import (PART_FLOW_TINY_CONFIG, TINY_FLOW_NET_CONFIG, TINY_REFINER_CONFIG,
                                               PartFlowEstimator, PartFlowNet, SingleTransformEstimator,
                                               SingleTransformFlowNet, SingleTransformRefiner)

    torch.manual_seed(0)
    single = SingleTransformEstimator(SingleTransformFlowNet(**TINY_FLOW_NET_CONFIG),
                                      SingleTransformRefiner(**TINY_REFINER_CONFIG))
    return {"single": single, "structure": PartFlowEstimator(PartFlowNet(**PART_FLOW_TINY_CONFIG))}


def test_loaded_flow_models_are_handed_to_comfy(fashion, monkeypatch):
    import comfy_doubles

    from posetransfer.nodes.flow_model_nodes import ManagedFlowModel

    image, source = fashion
    targets = [pose_only("jumper")]
    for kind, estimator in tiny_flow_models().items():
        expected = run(image, source, targets, method=kind, flow_model=estimator, segmentation="skeleton")
        managed = ManagedFlowModel(estimator)
        assert flow_model_method(managed) == flow_model_method(estimator) == kind  # what method 'model' reads
        # The estimator's attributes show through (generate only where the estimator has it).
        assert hasattr(managed, "generate") == hasattr(estimator, "generate") == (kind == "single")
        with monkeypatch.context() as mp:
            fake = comfy_doubles.FakeModelManager(mp)
            moves = comfy_doubles.spy_module_moves(mp)
            for _ in range(2):
                out = run(image, source, targets, method=kind, flow_model=managed, segmentation="skeleton")
                for a, b in zip(out, expected):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
            # One ModelPatcher over the estimator's networks, asked to load before every estimate.
            assert len(fake.patchers) == 1 and fake.patchers[0] is managed.managed.patcher
            assert [models for models, _, _ in fake.loads] == [[managed.managed.patcher]] * 2
            nets = set(managed.managed.modules.values())
            assert nets == ({estimator.flow_net, estimator.refiner} if kind == "single" else {estimator.model})
            assert not [m for m, _, _ in moves if m in nets or isinstance(m, bridge._Holder)], kind


def test_learned_methods_need_a_flow_model_of_their_kind(fashion):
    image, source = fashion
    models = tiny_flow_models()
    for method in ("single", "structure", "model"):
        with pytest.raises(ValueError, match=f"flow_model: method '{method}' needs"):
            run(image, source, pose_only("jumper"), method=method)
    with pytest.raises(ValueError, match="flow_model.*estimate"):
        run(image, source, pose_only("jumper"), method="single", flow_model=object())
    with pytest.raises(ValueError, match="flow_model: holds a structure-aware part-flow model.*use method 'structure'"):
        run(image, source, pose_only("jumper"), method="single", flow_model=models["structure"])
    with pytest.raises(ValueError, match="flow_model: method 'model' takes the kind .* IdentityFlow does not say"):
        run(image, source, pose_only("jumper"), method="model", flow_model=IdentityFlow())


def test_parts_method_ignores_a_connected_flow_model(fashion):
    image, source = fashion
    model = IdentityFlow()
    run(image, source, pose_only("jumper"), flow_model=model, segmentation="skeleton")
    assert model.calls == []


# ------------------------------------------------------------------------------------ progress, interrupt

def test_interrupt_stops_the_batch(fashion, bars):
    image, source = fashion
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:  # the check after the first frame
            raise InterruptedError("cancelled")

    bridge.set_interrupt_callback(interrupt)
    with pytest.raises(InterruptedError):
        run(image, source, [pose_only("jumper")] * 4, segmentation="skeleton")
    assert len(calls) == 2 and bars[0].total == 4 and bars[0].current == 1


def test_interrupt_checked_before_any_work(fashion, bars):
    image, source = fashion

    def interrupt():
        raise InterruptedError("cancelled")

    bridge.set_interrupt_callback(interrupt)
    with pytest.raises(InterruptedError):
        run(image, source, [pose_only("jumper")] * 2)
    assert bars[0].current == 0


# ------------------------------------------------------------- through ComfyUI's own progress bar and cancel

def count_frames(monkeypatch):
    """Spy on core.warp.flowwarp.warp_prepared: per call, how many earlier frames' results are still alive."""
    import gc
    import weakref

    import posetransfer.core.warp.flowwarp as fw

    made, alive_at_call = [], []
    warp_prepared = fw.warp_prepared

    def spy(*args, **kwargs):
        gc.collect()
        alive_at_call.append(sum(ref() is not None for ref in made))
        result = warp_prepared(*args, **kwargs)
        made.append(weakref.ref(result))
        return result

    monkeypatch.setattr(fw, "warp_prepared", spy)
    return alive_at_call


def test_progress_per_frame_and_cancel_within_one_frame_in_comfy(fashion, monkeypatch):
    import comfy_doubles

    image, source = fashion
    targets = [pose_only("jumper")] * 6
    comfy = comfy_doubles.FakeComfyProgress(monkeypatch)
    run(image, source, targets, segmentation="skeleton")
    assert comfy.totals == [6] and comfy.updates == [1] * 6 and comfy.checks >= 6

    calls = count_frames(monkeypatch)
    comfy = comfy_doubles.FakeComfyProgress(monkeypatch, cancel_after=2)  # cancel pressed during frame 2
    with pytest.raises(comfy_doubles.InterruptProcessingException):
        run(image, source, targets, segmentation="skeleton")
    assert len(calls) == 2 and comfy.updates == [1, 1]  # frame 3 was never started


# ------------------------------------------------------------------------- bad input (issue 12, part 4)

def with_body(frame, change):
    frame = json.loads(json.dumps(frame))
    body = np.array(frame["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    change(body)
    frame["people"][0]["pose_keypoints_2d"] = body.reshape(-1).tolist()
    return frame


def test_canvases_beyond_the_limit_are_refused_before_allocating(fashion):
    # A 20000 x 20000 target used to grow the node to 24 GB (inside ComfyUI that kills the server). The check
    # reads the numbers only, so this test allocates nothing of that size.
    image, source = fashion
    big = dict(pose_only("jumper"), canvas_width=20000, canvas_height=20000)
    for retarget in (False, True):
        with pytest.raises(ValueError, match=r"target_pose: canvas 20000x20000 is larger than the 16384 px"):
            run(image, source, big, retarget=retarget)
    with pytest.raises(ValueError, match=r"source_pose: canvas 20000x20000"):
        run(image, big, pose_only("jumper"))
    wide = torch.zeros(1, 1, 1, 3).expand(1, 8, 16385, 3)  # a view: no 16385-wide picture is allocated
    with pytest.raises(ValueError, match=r"image: canvas 16385x8 is larger than"):
        PoseTransferFlowWarp().warp(wide, source, pose_only("jumper"))


@pytest.mark.parametrize("value", [1e300, 1e12, -1e6])
def test_joints_far_off_the_canvas_are_refused_by_name(fashion, value):
    image, source = fashion
    far = with_body(pose_only("jumper"), lambda b: b.__setitem__((4, 1), value))
    with pytest.raises(ValueError, match=r"target_pose\[1\]: person 0, joint 4 \(right_wrist\) at .* outside the "
                                         r"96x96 canvas"):
        run(image, source, [pose_only("jumper"), far])
    with pytest.raises(ValueError, match=r"source_pose: person 0, joint 4 \(right_wrist\)"):
        run(image, with_body(source, lambda b: b.__setitem__((4, 1), value)), pose_only("jumper"))


def test_targets_without_a_pose_and_negative_person_indices_are_refused(fashion):
    # Used to give a picture with the person erased (no joints / all on one point) or the last person (-1).
    image, source = fashion
    empty = with_body(pose_only("jumper"), lambda b: b.__setitem__(slice(None), 0.0))
    point = with_body(pose_only("jumper"), lambda b: b.__setitem__(slice(None), (40.0, 50.0, 1.0)))
    for retarget in (False, True):
        with pytest.raises(ValueError, match=r"target_pose\[1\], person 0: the person has no body joints"):
            run(image, source, [pose_only("jumper"), empty], retarget=retarget, segmentation="skeleton")
        with pytest.raises(ValueError, match=r"target_pose\[0\], person 0: all 18 present .* on one point"):
            run(image, source, point, retarget=retarget, segmentation="skeleton")
    for name in ("target_person", "source_person"):
        with pytest.raises(ValueError, match=f"{name}: expected a person index 0 or more .* got -1"):
            run(image, source, pose_only("jumper"), **{name: -1})


def test_a_person_with_nothing_to_draw_is_refused(fashion):
    # Joints within range but the whole person beyond the canvas edge: no body part lands on the canvas.
    image, source = fashion
    away = with_body(pose_only("jumper"), lambda b: b.__setitem__((slice(None), 0), b[:, 0] + 300))
    with pytest.raises(ValueError, match=r"target_pose\[0\]: no body part of the person could be placed"):
        run(image, source, away, retarget=False, segmentation="skeleton")


def test_a_pose_sequence_keeps_no_frame_intermediates(fashion, monkeypatch):
    # Memory follows the output batch: when frame i is made, no earlier frame's FlowWarpResult is alive (today's
    # main kept all of them, and stacked copies: 4.6 GB for 300 frames). Same outputs as core flow_warp.
    from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp

    image, source = fashion
    targets = [pose_only("jumper"), pose_only("model_red_background"), source, pose_only("jumper")]
    expected = flow_warp([image], load_pose_keypoint(source), [load_pose_keypoint(t)[0] for t in targets],
                         FlowWarpOptions(segmentation="skeleton", retarget=True))
    calls = count_frames(monkeypatch)
    out_image, generate, flow_image, person, _ = run(image, source, targets, segmentation="skeleton")
    assert calls == [0, 0, 0, 0]
    for i, r in enumerate(expected):
        torch.testing.assert_close(out_image[i], r.image.permute(1, 2, 0).clamp(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(generate[i], 1 - r.visibility, rtol=0, atol=0)
        torch.testing.assert_close(person[i], r.person.clamp(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(flow_image[i], flow_to_color(r.flow[None])[0].permute(1, 2, 0), rtol=0, atol=0)
