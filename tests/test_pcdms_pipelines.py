"""PCDMs pipelines, encoders and frame layout (issue 5, sections 3-5 core side, and 7).

The reference loops below are written from ``../shared/reference/pcdms/README.md`` ("Inference semantics per
stage") in the straightforward official style -- ``torch.cat([latents] * 2)``, the scheduler built from the
README's numbers, the VAE posterior sampled with ``latent_dist.sample(generator)``, the pose features added to
the stock UNet's conv_in output by a hook written here -- and share no code with the pipelines. Everything runs
on tiny random models (latents 8 x 16 = a 64 x 128 canvas)."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers import AutoencoderKL, DDIMScheduler, UnCLIPScheduler, UniPCMultistepScheduler

from posetransfer.core.pcdms import model_class, tiny_config
from posetransfer.core.pcdms.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    CallableImageEncoder,
    CallableLatentCodec,
    DiffusersVAE,
    ImageEncoder,
    LatentCodec,
    clip_preprocess,
)
from posetransfer.core.pcdms.image_layout import from_frame, plan_layout, to_frame
from posetransfer.core.pcdms.pipelines import (
    InpaintPipeline,
    PCDMsInterrupted,
    PriorPipeline,
    RefinePipeline,
    SimplifiedPipeline,
    make_prior_scheduler,
    make_scheduler,
    clean_estimate,
    rescale_noise_cfg,
    run_pcdms,
)

S = 64  # frame size of the tiny tests (latents 8 x 8 per half)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ fixtures
def randomize(model, seed=0):
    """Seeded random weights everywhere (diffusers zero-initialises the pose encoder's conv_out)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.25)
    return model.eval()


def tiny(kind, seed=0, **overrides):
    return randomize(model_class(kind)(**dict(tiny_config(kind), **overrides)), seed)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                        sample_size=S).eval()
    return {"vae": vae, "prior": tiny("prior", 1, embedding_dim=32), "inpaint": tiny("inpaint", 2),
            "refine": tiny("refine", 3), "simplified": tiny("simplified", 4)}


def _g(seed):
    return torch.Generator().manual_seed(seed)


def u8_images(b, h, w, seed):
    """Images as 8-bit files give them: k / 255 in float32, (B, H, W, 3)."""
    return torch.randint(0, 256, (b, h, w, 3), generator=_g(seed)).float() / 255


def pil_squash(images, size=S):
    """README: every image resized (squashed) to size x size with PIL bicubic, then ToTensor (k / 255)."""
    out = []
    for im in images:
        u8 = (im * 255).round().to(torch.uint8).numpy()
        out.append(np.asarray(Image.fromarray(u8).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).float() / 255


def to_tensor_normalize(images_bhwc):
    """ToTensor + Normalize(0.5, 0.5): [-1, 1], channels first (contiguous, as ToTensor gives)."""
    return ((images_bhwc - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


def unet_with_pose(unet, x, t, context, pose=None, class_labels=None):
    """The official stage-2 UNet: the stock UNet with conv_in(x) + pose (hook written here)."""
    handle = None
    if pose is not None:
        handle = unet.conv_in.register_forward_hook(lambda m, a, out: out + pose)
    try:
        return unet(x, t, encoder_hidden_states=context, class_labels=class_labels).sample
    finally:
        if handle is not None:
            handle.remove()


def readme_unipc():
    pndm = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
    return UniPCMultistepScheduler.from_config(pndm, final_sigmas_type="sigma_min")


def readme_unclip():
    return UnCLIPScheduler(variance_type="fixed_small_log", clip_sample=True, clip_sample_range=10.0,
                           prediction_type="sample", num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def readme_ddim():
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def public(cfg):
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def close(a, b, tol=0):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def close_rounding(a, b, rel=1e-5):
    """Equal up to float32 rounding of differently batched kernels: max error within rel x max |value|."""
    assert a.shape == b.shape
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x {scale:.3g}"


class FakeEncoder:
    """An ImageEncoder double that counts its calls."""

    def __init__(self, d, tokens=None, seed=0):
        self.d, self.tokens, self.seed, self.calls, self.pixel_calls = d, tokens, seed, 0, 0

    def _out(self, b, scale):
        shape = (b, self.tokens, self.d) if self.tokens else (b, self.d)
        return scale * torch.randn(shape, generator=_g(self.seed))

    def encode(self, images):
        self.calls += 1
        return self._out(images.shape[0], 1.0 + images.mean())

    def encode_pixels(self, pixel_values):
        self.pixel_calls += 1
        return self._out(pixel_values.shape[0], 0.5)


# --------------------------------------------------------------------------------------- scheduler configs
def test_scheduler_configs_and_timesteps():
    unipc = make_scheduler("unipc")
    cfg = unipc.config
    assert type(unipc) is UniPCMultistepScheduler
    assert (cfg.solver_order, cfg.solver_type, cfg.predict_x0, cfg.lower_order_final, cfg.thresholding) == \
        (2, "bh2", True, True, False)
    assert (cfg.timestep_spacing, cfg.final_sigmas_type, cfg.prediction_type) == ("linspace", "sigma_min", "epsilon")
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.num_train_timesteps) == \
        (0.00085, 0.012, "scaled_linear", 1000)
    unipc.set_timesteps(20)
    assert unipc.timesteps.tolist() == np.linspace(0, 999, 21).round()[::-1][:-1].astype(int).tolist()
    assert unipc.timesteps.tolist()[:3] == [999, 949, 899] and unipc.timesteps.tolist()[-2:] == [100, 50]
    assert unipc.sigmas[-1] > 0  # sigma_min: the last sigma repeated (diffusers 0.24), not zero

    prior = make_prior_scheduler()
    assert type(prior) is UnCLIPScheduler
    assert public(prior.config) == public(readme_unclip().config)
    prior.set_timesteps(20)
    assert prior.timesteps.tolist() == [round(i * 999 / 19) for i in range(20)][::-1]
    assert prior.timesteps.tolist()[:3] == [999, 946, 894] and prior.timesteps.tolist()[-2:] == [53, 0]

    simplified = SimplifiedPipeline(tiny("simplified"), None).scheduler
    assert type(simplified) is DDIMScheduler and public(simplified.config) == public(readme_ddim().config)
    simplified.set_timesteps(50)
    assert simplified.timesteps.tolist() == list(range(981, 0, -20))
    assert simplified.config.timestep_spacing == "leading"
    # DDIM from the SD-2.1 config is the simplified demo's DDIM; the other names build
    ddim = public(make_scheduler("ddim").config)
    assert {k: ddim[k] for k in public(simplified.config)} == public(simplified.config)
    assert make_scheduler("dpmsolver++").config.algorithm_type == "dpmsolver++"
    assert type(make_scheduler("euler")).__name__ == "EulerDiscreteScheduler"
    with pytest.raises(ValueError, match="scheduler: expected one of default, ddpm, ddim, dpmpp_2m"):
        make_scheduler("pndm")


# ------------------------------------------------------------------------------------------------ stage 1
def prior_inputs(b=1):
    g = _g(5)
    return torch.randn(b, 32, generator=g), torch.rand(b, 36, generator=g), torch.rand(b, 36, generator=g)


@torch.no_grad()
def reference_prior(prior, emb, sp, tp, steps, seed, step_generator="same"):
    """README stage 1: latents randn(1, D) from the generator; prior on latents.unsqueeze(1); UnCLIP step with
    prev_timestep; step noise from the generator (corrected) or the global RNG (official); post-process."""
    gen = _g(seed)
    sched = readme_unclip()
    sched.set_timesteps(steps)
    latents = torch.randn((emb.shape[0], 32), generator=gen) * sched.init_noise_sigma
    ts = sched.timesteps
    for i, t in enumerate(ts):
        pred = prior(latents.unsqueeze(1), t, emb[:, None], sp[:, None], tp[:, None]).predicted_image_embedding
        prev = None if i + 1 == len(ts) else ts[i + 1]
        latents = sched.step(pred, t, latents, prev_timestep=prev,
                             generator=gen if step_generator == "same" else None).prev_sample
    return latents * 0.415 + (-0.016), latents


def test_prior_pipeline_equals_reference_seeded_and_official_rng(models):
    prior = models["prior"]
    emb, sp, tp = prior_inputs()
    pipe = PriorPipeline(prior)
    out = pipe(sp, tp, emb, steps=6, seed=42)
    ref, ref_lat = reference_prior(prior, emb, sp, tp, 6, 42)
    close(out.embeddings, ref, 1e-6)
    close(out.latents, ref_lat, 1e-6)
    # official path: step noise from torch's global RNG
    torch.manual_seed(7)
    official = pipe(sp, tp, emb, steps=6, seed=42, official_rng=True)
    torch.manual_seed(7)
    ref_off, _ = reference_prior(prior, emb, sp, tp, 6, 42, step_generator=None)
    close(official.embeddings, ref_off, 1e-6)
    assert not torch.allclose(official.embeddings, out.embeddings)
    # given initial latents and per-step noise reproduce the seeded run
    gen = _g(42)
    lat = torch.randn(1, 32, generator=gen)
    noise = [torch.randn(1, 32, generator=gen) for _ in range(5)] + [torch.zeros(1, 32)]  # last step: t = 0
    close(pipe(sp, tp, emb, steps=6, latents=lat, step_noise=noise).embeddings, ref, 1e-6)
    # seeds honoured; (B, 18, 2) poses and (B, 1, D) embeddings are the same inputs
    assert torch.equal(pipe(sp.reshape(1, 18, 2), tp, emb[:, None], steps=6, seed=42).embeddings, out.embeddings)
    assert not torch.allclose(pipe(sp, tp, emb, steps=6, seed=43).embeddings, out.embeddings)


def test_prior_guidance_corrected(models):
    """The official stage-1 guidance crashes; ours: one doubled call, unconditional = all three conditions
    dropped as in training (CLIP of zero pixels, zero poses), = two separate calls."""
    prior = models["prior"]
    emb, sp, tp = prior_inputs(2)
    null = torch.randn(1, 32, generator=_g(9))
    pipe = PriorPipeline(prior)
    calls = []
    hook = prior.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        out = pipe(sp, tp, emb, steps=4, seed=3, guidance_scale=3.0, negative_source_embedding=null, num_samples=2)
    finally:
        hook.remove()
    assert calls == [8] * 4  # 2 inputs x 2 samples, doubled, once per step
    with torch.no_grad():
        gen = _g(3)
        sched = readme_unclip()
        sched.set_timesteps(4)
        rep = lambda x: x.repeat_interleave(2, 0)  # noqa: E731
        e, s, t_ = rep(emb), rep(sp), rep(tp)
        latents = torch.randn((4, 32), generator=gen)
        for i, t in enumerate(sched.timesteps):
            cond = prior(latents, t, e, s, t_).predicted_image_embedding
            unc = prior(latents, t, null.expand(4, -1), torch.zeros_like(s), torch.zeros_like(t_))
            unc = unc.predicted_image_embedding
            pred = unc + 3.0 * (cond - unc)
            prev = None if i == 3 else sched.timesteps[i + 1]
            latents = sched.step(pred, t, latents, prev_timestep=prev, generator=gen).prev_sample
    close_rounding(out.latents, latents)
    # the null source embedding comes from the CLIP encoder when there is one
    enc = FakeEncoder(32)
    with_enc = PriorPipeline(prior, image_encoder=enc)(sp, tp, emb, steps=4, seed=3, guidance_scale=3.0,
                                                       num_samples=2)
    close(with_enc.latents, PriorPipeline(prior)(sp, tp, emb, steps=4, seed=3, guidance_scale=3.0, num_samples=2,
                                                  negative_source_embedding=enc._out(1, 0.5)).latents, 0)
    assert enc.pixel_calls == 1 and enc.calls == 0


# ------------------------------------------------------------------------------------------------ stage 2
def side_inputs(b=1, hw=(48, 40)):
    src = u8_images(b, *hw, 11)
    spose = u8_images(b, *hw, 12)
    tpose = u8_images(b, 56, 44, 13)
    feats = torch.randn(b, 5, 24, generator=_g(14))
    glob = torch.randn(b, 32, generator=_g(15))
    return src, spose, tpose, feats, glob


@torch.no_grad()
def reference_inpaint(model, vae, src, spose, tpose, feats, glob, n, steps, scale, seed):
    """README stage 2 (official pipeline), batch 1, n images per prompt."""
    gen = _g(seed)
    s, sp, tp = pil_squash(src), pil_squash(spose), pil_squash(tpose)
    vae_in = to_tensor_normalize(torch.cat([s, torch.zeros_like(s)], dim=2))  # [source | black]
    pose_in = to_tensor_normalize(torch.cat([sp, tp], dim=2))  # [source pose | target pose]
    s_img_proj_f = model.image_proj_model_p(feats)
    pred_t_img_embed = glob[:, None]  # (1, 1, D)
    context = torch.cat([s_img_proj_f, pred_t_img_embed], dim=1)
    st_pose_f = model.pose_proj(pose_in)
    masked_latents = vae.encode(vae_in).latent_dist.sample(gen) * 0.18215  # first draw
    sched = readme_unipc()
    sched.set_timesteps(steps)
    h, w = masked_latents.shape[-2:]
    latents = torch.randn((n, 4, h, w), generator=gen) * sched.init_noise_sigma  # second draw
    mask = torch.zeros(1, 1, h, w)
    mask[..., : w // 2] = 1  # ones over the known (source) half
    ctx = torch.cat([torch.zeros_like(context).repeat(n, 1, 1), context.repeat(n, 1, 1)])
    cls = torch.cat([torch.zeros(n, glob.shape[1]), glob.repeat(n, 1)])
    for t in sched.timesteps:
        lat_in = sched.scale_model_input(torch.cat([latents] * 2), t)
        x = torch.cat([lat_in, mask.repeat(2 * n, 1, 1, 1), masked_latents.repeat(2 * n, 1, 1, 1)], dim=1)
        eps = unet_with_pose(model.unet, x, t, ctx, st_pose_f.repeat(2 * n, 1, 1, 1), cls)
        unc, cond = eps.chunk(2)
        eps = unc + scale * (cond - unc)
        latents = sched.step(eps, t, latents).prev_sample
    image = (vae.decode(latents / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    return latents, image


def test_inpaint_pipeline_equals_reference(models):
    model, vae = models["inpaint"], models["vae"]
    src, spose, tpose, feats, glob = side_inputs()
    pipe = InpaintPipeline(model, DiffusersVAE(vae), size=S, layout="squash")
    steps_seen = []
    out = pipe(src, spose, tpose, glob, image_features=feats, num_samples=2, steps=5, seed=42,
               callback=lambda info: steps_seen.append((info.stage, info.step, info.num_steps)))
    ref_lat, ref_img = reference_inpaint(model, vae, src, spose, tpose, feats, glob, 2, 5, 2.0, 42)
    close(out.latents, ref_lat)
    close(out.canvas, ref_img.permute(0, 2, 3, 1))
    close(out.frames, ref_img.permute(0, 2, 3, 1)[:, :, S:])  # the right half is the target
    assert out.images.shape == (2, 56, 44, 3)  # back at the target pose image's size
    assert steps_seen == [("inpaint", i, 5) for i in range(1, 6)]
    # given VAE noise + initial latents = the seeded draws in the README's order
    gen = _g(42)
    vae_noise = torch.randn(1, 4, 8, 16, generator=gen)
    lat = torch.randn(2, 4, 8, 16, generator=gen)
    again = pipe(src, spose, tpose, glob, image_features=feats, num_samples=2, steps=5, latents=lat,
                 vae_noise=vae_noise)
    close(again.latents, out.latents, 1e-6)
    # seeds honoured
    assert torch.equal(pipe(src, spose, tpose, glob, image_features=feats, num_samples=2, steps=5,
                            generator=_g(42)).latents, out.latents)


def test_inpaint_cfg_batch_equals_two_calls_and_batches(models):
    """One doubled UNet call = the unconditional and conditional calls made separately; batches of inputs
    x samples per input are the inputs run one by one."""
    model, vae = models["inpaint"], models["vae"]
    src, spose, tpose, feats, glob = side_inputs(2)
    pipe = InpaintPipeline(model, DiffusersVAE(vae), size=S, layout="squash")
    gen = _g(1)
    vae_noise = torch.randn(2, 4, 8, 16, generator=gen)
    lat = torch.randn(4, 4, 8, 16, generator=gen)
    calls = []
    hook = model.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        out = pipe(src, spose, tpose, glob, image_features=feats, num_samples=2, steps=3, latents=lat,
                   vae_noise=vae_noise)
    finally:
        hook.remove()
    assert calls == [8, 8, 8]  # (2 inputs x 2 samples) x (uncond + cond), one call per step
    with torch.no_grad():
        for b in range(2):
            s, sp, tp = pil_squash(src[b:b + 1]), pil_squash(spose[b:b + 1]), pil_squash(tpose[b:b + 1])
            masked = vae.encode(to_tensor_normalize(torch.cat([s, 0 * s], 2))).latent_dist
            masked = (masked.mean + masked.std * vae_noise[b:b + 1]) * 0.18215
            pose = model.pose_proj(to_tensor_normalize(torch.cat([sp, tp], 2)))
            ctx = torch.cat([model.image_proj_model_p(feats[b:b + 1]), glob[b:b + 1, None]], 1)
            sched = readme_unipc()
            sched.set_timesteps(3)
            latents = lat[2 * b:2 * b + 2]
            mask = torch.zeros(2, 1, 8, 16)
            mask[..., :8] = 1
            for t in sched.timesteps:
                x = torch.cat([latents, mask, masked.repeat(2, 1, 1, 1)], 1)
                cond = unet_with_pose(model.unet, x, t, ctx.repeat(2, 1, 1), pose, glob[b:b + 1].repeat(2, 1))
                unc = unet_with_pose(model.unet, x, t, torch.zeros(2, 6, 32), pose, torch.zeros(2, 32))
                latents = sched.step(unc + 2.0 * (cond - unc), t, latents).prev_sample
            close_rounding(out.latents[2 * b:2 * b + 2], latents)


# ------------------------------------------------------------------------------------------------ stage 3
@torch.no_grad()
def reference_refine(model, vae, coarse, src_feats, steps, scale, rescale, seed, n=1):
    """README stage 3: context = projected DINOv2 tokens; [noisy latents, coarse latents]; unconditional half
    = zero context and zero coarse latents; guided noise rescaled as r * cfg * std(cond) / std(cfg) +
    (1 - r) * cfg (the official script: r = the guidance scale). n > 1: the corrected path (latents repeated)."""
    gen = _g(seed)
    context = model.image_proj_model_p(src_feats)
    coarse_latents = vae.encode(to_tensor_normalize(coarse)).latent_dist.sample(gen) * 0.18215
    sched = readme_unipc()
    sched.set_timesteps(steps)
    latents = torch.randn((n, 4) + coarse_latents.shape[-2:], generator=gen)
    coarse_latents = coarse_latents.repeat(n, 1, 1, 1)
    context = context.repeat(n, 1, 1)
    for t in sched.timesteps:
        lat_in = torch.cat([latents] * 2)
        x = torch.cat([lat_in, torch.cat([torch.zeros_like(coarse_latents), coarse_latents])], dim=1)
        eps = model.unet(x, t, encoder_hidden_states=torch.cat([torch.zeros_like(context), context])).sample
        unc, cond = eps.chunk(2)
        cfg = unc + scale * (cond - unc)
        if rescale:
            dims = (1, 2, 3)
            cfg = rescale * (cfg * cond.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True)) + \
                (1 - rescale) * cfg
        latents = sched.step(cfg, t, latents).prev_sample
    return latents, (vae.decode(latents / 0.18215).sample / 2 + 0.5).clamp(0, 1)


def test_refine_pipeline_equals_reference_and_rescale_selectable(models):
    model, vae = models["refine"], models["vae"]
    coarse = u8_images(1, S, S, 21)
    src = u8_images(1, 40, 30, 22)
    feats = torch.randn(1, 5, 24, generator=_g(23))
    pipe = RefinePipeline(model, DiffusersVAE(vae), size=S, layout="squash")
    out = pipe(coarse, src, image_features=feats, steps=4, seed=42)  # guidance 2, rescale "official" = 2
    ref_lat, ref_img = reference_refine(model, vae, coarse, feats, 4, 2.0, 2.0, 42)
    close_rounding(out.latents, ref_lat)  # README's formula, evaluated in another order: rounding only
    close(out.images, ref_img.permute(0, 2, 3, 1), 1e-5)
    explicit = pipe(coarse, src, image_features=feats, steps=4, seed=42, guidance_rescale=2.0)
    assert torch.equal(explicit.latents, out.latents)
    plain = pipe(coarse, src, image_features=feats, steps=4, seed=42, guidance_rescale=0.0)
    close(plain.latents, reference_refine(model, vae, coarse, feats, 4, 2.0, 0.0, 42)[0])  # bit-exact
    assert not torch.allclose(plain.latents, out.latents)
    # official crash (num_images_per_prompt > 1) fixed: coarse latents repeated per sample
    many = pipe(coarse, src, image_features=feats, steps=3, seed=5, num_samples=3)
    close_rounding(many.latents, reference_refine(model, vae, coarse, feats, 3, 2.0, 2.0, 5, n=3)[0])
    # the rescale is diffusers' rescale_noise_cfg (what the official pipeline calls), bit for bit
    try:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as theirs
    except Exception:  # needs transformers
        return
    cfg, cond = torch.randn(2, 4, 8, 8, generator=_g(1)), torch.randn(2, 4, 8, 8, generator=_g(2))
    assert torch.equal(rescale_noise_cfg(cfg, cond, 2.0), theirs(cfg, cond, guidance_rescale=2.0))
    assert many.images.shape == (3, S, S, 3)


# ------------------------------------------------------------------------------------------------ simplified
@torch.no_grad()
def reference_simplified(model, vae, src, spose, tpose, feats, steps, scale, seed, global_seed):
    """README simplified demo: VAE sample from the global RNG, generator only for the initial latents; DDIM;
    the 9-channel input built, doubled, scaled; pose features not doubled (broadcast, batch 1); negative
    context = image_proj_model(zeros)."""
    s, sp, tp = pil_squash(src), pil_squash(spose), pil_squash(tpose)
    torch.manual_seed(global_seed)
    simg_mask_latents = vae.encode(to_tensor_normalize(torch.cat([s, torch.zeros_like(s)], 2))).latent_dist.sample()
    simg_mask_latents = simg_mask_latents * 0.18215
    h, w = simg_mask_latents.shape[-2:]
    mask = torch.zeros(1, 1, h, w)
    mask[..., : w // 2] = 1
    cond_pose = model.pose_proj(to_tensor_normalize(torch.cat([sp, tp], 2)))
    prompt_embeds = model.image_proj_model(feats)
    negative_prompt_embeds = model.image_proj_model(torch.zeros_like(feats))
    sched = readme_ddim()
    sched.set_timesteps(steps)
    gen = _g(seed)
    latents = torch.randn((1, 4, h, w), generator=gen) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = torch.cat([latents, mask, simg_mask_latents], 1)
        x = sched.scale_model_input(torch.cat([x] * 2), t)
        eps = unet_with_pose(model.unet, x, t, torch.cat([negative_prompt_embeds, prompt_embeds]), cond_pose)
        unc, cond = eps.chunk(2)
        latents = sched.step(unc + scale * (cond - unc), t, latents, eta=0.0, generator=gen).prev_sample
    return latents


def test_simplified_pipeline_official_and_seeded(models):
    model, vae = models["simplified"], models["vae"]
    src, spose, tpose, feats, _ = side_inputs()
    pipe = SimplifiedPipeline(model, DiffusersVAE(vae), size=S, layout="squash")
    torch.manual_seed(77)
    official = pipe(src, spose, tpose, image_features=feats, steps=4, seed=42, official_rng=True)
    close(official.latents, reference_simplified(model, vae, src, spose, tpose, feats, 4, 2.0, 42, 77))
    # seeded path: the VAE sample comes from the generator, first
    seeded = pipe(src, spose, tpose, image_features=feats, steps=4, seed=42)
    gen = _g(42)
    vae_noise = torch.randn(1, 4, 8, 16, generator=gen)
    lat = torch.randn(1, 4, 8, 16, generator=gen)
    close(pipe(src, spose, tpose, image_features=feats, steps=4, latents=lat, vae_noise=vae_noise).latents,
          seeded.latents, 1e-6)
    # official crash with batch > 1 fixed (pose features doubled): input 2 alone = input 2 in a batch of 2
    src2, spose2, tpose2, feats2, _ = side_inputs(2)
    both = pipe(src2, spose2, tpose2, image_features=feats2, steps=3, latents=torch.cat([lat, lat]),
                vae_noise=torch.cat([vae_noise, vae_noise]))
    second = pipe(src2[1:], spose2[1:], tpose2[1:], image_features=feats2[1:], steps=3, latents=lat,
                  vae_noise=vae_noise)
    close_rounding(both.latents[1:], second.latents)


# ------------------------------------------------------------------------------------------- callbacks, chain
def test_callback_interrupt_and_schedulers(models):
    model, vae = models["inpaint"], DiffusersVAE(models["vae"])
    src, spose, tpose, feats, glob = side_inputs()
    pipe = InpaintPipeline(model, vae, size=S)
    seen = []

    def stop_at_2(info):
        seen.append(info.step)
        return info.step != 2 and None

    with pytest.raises(PCDMsInterrupted, match="step 2 of 4"):
        pipe(src, spose, tpose, glob, image_features=feats, steps=4, seed=1, callback=stop_at_2)
    assert seen == [1, 2]

    class Stop(Exception):
        pass

    def raise_at_3(info):
        if info.step == 3:
            raise Stop

    with pytest.raises(Stop):
        pipe(src, spose, tpose, glob, image_features=feats, steps=4, seed=1, callback=raise_at_3)
    results = {}
    for name in ("unipc", "ddim", "dpmsolver++", "euler"):
        count = []
        p = InpaintPipeline(model, vae, scheduler=name, size=S)
        out = p(src, spose, tpose, glob, image_features=feats, steps=3, seed=1, callback=lambda i: count.append(i))
        assert len(count) == 3 and torch.isfinite(out.latents).all()
        results[name] = out.latents
    assert not torch.allclose(results["unipc"], results["ddim"])
    # DDIM with eta > 0 takes the per-step noise; UniPC takes none and says so
    noise = [torch.randn(1, 4, 8, 16, generator=_g(i)) for i in range(3)]
    ddim = InpaintPipeline(model, vae, scheduler="ddim", size=S)
    a = ddim(src, spose, tpose, glob, image_features=feats, steps=3, seed=1, eta=1.0, step_noise=noise)
    b = ddim(src, spose, tpose, glob, image_features=feats, steps=3, seed=1, eta=1.0,
             step_noise=lambda i, shape: noise[i])
    assert torch.equal(a.latents, b.latents) and not torch.allclose(a.latents, results["ddim"])
    with pytest.raises(ValueError, match="per-step noise"):
        pipe(src, spose, tpose, glob, image_features=feats, steps=3, seed=1, step_noise=noise)


def test_chain_runs_stages_with_encoders_once(models):
    vae = DiffusersVAE(models["vae"])
    clip, dino = FakeEncoder(32), FakeEncoder(24, tokens=5, seed=1)
    prior = PriorPipeline(models["prior"])
    inpaint = InpaintPipeline(models["inpaint"], vae, size=S)
    refine = RefinePipeline(models["refine"], vae, size=S)
    src, spose, tpose, _, _ = side_inputs()
    sp, tp = torch.rand(1, 36, generator=_g(1)), torch.rand(1, 36, generator=_g(2))
    stages = []
    out = run_pcdms(src, spose, tpose, sp, tp, prior=prior, inpaint=inpaint, refine=refine, clip_encoder=clip,
                    dino_encoder=dino, num_samples=2, seed=42, steps=(3, 3, 3), on_stage_done=stages.append,
                    callback=lambda i: stages.append(i.stage))
    assert (clip.calls, dino.calls, clip.pixel_calls) == (1, 1, 0)  # once per call (no prior guidance: no null)
    assert stages == ["prior"] * 3 + ["prior"] + ["inpaint"] * 3 + ["inpaint"] + ["refine"] * 3 + ["refine"]
    assert out.images.shape == (2, 56, 44, 3)
    # = the three stages run one after the other with seed 42 each (the official scripts)
    frame, _ = to_frame(src, size=S)
    e = prior(sp, tp, clip._out(1, 1.0 + frame.mean()), steps=3, seed=42).embeddings
    close(out.target_embedding, e, 0)
    feats = dino._out(1, 1.0 + frame.mean())
    coarse = inpaint(src, spose, tpose, e, image_features=feats, num_samples=2, steps=3, seed=42)
    close(out.coarse.latents, coarse.latents, 0)
    frames = (coarse.frames * 255).round() / 255  # stage 2 saves an 8-bit PNG
    refined = refine.sample_frames(frames, image_features=feats.repeat(2, 1, 1), steps=3, seed=42,
                                   target_layout=coarse.layout)
    close(out.images, refined.images, 0)


# ------------------------------------------------------------------------------------------------ layout
def test_layout_pad_squash_and_round_trip():
    lay = plan_layout((256, 176), 512, "pad")
    assert lay.box == (0, 80, 512, 352)  # DeepFashion: 512 x 352 content, centred
    assert plan_layout((100, 300), 512, "pad").box == (170, 0, 171, 512)
    assert plan_layout((256, 176), 512, "squash").box == (0, 0, 512, 512)
    assert plan_layout((64, 64), 64, "pad").is_identity
    # smooth image: pad then crop back returns it (up to resampling)
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 30), indexing="ij")
    img = torch.stack([y, x, (x + y) / 2], -1)[None]
    frame, lay = to_frame(img, size=S, fill="edge")
    assert frame.shape == (1, S, S, 3) and lay.box == (0, 12, 64, 40)
    assert torch.equal(frame[:, :, :12], frame[:, :, 12:13].expand(-1, -1, 12, -1))  # edge fill
    back = from_frame(frame, lay)
    assert back.shape == img.shape and (back - img).abs().max() < 0.02
    black, _ = to_frame(img, size=S, fill="black")
    assert black[:, :, :12].max() == 0 and black[:, :, -12:].max() == 0
    # squash = PIL bicubic on the 8-bit image (the official preprocessing), exactly
    u8 = u8_images(2, 48, 40, 3)
    sq, lay_sq = to_frame(u8, size=S, mode="squash")
    assert torch.equal(sq, pil_squash(u8))
    assert from_frame(sq, lay_sq).shape == (2, 48, 40, 3)
    # an image already at the frame size passes unchanged both ways
    same = u8_images(1, S, S, 4)
    f, lay_id = to_frame(same, size=S)
    assert torch.equal(f, same) and torch.equal(from_frame(f, lay_id), same)
    with pytest.raises(ValueError, match="planned for"):
        to_frame(img, lay_id)


def test_pad_layout_output_at_target_size(models):
    """Default (pad) layout: the output has the target pose image's size; squash differs."""
    pipe = InpaintPipeline(models["inpaint"], DiffusersVAE(models["vae"]), size=S)
    src, spose, _, feats, glob = side_inputs()
    tpose = u8_images(1, 30, 50, 31)
    out = pipe(src, spose, tpose, glob, image_features=feats, steps=2, seed=1)
    assert out.layout.mode == "pad" and out.images.shape == (1, 30, 50, 3)
    squash = pipe(src, spose, tpose, glob, image_features=feats, steps=2, seed=1, layout="squash")
    assert squash.images.shape == (1, 30, 50, 3) and not torch.allclose(squash.images, out.images)


# ------------------------------------------------------------------------------------------------ encoders
def reference_clip_processor(images_u8):
    """CLIPImageProcessor() defaults written out: shortest edge 224 (PIL bicubic), centre crop 224, /255,
    OpenAI mean/std."""
    out = []
    for im in images_u8:
        pil = Image.fromarray(im)
        w, h = pil.size
        if w <= h:
            size = (224, int(224 * h / w))
        else:
            size = (int(224 * w / h), 224)
        pil = pil.resize(size, Image.BICUBIC)
        a = np.asarray(pil)
        top, left = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
        a = (a[top:top + 224, left:left + 224] * (1 / 255)).astype(np.float32)
        a = (a - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
        out.append(a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def test_clip_preprocess_matches_clip_image_processor():
    imgs = u8_images(2, 300, 250, 41)
    u8 = (imgs * 255).round().to(torch.uint8).numpy()
    ours = clip_preprocess(imgs)
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32
    assert torch.equal(ours, reference_clip_processor(u8))
    y, x = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")
    smooth = torch.stack([y, x, y * x], -1)[None]
    close(clip_preprocess(smooth, exact=False), clip_preprocess(smooth), 0.05)  # torch-only path
    transformers = pytest.importorskip("transformers")
    proc_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    theirs = proc_cls()(images=[Image.fromarray(a) for a in u8], return_tensors="pt")["pixel_values"]
    close(ours, theirs.float(), 1e-6)


def test_transformers_encoders_from_a_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from posetransfer.core.pcdms.encoders import CLIPImageEmbedder, DINOv2TokenEncoder

    torch.manual_seed(0)
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        patch_size=56, projection_dim=32)).eval()
    dino = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=56,
        patch_size=14)).eval()
    clip.save_pretrained(tmp_path / "clip")
    dino.save_pretrained(tmp_path / "dino")
    clip_enc = CLIPImageEmbedder.from_pretrained(tmp_path / "clip")
    dino_enc = DINOv2TokenEncoder.from_pretrained(tmp_path / "dino")
    assert isinstance(clip_enc, ImageEncoder) and isinstance(dino_enc, ImageEncoder)
    imgs = u8_images(2, S, S, 51)
    px = reference_clip_processor((imgs * 255).round().to(torch.uint8).numpy())
    with torch.no_grad():
        close(clip_enc.encode(imgs), clip(pixel_values=px).image_embeds, 1e-6)
        tokens = dino_enc.encode(imgs)
        close(tokens, dino_enc.model(pixel_values=px).last_hidden_state, 1e-6)  # after the final LayerNorm
    assert clip_enc.encode(imgs).shape == (2, 32) and tokens.shape == (2, 1 + 16 * 16, 24)
    with pytest.raises(FileNotFoundError):
        CLIPImageEmbedder.from_pretrained(tmp_path / "missing")
    # DINOv2 position embeddings resized as transformers 4.32 did: scale_factor (16 + 0.1) / 4, not size 16
    pos = dino.embeddings.position_embeddings
    grid = pos[:, 1:].reshape(1, 4, 4, 24).permute(0, 3, 1, 2)
    old = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 4, 16.1 / 4), mode="bicubic",
                                          align_corners=False)
    expected = torch.cat([pos[:, :1], old.permute(0, 2, 3, 1).reshape(1, 256, 24)], 1)
    official = dino_enc.model.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 24), 224, 224)
    close(official, expected)
    newer = DINOv2TokenEncoder(dino.__class__(dino.config), official_interpolation=False)
    newer.model.load_state_dict(dino.state_dict())
    assert not torch.allclose(newer.model.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 24), 224, 224),
                              expected, atol=1e-4)
    # a function (e.g. ComfyUI's CLIP_VISION) as an encoder, with the official preprocessing
    wrapped = CallableImageEncoder(lambda p: clip(pixel_values=p).image_embeds)
    close(wrapped.encode(imgs), clip_enc.encode(imgs), 0)


def test_vae_wrapper_scale_and_posterior_order(models):
    vae = models["vae"]
    codec = DiffusersVAE(vae)
    assert isinstance(codec, LatentCodec)
    assert codec.scaling_factor == 0.18215 and codec.downscale_factor == 8 and codec.latent_channels == 4
    px = to_tensor_normalize(u8_images(1, S, S, 61))
    with torch.no_grad():
        dist = vae.encode(px).latent_dist
        g = _g(3)
        expected = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * 0.18215
        z = codec.encode(px, generator=_g(3))
        close(z, expected, 1e-6)
        close(codec.decode(z), (vae.decode(z / 0.18215).sample / 2 + 0.5).clamp(0, 1), 1e-6)
    assert not torch.allclose(z, dist.mean * 0.18215)  # a sample, not the mean
    # a ComfyUI-style VAE (BHWC 0..1 images, unscaled latents) through the adapter
    with torch.no_grad():
        comfy = CallableLatentCodec(
            lambda im: vae.encode(im.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean,
            lambda lat: (vae.decode(lat).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
        assert isinstance(comfy, LatentCodec)
        close(comfy.encode(px), dist.mean * 0.18215, 1e-5)
        close(comfy.decode(z), codec.decode(z), 1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_clean_estimate_equals_the_schedulers_own(prediction_type):
    # The step previews' clean-latent estimate, for schedulers that do not return one (UniPC, DPM-Solver): equal to
    # DDIM's pred_original_sample for each prediction type.
    sched = DDIMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    for t in sched.timesteps[[0, 4, 9]]:
        ref = sched.step(out, t, x).pred_original_sample
        torch.testing.assert_close(clean_estimate(sched, x, out, t), ref, rtol=1e-5, atol=1e-5)
