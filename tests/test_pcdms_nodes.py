"""PCDMs nodes end to end on tiny models (CPU): loader, encoders, prior embed, inpaint / simplified, refine.

Tiny models, CLIP_VISION and VAE stand-ins come from ``comfy_doubles`` (shared with the workflow tests)."""

import json
import sys

import pytest
import torch

import comfy_doubles
from comfy_doubles import PCDMS_FILES, SAMPLES, TinyClipVision, TinyDinoVision, TinyVAE

from posetransfer.core.images import load_image
from posetransfer.core.pcdms.encoders import CLIP_MEAN, CLIP_STD, clip_preprocess
from posetransfer.nodes.adapters import comfy_latent_codec
from posetransfer.nodes import bridge, pcdms_nodes as pn

FAST = {"steps": 2, "resolution": 64}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = comfy_doubles.prepare_model_folder(tmp_path_factory.mktemp("pcdms_models"))
    comfy_doubles.tiny_pcdms("refine", 7).save_pretrained(str(folder / "refine_folder"), safe_serialization=True)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
            mp.setitem(sys.modules, name, None)
        mp.setenv("POSETRANSFER_MODELS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def m(models_dir):
    load = pn.PoseTransferPCDMsLoader().load
    return {kind: load(name)[0] for kind, name in PCDMS_FILES.items()}


@pytest.fixture(scope="module")
def enc():
    clip_vision, dino_vision = TinyClipVision(0), TinyDinoVision()
    encoders = pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", clip_vision, dino_vision)[0]
    return {"both": encoders, "clip_vision": clip_vision, "dino_vision": dino_vision,
            "dino_only": pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", None, dino_vision)[0],
            "clip_only": pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", clip_vision, None)[0]}


@pytest.fixture(scope="module")
def data():
    def pose(name):
        with open(SAMPLES / name, encoding="utf-8") as f:
            return json.load(f)

    image = torch.from_numpy(load_image(SAMPLES / "fashion_standing.png"))[None]
    return {"image": image, "source_pose": pose("fashion_standing.pose.json"), "target_pose": pose("jumper.pose.json"),
            "vae": TinyVAE()}


class CountingBar(bridge.ProgressBar):
    made: list = []

    def __init__(self, total):
        super().__init__(total)
        CountingBar.made.append(self)


@pytest.fixture
def bars(monkeypatch):
    CountingBar.made = []
    monkeypatch.setattr(bridge, "ProgressBar", CountingBar)
    return CountingBar.made


def inpaint(m, enc, data, kind="inpaint", encoders="both", **kw):
    args = dict(FAST, seed=1, cfg=2.0, scheduler="default", layout="pad")
    args.update(kw)
    return pn.PoseTransferPCDMsInpaint().generate(m[kind], enc[encoders], data["vae"], data["image"],
                                                  data["source_pose"], data["target_pose"], **args)[0]


def check_image(images, shape):
    assert tuple(images.shape) == shape and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


# ------------------------------------------------------------------------------------------------ loader
def test_loader_lists_files_and_folders_and_detects_kinds(models_dir, m):
    choices = pn.PoseTransferPCDMsLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert set(PCDMS_FILES.values()) | {"refine_folder"} <= set(choices)
    assert not any(c.startswith("refine_folder/") for c in choices)  # weights inside a folder are not listed
    other = models_dir / "repose_like" / "denoiser"                     # another model's part: not listed at all
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"_class_name": "RePoseDenoiser"}')
    (other / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    choices = pn.PoseTransferPCDMsLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert not any(c.startswith("repose_like") for c in choices) and "refine_folder" in choices
    assert {k: v.kind for k, v in m.items()} == {k: k for k in PCDMS_FILES}
    folder = pn.PoseTransferPCDMsLoader().load("refine_folder", "refine", "float32")[0]
    assert folder.kind == "refine" and next(folder.model.parameters()).dtype == torch.float32
    assert pn.PoseTransferPCDMsLoader().load("refine_folder", "refine", "float32")[0] is folder  # cached


def test_loader_errors(models_dir):
    with pytest.raises(ValueError, match="not 'prior'"):
        pn.PoseTransferPCDMsLoader().load(PCDMS_FILES["inpaint"], "prior")
    with pytest.raises(ValueError, match="no PCDMs checkpoint"):
        pn.PoseTransferPCDMsLoader().load(pn.NO_MODEL)
    with pytest.raises(FileNotFoundError, match="posetransfer model folder"):
        pn.PoseTransferPCDMsLoader().load("missing.safetensors")


def test_encoders_node(enc):
    e = enc["both"]
    images = torch.rand(2, 40, 30, 3)
    assert tuple(e.clip.encode(images).shape) == (2, TinyClipVision.EMBED_DIM)
    assert tuple(e.dino.encode(images).shape) == (2, 257, TinyDinoVision.WIDTH)  # 224 px: CLS + 16 x 16 patches
    # ComfyUI receives the official CLIPImageProcessor crop, which its preprocessing (8-bit rounding, CLIP mean /
    # std at 224 px) turns into exactly the official pixels
    got = e.clip.clip_vision.last_image
    assert tuple(got.shape) == (2, 224, 224, 3)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    comfy_pixels = ((got * 255).clamp(0, 255).round() / 255 - mean) / std
    torch.testing.assert_close(comfy_pixels.permute(0, 3, 1, 2), clip_preprocess(images), rtol=0, atol=1e-5)
    # normalised pixels -> the image ComfyUI's preprocessing turns back into them (zeros = CLIP mean colour)
    assert tuple(e.clip.encode_pixels(torch.zeros(1, 3, 224, 224)).shape) == (1, TinyClipVision.EMBED_DIM)
    with pytest.raises(ValueError, match="at least one"):
        pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state")
    with pytest.raises(ValueError, match="dino_vision: expected DINOv2"):   # a CLIP model in the DINOv2 socket
        pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", None, TinyClipVision(0))
    with pytest.raises(ValueError, match="CLIP_VISION"):
        pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", object())


class _ProjectionModel(torch.nn.Module):
    """ComfyUI's CLIPVisionModelProjection interface: forward(pixel_values, intermediate_output) -> (last hidden,
    intermediate, image_embeds, mm_projected)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, TinyClipVision.EMBED_DIM)

    def forward(self, pixel_values, intermediate_output=None):
        return None, None, self.proj(pixel_values.mean(dim=(2, 3))), None


def test_clip_from_comfyui_runs_its_model_on_the_official_pixels():
    """With ComfyUI's model object the embedding is computed on the official pixels themselves: exact for the
    prior's all-zero unconditional input, which a round trip through an 8-bit image would move."""
    vision = TinyClipVision(0)
    vision.model = _ProjectionModel()
    (encoders,) = pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", vision)
    images = torch.rand(2, 40, 30, 3)
    with torch.no_grad():
        want = vision.model.proj(clip_preprocess(images).mean(dim=(2, 3)))
        zero = vision.model.proj(torch.zeros(1, 3))
    torch.testing.assert_close(encoders.clip.encode(images), want, rtol=0, atol=1e-6)
    assert torch.equal(encoders.clip.encode_pixels(torch.zeros(1, 3, 224, 224)), zero)
    assert vision.calls == 0  # not through encode_image


def _comfy_layout_of(hf):
    """A transformers Dinov2Model's weights in the module layout of ComfyUI's Dinov2Model (what 'Load CLIP Vision'
    gives for DINOv2): the same tensors, ComfyUI's forward interface."""

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf.encoder

        def forward(self, x, intermediate_output=None):
            out = self.hf(x, output_hidden_states=True)
            hidden = out.hidden_states  # (embeddings, layer 1, ..., layer L)
            inter = None if intermediate_output is None else hidden[1:][intermediate_output]
            return out.last_hidden_state, inter

    class Patches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projection = hf.embeddings.patch_embeddings.projection

        def forward(self, pixel_values):
            return self.projection(pixel_values).flatten(2).transpose(1, 2)

    model = torch.nn.Module()
    model.embeddings = torch.nn.Module()
    model.embeddings.patch_embeddings = Patches()
    model.embeddings.cls_token = hf.embeddings.cls_token
    model.embeddings.position_embeddings = hf.embeddings.position_embeddings
    model.encoder = Encoder()
    model.layernorm = hf.layernorm
    vision = TinyDinoVision()
    vision.model = model.eval()
    return vision


def test_dino_from_comfyui_equals_the_official_transformers_path():
    """ComfyUI's own DINOv2 encode_image would see 518 px ImageNet-normalised input (1370 tokens); the node feeds
    the official CLIPImageProcessor input (224 px, CLIP mean / std, position embeddings resized as transformers
    4.32): equal to core's DINOv2TokenEncoder on a transformers Dinov2Model with the same weights."""
    from transformers import Dinov2Config, Dinov2Model

    from posetransfer.core.pcdms.encoders import DINOv2TokenEncoder

    torch.manual_seed(0)
    hf = Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                  image_size=518, patch_size=14)).eval()
    with torch.no_grad():
        hf.embeddings.position_embeddings.normal_(0, 0.5)   # not the zero init: the resize must matter
        hf.embeddings.cls_token.normal_()
    images = torch.rand(2, 300, 200, 3)
    want = DINOv2TokenEncoder(hf).encode(images)
    vision = _comfy_layout_of(hf)
    (encoders,) = pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", None, vision)
    got = encoders.dino.encode(images)
    assert got.shape == want.shape == (2, 257, 24)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert vision.encode_image_calls == 0
    (penult,) = pn.PoseTransferPCDMsEncoders().bundle("penultimate_hidden_states", None, vision)
    pixels = clip_preprocess(images)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(penult.dino.encode(images), ref, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- the stages
def test_prior_embed(m, enc, data, bars):
    node = pn.PoseTransferPriorEmbed()
    args = (m["prior"], enc["both"], data["image"], data["source_pose"], data["target_pose"])
    a = node.embed(*args, seed=3, **FAST, cfg=0.0)[0]
    b = node.embed(*args, seed=3, **FAST, cfg=0.0)[0]
    c = node.embed(*args, seed=4, **FAST, cfg=0.0)[0]
    assert tuple(a.embeddings.shape) == (1, TinyClipVision.EMBED_DIM) and torch.isfinite(a.embeddings).all()
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)
    assert not torch.allclose(a.embeddings, c.embeddings)
    guided = node.embed(*args, seed=3, **FAST, cfg=3.0)[0]  # the unconditional branch encodes zero pixels
    assert torch.isfinite(guided.embeddings).all()
    assert [(bar.total, bar.current) for bar in bars] == [(2, 2)] * 4


def test_inpaint_with_and_without_prior(m, enc, data, bars):
    embed = pn.PoseTransferPriorEmbed().embed(m["prior"], enc["both"], data["image"], data["source_pose"],
                                              data["target_pose"], seed=0, **FAST, cfg=0.0)[0]
    a = inpaint(m, enc, data, prior_embed=embed)
    b = inpaint(m, enc, data, prior_embed=embed)
    check_image(a, (1, 400, 400, 3))  # the target pose's canvas
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, inpaint(m, enc, data, prior_embed=embed, seed=2))
    without = inpaint(m, enc, data, scheduler="ddim", layout="squash")  # the photo's CLIP embedding stands in
    check_image(without, (1, 400, 400, 3))
    assert [(bar.total, bar.current) for bar in bars] == [(2, 2)] * 5
    with pytest.raises(ValueError, match="clip_vision"):
        inpaint(m, enc, data, encoders="dino_only")


def test_inpaint_batch_of_target_poses(m, enc, data):
    two = dict(data, target_pose=[data["target_pose"]] * 2)
    out = inpaint(m, enc, two)
    check_image(out, (2, 400, 400, 3))


def test_simplified_and_refine(m, enc, data, bars):
    coarse = inpaint(m, enc, data, kind="simplified", encoders="dino_only", steps=3)
    check_image(coarse, (1, 400, 400, 3))
    node = pn.PoseTransferPCDMsRefine()
    args = (m["refine"], enc["dino_only"], data["vae"], coarse, data["image"])
    a = node.refine(*args, seed=5, **FAST, cfg=2.0)[0]
    check_image(a, tuple(coarse.shape))
    torch.testing.assert_close(a, node.refine(*args, seed=5, **FAST, cfg=2.0)[0], rtol=0, atol=0)
    assert [(bar.total, bar.current) for bar in bars] == [(3, 3), (2, 2), (2, 2)]
    with pytest.raises(ValueError, match="dino_vision"):
        node.refine(m["refine"], enc["clip_only"], data["vae"], coarse, data["image"], **FAST)


def test_steps_send_previews_of_the_target(m, enc, data, monkeypatch):
    seen, sent = comfy_doubles.record_previews(monkeypatch, bridge)
    coarse = inpaint(m, enc, data, kind="simplified", encoders="dino_only", steps=2)
    # 64 px frame, TinyVAE factor 8: the [source | target] canvas is 8x16 latents; the preview is its target half.
    assert [tuple(x.shape[-3:]) for x in seen] == [(4, 8, 8)] * 2 and sent == [("JPEG", 1), ("JPEG", 2)]
    pn.PoseTransferPCDMsRefine().refine(m["refine"], enc["dino_only"], data["vae"], coarse, data["image"], seed=5,
                                        **FAST, cfg=2.0)
    assert [tuple(x.shape[-3:]) for x in seen[2:]] == [(4, 8, 8)] * 2 and sent[2:] == [("JPEG", 3), ("JPEG", 4)]
    assert all(torch.isfinite(x).all() for x in seen)


@pytest.mark.parametrize("node, kind", [("prior", "inpaint"), ("inpaint", "refine"), ("inpaint", "prior"),
                                        ("refine", "simplified")])
def test_wrong_kind_is_a_clear_error(m, enc, data, node, kind):
    with pytest.raises(ValueError, match=f"is a '{kind}' model"):
        if node == "prior":
            pn.PoseTransferPriorEmbed().embed(m[kind], enc["both"], data["image"], data["source_pose"],
                                              data["target_pose"], **FAST)
        elif node == "inpaint":
            inpaint(m, enc, data, kind=kind)
        else:
            pn.PoseTransferPCDMsRefine().refine(m[kind], enc["both"], data["vae"], data["image"], data["image"],
                                                **FAST)


def test_interrupt_stops_sampling(m, enc, data, bars):
    class Stop(Exception):
        pass

    def interrupt():
        if bars and bars[-1].current >= 1:
            raise Stop

    bridge.set_interrupt_callback(interrupt)
    try:
        with pytest.raises(Stop):
            inpaint(m, enc, data, steps=5)
    finally:
        bridge.set_interrupt_callback(None)
    assert bars[-1].total == 5 and bars[-1].current == 1
    assert next(m["inpaint"].model.parameters()).device.type == "cpu"


# ------------------------------------------------------------------------------- ComfyUI's model manager
def test_stages_hand_their_models_to_comfy(m, enc, data, monkeypatch):
    from posetransfer.core.repose.pose_estimator import TinyPoseEstimator
    from posetransfer.nodes.adapters import PoseGuidanceFactory

    torch.manual_seed(0)
    guidance = PoseGuidanceFactory(TinyPoseEstimator(num_joints=3, width=4), threshold=-1.0)
    without = {"inpaint": inpaint(m, enc, data, guidance=guidance)}
    fake = comfy_doubles.FakeModelManager(monkeypatch)
    moves = comfy_doubles.spy_module_moves(monkeypatch)
    runs = []
    for _ in range(2):
        fake.loads.clear()
        embed = pn.PoseTransferPriorEmbed().embed(m["prior"], enc["both"], data["image"], data["source_pose"],
                                                  data["target_pose"], seed=0, **FAST, cfg=0.0)[0]
        prior_loads = list(fake.loads)
        coarse = inpaint(m, enc, data, guidance=guidance)
        refined = pn.PoseTransferPCDMsRefine().refine(m["refine"], enc["both"], data["vae"], coarse, data["image"],
                                                      seed=5, **FAST, guidance=guidance)[0]
        runs.append((embed.embeddings, coarse, refined, prior_loads, list(fake.loads)))
    patcher = {kind: m[kind].managed.patcher for kind in ("prior", "inpaint", "refine")}
    estimator = guidance.managed.patcher
    assert all(p is not None for p in patcher.values()) and estimator is not None
    # One ModelPatcher per model, made on the first run and reused by the second (ComfyUI keeps them loaded).
    assert len(fake.patchers) == 4 and {id(p) for p in fake.patchers} == {id(p) for p in [*patcher.values(),
                                                                                           estimator]}
    for embedding, coarse, refined, prior_loads, loads in runs:
        torch.testing.assert_close(coarse, without["inpaint"], rtol=0, atol=0)  # same result as outside ComfyUI
        assert prior_loads[0][0] == [patcher["prior"]]
        # Each stage's first request loads its model with the guidance's estimator, in one call...
        stage_starts = [models for models, _, _ in loads if models[0] is not patcher["prior"]]
        assert [patcher["inpaint"], estimator] in stage_starts and [patcher["refine"], estimator] in stage_starts
        # ... and every request of a stage keeps its model resident: it is asked for again after each call into
        # ComfyUI's DINOv2 / VAE (loading those may have unloaded it).
        assert all(models[0] in patcher.values() for models, _, _ in loads)
        assert sum(models[0] is patcher["inpaint"] for models, _, _ in loads) >= 4
        assert all(kw == {"force_full_load": True} and not inference for _, kw, inference in loads)
    torch.testing.assert_close(runs[0][2], runs[1][2], rtol=0, atol=0)
    ours = {id(x) for kind in patcher for x in m[kind].model.modules()} | {id(x) for x in guidance.estimator.modules()}
    assert not [mod for mod, _, _ in moves if id(mod) in ours or isinstance(mod, bridge._Holder)]


def test_stages_without_comfy_put_the_model_back_on_the_cpu(m, enc, data, monkeypatch):
    moves = comfy_doubles.spy_module_moves(monkeypatch, move=False)
    monkeypatch.setattr(bridge, "get_device", lambda: torch.device("cuda"))  # recorded, not made
    inpaint(m, enc, data, steps=1)
    holders = [(mod, a) for mod, a, _ in moves if isinstance(mod, bridge._Holder)]
    assert [a for _, a in holders] == [(torch.device("cuda"),), ("cpu",)]  # there for the run, back after
    assert all(mod.parts["model"] is m["inpaint"].model for mod, _ in holders)


def test_comfy_vae_encoding_samples_the_posterior_as_the_official_code():
    """ComfyUI's VAE.encode returns the posterior mean; the official pipelines sample it with their generator
    (the first draw of the random stream). The node's codec samples from ComfyUI's first_stage_model moments with
    the pipeline's generator: equal to DiffusersVAE (the official semantics) on the same weights."""
    from posetransfer.core.pcdms.encoders import DiffusersVAE, MomentsLatentCodec

    vae = TinyVAE()
    codec = comfy_latent_codec(vae)
    assert isinstance(codec, MomentsLatentCodec)
    pixels = torch.rand(2, 3, 32, 48) * 2 - 1
    got = codec.encode(pixels, torch.Generator().manual_seed(3))
    want = DiffusersVAE(vae.vae).encode(pixels, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    mean = torch.as_tensor(vae.encode(pixels.permute(0, 2, 3, 1) / 2 + 0.5)) * codec.scaling_factor
    assert not torch.allclose(got, mean, atol=1e-4)                      # a sample, not the mean
    noise = torch.randn(2, 4, 4, 6)
    torch.testing.assert_close(codec.encode(pixels, noise=noise),
                               DiffusersVAE(vae.vae).encode(pixels, noise=noise), rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.decode(want), DiffusersVAE(vae.vae).decode(want), rtol=0, atol=1e-5)
