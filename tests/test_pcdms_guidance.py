"""RePoseDM pose guidance (eq 15/16) inside the PCDMs samplers: off = bit-identical, on = the target half's eps is
replaced by the guidance's, computed on the target half only; and the nodes' GUIDANCE input. Tiny models, CPU."""

import pytest
import torch

from test_pcdms_nodes import FAST, check_image, data, enc, inpaint, m, models_dir  # noqa: F401  (fixtures)
from test_pcdms_pipelines import S, _one_thread, models, side_inputs, u8_images  # noqa: F401  (fixtures)

from posetransfer.core.pcdms.encoders import DiffusersVAE
from posetransfer.core.pcdms.pipelines import InpaintPipeline, RefinePipeline, SimplifiedPipeline, make_scheduler
from posetransfer.core.repose.guidance import PoseGuidance
from posetransfer.core.repose.pose_estimator import TinyPoseEstimator
from posetransfer.nodes import pcdms_nodes as pn
from posetransfer.nodes.adapters import PoseGuidanceFactory

C = 0.05  # what the fake guidance adds to eps


class PlusC:
    """The UNet with ``C`` added to its prediction's columns ``col0:`` (what guidance adding C must reproduce)."""

    def __init__(self, model, col0):
        self.model, self.col0 = model, col0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        pred = self.model(*args, **kwargs)[0].clone()
        pred[..., self.col0:] += C
        return (pred,)


class FakeGuidance:
    """Records its inputs and returns ``eps + C`` (eq 15's form with a known term)."""

    has_target = False

    def __init__(self):
        self.calls = []

    def __call__(self, latents, t, eps, alpha_bar, decode, target=None):
        assert torch.is_grad_enabled() and not latents.requires_grad
        image = decode(latents.clone().requires_grad_(True))
        assert image.requires_grad and image.shape[-1] == 8 * latents.shape[-1]  # differentiable, cropped decode
        self.calls.append(dict(shape=tuple(latents.shape), t=int(t), alpha_bar=float(alpha_bar), target=target))
        return eps + C


def inpaint_pipe(models, scheduler="unipc"):
    return InpaintPipeline(models["inpaint"], DiffusersVAE(models["vae"]), scheduler=scheduler, size=S,
                           layout="squash")


def test_no_guidance_is_bit_identical(models):
    src, spose, tpose, feats, glob = side_inputs()
    pipe = inpaint_pipe(models)
    a = pipe(src, spose, tpose, glob, image_features=feats, steps=3, seed=42)
    b = pipe(src, spose, tpose, glob, image_features=feats, steps=3, seed=42, pose_guidance=None)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    refine = RefinePipeline(models["refine"], DiffusersVAE(models["vae"]), size=S, layout="squash")
    coarse = u8_images(1, S, S, 21)
    r1 = refine(coarse, src, image_features=feats, steps=2, seed=1)
    r2 = refine(coarse, src, image_features=feats, steps=2, seed=1, pose_guidance=None)
    assert torch.equal(r1.latents, r2.latents)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_guided_eps_replaces_the_target_half_only(models, cfg):
    src, spose, tpose, feats, glob = side_inputs()
    pipe = inpaint_pipe(models)
    fake = FakeGuidance()
    guided = pipe(src, spose, tpose, glob, image_features=feats, steps=3, seed=42, num_samples=2,
                  guidance_scale=cfg, pose_guidance=fake)
    shifted = InpaintPipeline(PlusC(models["inpaint"], 8), pipe.vae, scheduler="unipc", size=S, layout="squash")
    ref = shifted(src, spose, tpose, glob, image_features=feats, steps=3, seed=42, num_samples=2,
                  guidance_scale=cfg)
    torch.testing.assert_close(guided.latents, ref.latents, rtol=0, atol=1e-5)
    plain = pipe(src, spose, tpose, glob, image_features=feats, steps=3, seed=42, num_samples=2, guidance_scale=cfg)
    assert not torch.allclose(guided.latents[..., 8:], plain.latents[..., 8:])
    sched = make_scheduler("unipc")
    sched.set_timesteps(3)
    assert [c["t"] for c in fake.calls] == [int(t) for t in sched.timesteps]
    for c in fake.calls:
        assert c["shape"] == (2, 4, 8, 8)                                    # the target half of (2, 4, 8, 16)
        assert c["alpha_bar"] == pytest.approx(float(sched.alphas_cumprod[c["t"]]))
        assert tuple(c["target"].shape) == (2, 3, S, S) and 0 <= c["target"].min() and c["target"].max() <= 1


def test_real_pose_guidance_is_eq15_on_the_target_half(models):
    src, spose, tpose, feats, glob = side_inputs()
    pipe = inpaint_pipe(models, "ddim")
    torch.manual_seed(0)
    real = PoseGuidance(TinyPoseEstimator(num_joints=3, width=4), threshold=-1.0)   # W_h = 1: it steers
    seen = []

    def spy(latents, t, eps, alpha_bar, decode, target=None):
        out = real(latents, t, eps, alpha_bar, decode, target=target)
        grad = real.gradient(latents, t, eps, alpha_bar, decode, target)
        seen.append((out, eps + (1 - alpha_bar).sqrt() * grad, eps))
        return out

    guided = pipe(src, spose, tpose, glob, image_features=feats, steps=2, seed=3, guidance_scale=1.0,
                  pose_guidance=spy)
    plain = pipe(src, spose, tpose, glob, image_features=feats, steps=2, seed=3, guidance_scale=1.0)
    assert len(seen) == 2
    for out, expected, eps in seen:
        torch.testing.assert_close(out, expected)                           # eq 15 with eta = 1
        assert out.shape == (1, 4, 8, 8) and not torch.allclose(out, eps)
    assert not torch.allclose(guided.latents, plain.latents)
    assert not real.has_target                                              # the call's target pose was used
    # eq 16 under CFG, and the simplified / refine samplers run guided
    cfg = pipe(src, spose, tpose, glob, image_features=feats, steps=2, seed=3, guidance_scale=2.0,
               pose_guidance=real)
    assert torch.isfinite(cfg.latents).all()
    simple = SimplifiedPipeline(models["simplified"], pipe.vae, size=S, layout="squash")
    s = simple(src, spose, tpose, image_features=feats, steps=2, seed=3, pose_guidance=real)
    assert not torch.allclose(s.latents, simple(src, spose, tpose, image_features=feats, steps=2, seed=3).latents)
    refine = RefinePipeline(models["refine"], pipe.vae, size=S, layout="squash")
    coarse = u8_images(1, S, S, 21)
    fake = FakeGuidance()
    r = refine(coarse, src, image_features=feats, steps=2, seed=1, pose_guidance=fake)
    assert torch.isfinite(r.latents).all()
    assert fake.calls[0]["shape"] == (1, 4, 8, 8) and tuple(fake.calls[0]["target"].shape) == (1, 3, S, S)


def test_guidance_errors(models):
    src, spose, tpose, feats, glob = side_inputs()
    codec = DiffusersVAE(models["vae"])

    class OtherCodec:  # a codec without a differentiable decode
        scaling_factor, downscale_factor, latent_channels = codec.scaling_factor, 8, 4
        encode, decode = codec.encode, codec.decode

    pipe = InpaintPipeline(models["inpaint"], OtherCodec(), size=S, layout="squash")
    with pytest.raises(ValueError, match="guidance_decode"):
        pipe(src, spose, tpose, glob, image_features=feats, steps=1, pose_guidance=FakeGuidance())
    fake = FakeGuidance()  # an explicit decode makes it work
    pipe(src, spose, tpose, glob, image_features=feats, steps=1, pose_guidance=fake,
         guidance_decode=lambda z: codec.vae.decode(z / codec.scaling_factor).sample)
    assert len(fake.calls) == 1
    vpred = InpaintPipeline(models["inpaint"], DiffusersVAE(models["vae"]), size=S, layout="squash",
                            scheduler=make_scheduler("ddim", dict(make_scheduler("ddim").config,
                                                                  prediction_type="v_prediction")))
    with pytest.raises(ValueError, match="epsilon"):
        vpred(src, spose, tpose, glob, image_features=feats, steps=1, pose_guidance=FakeGuidance())


def test_nodes_accept_guidance(m, enc, data):
    torch.manual_seed(0)
    factory = PoseGuidanceFactory(TinyPoseEstimator(num_joints=3, width=4), threshold=-1.0)
    assert "guidance" in pn.PoseTransferPCDMsInpaint.INPUT_TYPES()["optional"]
    assert "guidance" in pn.PoseTransferPCDMsRefine.INPUT_TYPES()["optional"]
    plain = inpaint(m, enc, data)
    guided = inpaint(m, enc, data, guidance=factory)
    check_image(guided, tuple(plain.shape))
    assert not torch.allclose(plain, guided)
    half = inpaint(m, enc, data, guidance=PoseGuidanceFactory(factory.estimator, threshold=-1.0, decode_scale=0.5))
    check_image(half, tuple(plain.shape))
    assert not torch.allclose(half, guided) and not torch.allclose(half, plain)   # the downsized decode acts
    off = inpaint(m, enc, data, guidance=PoseGuidanceFactory(factory.estimator, scale=0.0))
    torch.testing.assert_close(off, plain, rtol=0, atol=0)
    # The node's start / end percent reach the PCDMs loop: a range holding every timestep is the guided image, one
    # holding none the plain one.
    every = PoseGuidanceFactory(factory.estimator, threshold=-1.0, timestep_range=(0.0, 999.0))
    torch.testing.assert_close(inpaint(m, enc, data, guidance=every), guided, rtol=0, atol=0)
    never = PoseGuidanceFactory(factory.estimator, threshold=-1.0, timestep_range=(1000.0, 2000.0))
    torch.testing.assert_close(inpaint(m, enc, data, guidance=never), plain, rtol=0, atol=0)
    node = pn.PoseTransferPCDMsRefine()
    args = (m["refine"], enc["dino_only"], data["vae"], plain, data["image"])
    refined = node.refine(*args, seed=5, **FAST, cfg=2.0, guidance=factory)[0]
    check_image(refined, tuple(plain.shape))
    with pytest.raises(ValueError, match="GUIDANCE"):
        inpaint(m, enc, data, guidance=object())
    with pytest.raises(ValueError, match="target 'keypoints' works in RePose Sampler only"):
        inpaint(m, enc, data, guidance=PoseGuidanceFactory(factory.estimator, target="keypoints"))
