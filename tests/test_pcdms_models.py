"""PCDMs models and official checkpoints (issue 5, sections 1-2): manifests at full size on the meta device,
tiny-config forwards against hand-written references, DeepSpeed-format files, the converter, save/load."""

import collections
import json
from pathlib import Path

import pytest
import torch

from posetransfer.core.pcdms import (
    PCDMsCheckpointError,
    PCDMsPriorTransformer,
    check_state_dict,
    convert_pcdms,
    detect_kind,
    inpaint_unet_input,
    load_pcdms,
    model_class,
    side_by_side_mask,
    tiny_config,
)

# The manifests of ../shared/reference/pcdms (every key, shape and dtype of the official checkpoints), shipped
# with the tests so a plain clone can run them.
REFERENCE = Path(__file__).resolve().parent / "data" / "pcdms"
MANIFESTS = {"prior": "stage1_prior", "inpaint": "stage2_inpaint", "refine": "stage3_refine",
             "simplified": "pcdms_simplified"}
KINDS = list(MANIFESTS)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than two fighting over a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Args:
    """An arbitrary object in a checkpoint: torch.load(weights_only=True) must refuse it."""
def randomize(model, seed=0):
    """Seeded random weights everywhere (the pose encoder's conv_out is zero-initialised by diffusers, which
    would make every pose test pass trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.25)
    return model.eval()


def tiny(kind, seed=0):
    return randomize(model_class(kind)(**tiny_config(kind)), seed)


def _g(seed):
    return torch.Generator().manual_seed(seed)


def tiny_inputs(kind, batch=2, seed=1):
    """Inputs for one forward of a tiny model (latents 8 x 16: a 64 x 128 [source | target] canvas)."""
    g = _g(seed)
    cfg = tiny_config(kind)
    if kind == "prior":
        d = cfg["embedding_dim"]
        return dict(hidden_states=torch.randn(batch, d, generator=g), timestep=torch.tensor(500),
                    proj_embedding=torch.randn(batch, 1, d, generator=g),
                    source_pose=torch.rand(batch, 1, 36, generator=g), target_pose=torch.rand(batch, 36, generator=g))
    feats = torch.randn(batch, 5, cfg["image_feature_dim"], generator=g)
    pose_image = torch.rand(batch, 3, 64, 128, generator=g) * 2 - 1
    out = dict(timestep=torch.tensor(700), image_features=feats)
    if kind == "inpaint":
        out.update(sample=torch.randn(batch, 9, 8, 16, generator=g), pose_image=pose_image,
                   global_embedding=torch.randn(batch, 1, 32, generator=g))
    elif kind == "simplified":
        out.update(sample=torch.randn(batch, 9, 8, 16, generator=g), pose_image=pose_image)
    else:
        out.update(sample=torch.randn(batch, 8, 8, 16, generator=g))
    return out


@torch.no_grad()
def run(model, kind, inputs):
    if kind == "prior":
        return model(**inputs).predicted_image_embedding
    cond_args = {k: inputs[k] for k in ("image_features", "global_embedding", "pose_image") if k in inputs}
    return model(inputs["sample"], inputs["timestep"], **model.encode_conditions(**cond_args)).sample


def deepspeed_file(path, state_dict, dtype=torch.float32, flat=False):
    """Imitation of a DeepSpeed ``mp_rank_00_model_states.pt``: weights under 'module' plus bookkeeping (incl.
    a set and torch.Size); ``flat`` stores the tensors as views into one flat buffer like a ZeRO fp16 engine."""
    module = collections.OrderedDict()
    if flat:
        total = sum(v.numel() for v in state_dict.values())
        buf = torch.empty(total, dtype=dtype)
        i = 0
        for k, v in state_dict.items():
            view = buf[i:i + v.numel()].view(v.shape)
            view.copy_(v)
            module[k] = view
            i += v.numel()
    else:
        module.update({k: v.detach().to(dtype).clone() for k, v in state_dict.items()})
    obj = {
        "module": module, "buffer_names": [], "optimizer": None,
        "param_shapes": [collections.OrderedDict((k, v.shape) for k, v in state_dict.items())],
        "frozen_param_shapes": None, "shared_params": {}, "lr_scheduler": {"last_epoch": 7, "base_lrs": [1e-4]},
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": {"unused"}, "skipped_steps": 0,
        "global_steps": 7, "global_samples": 56, "dp_world_size": 8, "mp_world_size": 1,
        "ds_config": {"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}, "ds_version": "0.10.0",
        "epoch": 1, "last_global_step": 7,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------- full size, meta device
@pytest.mark.parametrize("kind", KINDS)
def test_full_size_state_dict_equals_manifest(kind):
    manifest = json.loads((REFERENCE / f"{MANIFESTS[kind]}.json").read_text())
    with torch.device("meta"):
        model = model_class(kind)()
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    ours = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    theirs = {k: (v["shape"], v["dtype"]) for k, v in manifest["tensors"].items()}
    assert list(ours) == list(theirs)  # key for key, in the file's order
    assert ours == theirs  # shape for shape
    assert sum(p.numel() for p in model.parameters()) == manifest["meta"]["num_elements_total"]
    if kind != "prior":
        assert {k: v for k, v in model.config.unet_config.items() if k in manifest["meta"]["unet_config"]} == \
            manifest["meta"]["unet_config"]
    else:
        for k, v in manifest["meta"]["config"].items():
            assert model.config[k] == v
        assert "causal_attention_mask" in dict(model.named_buffers())  # non-persistent, as official


# ------------------------------------------------------------------------------------------ tiny forwards
def test_prior_forward_matches_token_order_reference():
    kind = "prior"
    model = tiny(kind)
    inp = tiny_inputs(kind)
    out = run(model, kind, inp)
    assert out.shape == (2, 16)

    # Independent reference of the README's semantics: 6 tokens in order, + positional embedding, blocks
    # without any mask, norm_out, last token -> proj_to_clip_embeddings.
    with torch.no_grad():
        m = model
        t = m.time_embedding(m.time_proj(torch.full((2,), 500)))
        tokens = torch.stack([
            m.encoder_hidden_states_proj(m.pose_encoder.net(inp["source_pose"][:, 0])),
            m.encoder_hidden_states_proj1(m.pose_encoder1.net(inp["target_pose"])),
            m.embedding_proj(inp["proj_embedding"][:, 0]),
            t,
            m.proj_in(inp["hidden_states"]),
            m.prd_embedding[0, 0].expand(2, -1),
        ], dim=1) + m.positional_embedding
        for blk in m.transformer_blocks:
            tokens = blk(tokens)
        ref = m.proj_to_clip_embeddings(m.norm_out(tokens)[:, -1])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # (B, 1, D) and (B, D) inputs are the same thing; int timestep = tensor timestep
    inp2 = dict(inp, hidden_states=inp["hidden_states"][:, None], source_pose=inp["source_pose"][:, 0],
                timestep=500)
    torch.testing.assert_close(run(model, kind, inp2), out, rtol=0, atol=0)
    # every token matters
    for key in ("proj_embedding", "source_pose", "target_pose", "hidden_states"):
        assert not torch.allclose(run(model, kind, dict(inp, **{key: inp[key] + 0.5})), out)
    # an attention mask (official semantics: pad + causal mask) runs and changes the result
    masked = model(**inp, attention_mask=torch.ones(2, 2, dtype=torch.bool)).predicted_image_embedding
    assert masked.shape == out.shape and not torch.allclose(masked, out)


def test_prior_normalisation_constants():
    model = PCDMsPriorTransformer(**tiny_config("prior"))
    assert model.config.clip_mean == -0.016 and model.config.clip_std == 0.415
    e = torch.randn(3, 16)
    torch.testing.assert_close(model.post_process_latents(model.normalize_embedding(e)), e)
    ref = e * torch.tensor(0.415) + torch.tensor(-0.016)  # official: fp32 0-dim tensors
    assert torch.equal(model.post_process_latents(e), ref)
    assert "causal_attention_mask" not in model.state_dict()
    assert torch.equal(model.causal_attention_mask, torch.full((6, 6), -10000.0).triu(1)[None])


def unet_by_hand(unet, sample, t, context, pose=None, class_labels=None):
    """Stock UNet2DConditionModel pieces run by hand with the official change: conv_in(x) + pose."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t))
    if class_labels is not None:
        emb = emb + unet.class_embedding(class_labels)
    h = unet.conv_in(sample)
    if pose is not None:
        h = h + pose
    res = (h,)
    for blk in unet.down_blocks:
        if getattr(blk, "has_cross_attention", False):
            h, r = blk(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, r = blk(hidden_states=h, temb=emb)
        res += r
    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    for blk in unet.up_blocks:
        r, res = res[-len(blk.resnets):], res[:-len(blk.resnets)]
        if getattr(blk, "has_cross_attention", False):
            h = blk(hidden_states=h, temb=emb, res_hidden_states_tuple=r, encoder_hidden_states=context)
        else:
            h = blk(hidden_states=h, temb=emb, res_hidden_states_tuple=r)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


@torch.no_grad()
def test_inpaint_forward_pose_enters_after_conv_in():
    kind = "inpaint"
    model = tiny(kind)
    inp = tiny_inputs(kind)
    out = run(model, kind, inp)
    assert out.shape == (2, 4, 8, 16)

    m = model
    proj = m.image_proj_model_p.net(inp["image_features"])
    context = torch.cat([proj, inp["global_embedding"]], dim=1)  # DINOv2 tokens, then the CLIP token
    pose = m.pose_proj(inp["pose_image"])
    assert pose.shape == (2, 32, 8, 16) and pose.abs().mean() > 1e-3
    ref = unet_by_hand(m.unet, inp["sample"], inp["timestep"], context, pose, inp["global_embedding"][:, 0])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert torch.equal(out, ref)  # in fact bit-identical: the same operations in the same order

    conds = model.encode_conditions(inp["image_features"], inp["global_embedding"], inp["pose_image"])
    assert conds["encoder_hidden_states"].shape == (2, 6, 32) and conds["class_labels"].shape == (2, 32)
    # class labels as the official (B, 1, D) give the same result
    same = model(inp["sample"], 700, **dict(conds, class_labels=conds["class_labels"][:, None])).sample
    torch.testing.assert_close(same, out, rtol=0, atol=0)
    # the pose matters, and the hook is gone after the call (the bare UNet is the stock UNet)
    no_pose = model(inp["sample"], 700, **dict(conds, pose_features=torch.zeros_like(pose))).sample
    assert not torch.allclose(no_pose, out)
    assert len(model.unet.conv_in._forward_hooks) == 0
    bare = model.unet(inp["sample"], 700, encoder_hidden_states=context,
                      class_labels=inp["global_embedding"][:, 0]).sample
    torch.testing.assert_close(bare, no_pose, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pose_features"):
        model(inp["sample"], 700, **dict(conds, pose_features=None))


@torch.no_grad()
def test_simplified_forward_and_pose_broadcast():
    kind = "simplified"
    model = tiny(kind)
    inp = tiny_inputs(kind)
    out = run(model, kind, inp)
    assert out.shape == (2, 4, 8, 16)
    ctx = model.image_proj_model.net(inp["image_features"])
    pose = model.pose_proj(inp["pose_image"])
    ref = unet_by_hand(model.unet, inp["sample"], inp["timestep"], ctx, pose)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # official demo: batch-1 pose features broadcast over a doubled (guidance) batch
    one = model(inp["sample"], 700, ctx, pose[:1]).sample
    both = model(inp["sample"], 700, ctx, pose[:1].expand(2, -1, -1, -1)).sample
    torch.testing.assert_close(one, both, rtol=0, atol=0)


@torch.no_grad()
def test_refine_forward():
    kind = "refine"
    model = tiny(kind)
    inp = tiny_inputs(kind)
    out = run(model, kind, inp)
    assert out.shape == (2, 4, 8, 16)
    ctx = model.image_proj_model_p.net(inp["image_features"])
    torch.testing.assert_close(out, unet_by_hand(model.unet, inp["sample"], 700, ctx), rtol=0, atol=1e-6)
    assert model.unet.config.in_channels == 8 and model.unet.class_embedding is None


def test_mask_convention_and_unet_input():
    mask = side_by_side_mask(2, 4, 8)
    assert mask.shape == (2, 1, 4, 8)
    assert (mask[..., :4] == 1).all() and (mask[..., 4:] == 0).all()  # 1 = known source half
    x = inpaint_unet_input(torch.zeros(3, 4, 4, 8), mask[:1], torch.ones(1, 4, 4, 8))
    assert x.shape == (3, 9, 4, 8) and torch.equal(x[:, 4:5], mask[:1].expand(3, -1, -1, -1))
    assert (x[:, 5:] == 1).all()


# ---------------------------------------------------------------------------------------- official files
@pytest.mark.parametrize("kind", KINDS)
def test_deepspeed_fp32_file_loads_identically(tmp_path, kind):
    model = tiny(kind)
    path = deepspeed_file(tmp_path / "ckpt" / "mp_rank_00_model_states.pt", model.state_dict())
    raw = torch.load(path, map_location="cpu", weights_only=True)  # bookkeeping (a set included) is accepted
    assert isinstance(raw["sparse_tensor_module_names"], set)
    loaded = load_pcdms(path, kind, tiny_config(kind))
    inp = tiny_inputs(kind)
    torch.testing.assert_close(run(loaded, kind, inp), run(model, kind, inp), rtol=0, atol=0)
    # kind told from the keys; a DeepSpeed folder works as well
    assert detect_kind(raw["module"]) == kind
    assert type(load_pcdms(tmp_path / "ckpt", config=tiny_config(kind))) is type(model)


@pytest.mark.parametrize("kind", ["prior", "inpaint"])
def test_deepspeed_fp16_flat_buffer_file(tmp_path, kind):
    model = tiny(kind)
    folder = tmp_path / "out"
    deepspeed_file(folder / "global_step7" / "mp_rank_00_model_states.pt", model.state_dict(),
                   dtype=torch.float16, flat=True)
    (folder / "latest").write_text("global_step7")
    loaded = load_pcdms(folder, kind, tiny_config(kind))  # cast to fp32
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rounded = model_class(kind)(**tiny_config(kind)).eval()
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    inp = tiny_inputs(kind)
    torch.testing.assert_close(run(loaded, kind, inp), run(rounded, kind, inp), rtol=0, atol=0)
    torch.testing.assert_close(run(loaded, kind, inp), run(model, kind, inp), rtol=2e-2, atol=2e-2)
    kept = load_pcdms(folder, kind, tiny_config(kind), dtype=None)
    assert all(p.dtype == torch.float16 for p in kept.parameters())


def test_wrong_kind_or_size_gives_a_report(tmp_path):
    refine = deepspeed_file(tmp_path / "refine.pt", tiny("refine").state_dict())
    with pytest.raises(ValueError) as err:
        load_pcdms(refine, "inpaint", tiny_config("inpaint"))
    msg = str(err.value)
    assert "refine.pt" in msg and "'inpaint'" in msg
    assert "missing keys" in msg and "pose_proj" in msg and "unet.class_embedding" in msg
    assert "shape mismatches" in msg and "unet.conv_in.weight" in msg
    assert "look like a 'refine'" in msg
    report = err.value.report
    assert any(k.startswith("pose_proj.") for k in report.missing) and not report.unexpected

    prior = deepspeed_file(tmp_path / "prior.pt", tiny("prior").state_dict())
    with pytest.raises(PCDMsCheckpointError) as err:
        load_pcdms(prior, "simplified", tiny_config("simplified"))
    assert "unexpected keys" in str(err.value) and "transformer_blocks" in str(err.value)

    # right kind, wrong size: a tiny file against the full-size config (built on the meta device only)
    with pytest.raises(ValueError, match="shape mismatches") as err:
        load_pcdms(refine, "refine")
    assert "full-size" in str(err.value)
    # not a checkpoint / a pickle that needs arbitrary code
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_pcdms(tmp_path / "junk.pt", "refine")
    torch.save({"module": {"x": torch.zeros(1)}, "args": _Args()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_pcdms(tmp_path / "evil.pt", "refine")
    # check_state_dict on a fitting dict is clean
    assert check_state_dict(tiny("refine").state_dict(), "refine", tiny_config("refine")).ok


# -------------------------------------------------------------------------------- converter, save / load
@pytest.mark.parametrize("kind", ["prior", "inpaint"])
def test_converter_round_trip(tmp_path, kind):
    model = tiny(kind)
    src = deepspeed_file(tmp_path / "mp_rank_00_model_states.pt", model.state_dict())
    out = convert_pcdms(src, tmp_path / "converted", kind, config=tiny_config(kind))
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    inp = tiny_inputs(kind)
    expected = run(model, kind, inp)
    back = model_class(kind).from_pretrained(out).eval()
    torch.testing.assert_close(run(back, kind, inp), expected, rtol=0, atol=0)
    torch.testing.assert_close(run(load_pcdms(out), kind, inp), expected, rtol=0, atol=0)
    single = convert_pcdms(src, tmp_path / "single", kind, config=tiny_config(kind), single_file=True)
    torch.testing.assert_close(run(load_pcdms(single), kind, inp), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not 'refine'"):
        load_pcdms(single, "refine")


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_round_trip(tmp_path, kind):
    model = tiny(kind)
    model.save_pretrained(tmp_path / kind)
    back = model_class(kind).from_pretrained(tmp_path / kind).eval()
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(model.config)
    inp = tiny_inputs(kind)
    torch.testing.assert_close(run(back, kind, inp), run(model, kind, inp), rtol=0, atol=0)
    if kind == "prior":
        assert not back.causal_attention_mask.is_meta


def test_cli_convert_reports_a_file_that_does_not_fit(tmp_path, capsys):
    from posetransfer.cli import main

    # A toy-size refine checkpoint is not the official full-size model: a report, exit code 2, no traceback.
    src = deepspeed_file(tmp_path / "mp_rank_00_model_states.pt", tiny("refine").state_dict())
    assert main(["convert-pcdms", str(src), str(tmp_path / "out"), "--kind", "refine"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posetransfer: error:") and "mp_rank_00_model_states.pt" in err and "shape" in err
    assert main(["convert-pcdms", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    assert "missing.pt" in capsys.readouterr().err
