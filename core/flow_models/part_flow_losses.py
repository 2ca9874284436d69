"""Losses and two-stage training of the structure-aware part flow (:class:`.part_flow_net.PartFlowNet`),
paper eqs 9-14, as plain torch functions a training script (accelerate or not) calls.

Full objective (eq 10): ``L = l1 L_sam + l2 L_rec + l3 L_adv + l4 L_per + l5 L_sty``.

* ``L_sam`` (eq 9) sums a sampling correctness loss per part. The paper defers its definition to the
  supplement and to Ren et al. 2019/2020; we follow GFLA (Ren et al. 2020) as published in its code: with
  ``v_t`` the target features and ``v_s`` the source features sampled by the flow (bilinear), the
  similarity ``mu = cos(v_s, v_t)`` is normalised by ``mu_max``, the largest cosine similarity between
  ``v_t`` and any source position, and the loss map is ``exp(-mu / mu_max) - exp(-1)`` (``form="exp"``,
  the default), zero when every target position samples its best match. ``form="log"`` uses
  ``-log(mu / mu_max)`` instead (same minimum, steeper near 0). Per part: the loss is averaged over the
  target positions inside that part's target region (its sub-pose mask), and the source features are the
  part's own (multiplied by its source region mask, as the model warps features of the part crop), so
  ``mu_max`` is the best match inside the part and sampling outside it finds nothing (an empty region falls
  back to the whole image). Features come from the pluggable extractor on the FULL source and
  target images (GFLA's VGG-19 relu3_1 and relu4_1 by default); the part flow is resized to each layer with
  :func:`~..flow.resize_flow`.
* ``L_rec`` (eq 11): mean absolute error.
* ``L_adv`` (eq 12): ``E[log(1 - D(G))] + E[log D(I_t)]``; the discriminator maximises it (we minimise the
  equivalent binary cross-entropy). For the generator ``adversarial="nonsaturating"`` (default) minimises
  ``-log D(G)``, Goodfellow et al.'s practical form of the same game; ``"minimax"`` minimises eq 12's
  ``log(1 - D(G))`` literally. :class:`PartFlowDiscriminator` is a small PatchGAN with spectral norm (the
  paper does not describe its D; GFLA's is a residual one of similar size).
* ``L_per`` (eq 13) and ``L_sty`` (eq 14): L1 (mean) between features, and between Gram matrices
  normalised by ``C H W`` (as GFLA), of a pluggable feature extractor: any callable ``images (B, 3, H, W) in
  0..1 -> {layer name: (B, C, h, w)}`` (it does its own input normalisation). Defaults name VGG-19 layers
  (relu1_1..relu5_1 for content, relu2_2/relu3_4/relu4_4/relu5_2 for style, as GFLA);
  :func:`part_flow_vgg19` builds the project's shared :class:`.losses.VGG19Features` with them. No pretrained
  VGG is bundled: load torchvision weights for real training; tests pass tiny random extractors.
* Weights: the paper gives none; :class:`PartFlowLossWeights` defaults to GFLA's
  (correctness 5, reconstruction 5, adversarial 2, content 0.5, style 500).

Training (paper, "Training"): stage 1 trains only the flow generators with ``L_sam``
(:func:`stage1_losses`, :func:`stage1_step`); stage 2 trains everything end to end with eq 10
(:func:`generator_losses`, :func:`discriminator_loss`, :func:`stage2_step`). Adam with betas (0, 0.99) and
lr 1e-3 (:func:`make_optimizer`). Batches are dicts as :func:`.part_flow_net.make_pair` /
:func:`.part_flow_net.collate_pairs` make them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..flow import resize_flow, warp
from .losses import VGG19Features

__all__ = [
    "FeatureExtractor", "CORRECTNESS_LAYERS", "PERCEPTUAL_LAYERS", "STYLE_LAYERS",
    "sampling_correctness_loss", "part_sampling_correctness_loss", "reconstruction_loss", "gram_matrix",
    "perceptual_loss", "style_loss", "discriminator_loss", "generator_adversarial_loss",
    "PartFlowDiscriminator", "PartFlowLossWeights", "make_optimizer", "stage1_losses", "generator_losses",
    "stage1_step", "stage2_step", "PART_FLOW_VGG_LAYERS", "part_flow_vgg19",
]

FeatureExtractor = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]

CORRECTNESS_LAYERS: tuple[str, ...] = ("relu3_1", "relu4_1")
PERCEPTUAL_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS: tuple[str, ...] = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")

PART_FLOW_VGG_LAYERS: tuple[str, ...] = tuple(sorted(set(CORRECTNESS_LAYERS + PERCEPTUAL_LAYERS + STYLE_LAYERS)))

_EPS = 1e-8


def part_flow_vgg19(path=None, layers: Sequence[str] = PART_FLOW_VGG_LAYERS, width_divisor: int = 1) -> VGG19Features:
    """The project's shared VGG-19 extractor (:class:`.losses.VGG19Features`) with the layers these losses use.
    Weights come from a torchvision ``vgg19`` checkpoint at ``path``; none are bundled, and without one the
    network is random (only good for tests, with ``width_divisor`` > 1 to make it narrow)."""
    if path is not None:
        return VGG19Features.from_torchvision_file(path, layers)
    return VGG19Features(layers, width_divisor=width_divisor)


def _layer(features: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return features[name]
    except KeyError:
        raise KeyError(f"feature extractor gave no layer {name!r}; it gave {list(features)}. Pass layer names "
                       f"it produces") from None


# ----------------------------------------------------------------------------- sampling correctness (eq 9)

@torch.no_grad()
def _best_similarity(source: torch.Tensor, target: torch.Tensor, source_mask: torch.Tensor | None,
                     chunk: int = 1024) -> torch.Tensor:
    """``mu_max``: for each target position the largest cosine similarity to a (masked-in) source position,
    ``(B, Nt)``. Chunked over target positions so ``Ns x Nt`` never exists at once."""
    b, c = source.shape[:2]
    s = F.normalize(source.flatten(2), dim=1, eps=_EPS)          # (B, C, Ns)
    t = F.normalize(target.flatten(2), dim=1, eps=_EPS)          # (B, C, Nt)
    if source_mask is not None:
        valid = source_mask.flatten(1) > 0                       # (B, Ns)
        valid = valid | ~valid.any(dim=1, keepdim=True)          # an empty region: use the whole image
    out = []
    for i in range(0, t.shape[-1], chunk):
        sim = s.transpose(1, 2) @ t[..., i:i + chunk]             # (B, Ns, K)
        if source_mask is not None:
            sim = sim.masked_fill(~valid[:, :, None], -2.0)
        out.append(sim.amax(dim=1))
    return torch.cat(out, dim=1)


def sampling_correctness_loss(source_features: torch.Tensor, target_features: torch.Tensor, flow: torch.Tensor,
                              target_mask: torch.Tensor | None = None, source_mask: torch.Tensor | None = None,
                              form: str = "exp") -> torch.Tensor:
    """One layer, one flow (see the module doc). ``flow`` (B, 2, h', w') backward, any grid size (resized
    to the features' with :func:`~..flow.resize_flow`); masks (B, 1, H, W) at any size (area-resized)."""
    if form not in ("exp", "log"):
        raise ValueError(f"form: expected 'exp' or 'log', got {form!r}")
    b, c, h, w = target_features.shape
    flow = resize_flow(flow, (h, w)) if flow.shape[-2:] != (h, w) else flow
    src_m = None if source_mask is None else F.interpolate(source_mask.float(), size=source_features.shape[-2:],
                                                           mode="area")
    mu_max = _best_similarity(source_features.detach(), target_features.detach(), src_m)       # (B, N)
    if src_m is not None:  # the part's own features only: sampling outside the part finds nothing
        src_m = torch.where(src_m.flatten(1).amax(1)[:, None, None, None] > 0, src_m, torch.ones_like(src_m))
        source_features = source_features * src_m
    sampled = warp(source_features, flow, padding_mode="zeros")                                 # bilinear
    mu = F.cosine_similarity(sampled.flatten(2), target_features.flatten(2), dim=1, eps=_EPS)  # (B, N)
    ratio = mu / (mu_max + _EPS)
    if form == "exp":
        loss_map = torch.exp(-ratio) - math.exp(-1.0)
    else:
        loss_map = -torch.log(ratio.clamp_min(_EPS))
    if target_mask is None:
        return loss_map.mean()
    m = F.interpolate(target_mask.float(), size=(h, w), mode="area").flatten(1)
    return (m * loss_map).sum() / (m.sum() + _EPS)


def part_sampling_correctness_loss(source_features: Mapping[str, torch.Tensor],
                                   target_features: Mapping[str, torch.Tensor], flows: torch.Tensor,
                                   target_part_masks: torch.Tensor | None = None,
                                   source_part_masks: torch.Tensor | None = None,
                                   layers: Sequence[str] = CORRECTNESS_LAYERS, form: str = "exp"
                                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eq 9: ``L_sam = sum_part L_sam^part``; ``flows`` (B, P, 2, h, w), masks (B, P, H, W). Returns the sum
    and the per-part terms (each summed over ``layers``)."""
    per_part = []
    for k in range(flows.shape[1]):
        tm = None if target_part_masks is None else target_part_masks[:, k:k + 1]
        sm = None if source_part_masks is None else source_part_masks[:, k:k + 1]
        per_part.append(sum(sampling_correctness_loss(_layer(source_features, n), _layer(target_features, n),
                                                      flows[:, k], tm, sm, form) for n in layers))
    return torch.stack(per_part).sum(), per_part


# ------------------------------------------------------------------------------------ image losses (11-14)

def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq 11: ``||I_t - I_t_hat||_1`` (mean over pixels)."""
    return (prediction - target).abs().mean()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, C)`` Gram matrix normalised by ``C H W``."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def perceptual_loss(prediction_features: Mapping[str, torch.Tensor], target_features: Mapping[str, torch.Tensor],
                    layers: Sequence[str] = PERCEPTUAL_LAYERS, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Eq 13: ``sum_i ||phi_i(I_t) - phi_i(I_t_hat)||_1`` (mean per layer)."""
    weights = [1.0] * len(layers) if weights is None else list(weights)
    return sum(wt * (_layer(prediction_features, n) - _layer(target_features, n)).abs().mean()
               for n, wt in zip(layers, weights))


def style_loss(prediction_features: Mapping[str, torch.Tensor], target_features: Mapping[str, torch.Tensor],
               layers: Sequence[str] = STYLE_LAYERS) -> torch.Tensor:
    """Eq 14: ``sum_j ||G_j(I_t) - G_j(I_t_hat)||_1`` (mean per layer)."""
    return sum((gram_matrix(_layer(prediction_features, n)) - gram_matrix(_layer(target_features, n))).abs().mean()
               for n in layers)


# ------------------------------------------------------------------------------------ adversarial (eq 12)

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's side of eq 12: maximising ``E[log D(I_t)] + E[log(1 - D(G))]`` is minimising this
    binary cross-entropy (halved, as GFLA)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor, mode: str = "nonsaturating") -> torch.Tensor:
    """The generator's side of eq 12: ``-log D(G)`` (``"nonsaturating"``) or ``log(1 - D(G))`` (``"minimax"``)."""
    if mode == "nonsaturating":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if mode == "minimax":
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))  # = E[log(1 - D)]
    raise ValueError(f"adversarial mode: expected 'nonsaturating' or 'minimax', got {mode!r}")


class PartFlowDiscriminator(ModelMixin, ConfigMixin):
    """A small PatchGAN: ``num_layers`` 4x4 stride-2 convs (``base_channels`` doubling up to ``max_channels``,
    LeakyReLU, spectral norm) and a 3x3 conv to one logit per patch. Images in 0..1. GFLA's DeepFashion D
    has the same widths (32 -> 128, 4 layers)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 32, max_channels: int = 128, num_layers: int = 4,
                 spectral_norm: bool = True):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(num_layers):
            nxt = min(base_channels * 2 ** i, max_channels)
            layers += [sn(nn.Conv2d(c, nxt, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c = nxt
        layers.append(sn(nn.Conv2d(c, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image * 2 - 1)


# --------------------------------------------------------------------------------------------- training

@dataclass
class PartFlowLossWeights:
    """lambda_1..lambda_5 of eq 10 (GFLA's values; the paper gives none)."""

    sam: float = 5.0
    rec: float = 5.0
    adv: float = 2.0
    per: float = 0.5
    sty: float = 500.0

    def as_dict(self) -> dict:
        return asdict(self)


def make_optimizer(params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.99)
                   ) -> torch.optim.Adam:
    """Adam with the paper's settings (betas (0, 0.99), lr 1e-3)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=(float(betas[0]), float(betas[1])))


def _extract(extractor: FeatureExtractor, images: torch.Tensor) -> Mapping[str, torch.Tensor]:
    feats = extractor(images)
    if not isinstance(feats, Mapping):
        raise TypeError(f"feature extractor: expected a mapping layer name -> features, got {type(feats).__name__}")
    return feats


def stage1_losses(model, batch: Mapping[str, torch.Tensor], extractor: FeatureExtractor,
                  layers: Sequence[str] = CORRECTNESS_LAYERS, form: str = "exp") -> dict[str, torch.Tensor]:
    """Stage 1: ``L_sam`` (eq 9) of the flow generators alone. Returns ``loss``, ``sam`` and ``sam_<part>``."""
    flows, _ = model.estimate_flows(batch["source_pose"], batch["target_pose"])
    with torch.no_grad():
        fs, ft = _extract(extractor, batch["source_image"]), _extract(extractor, batch["target_image"])
    sam, per_part = part_sampling_correctness_loss(fs, ft, flows, batch.get("target_part_masks"),
                                                   batch.get("source_part_masks"), layers, form)
    out = {"loss": sam, "sam": sam}
    out.update({f"sam_{n}": v for n, v in zip(model.part_names, per_part)})
    return out


def generator_losses(model, batch: Mapping[str, torch.Tensor], extractor: FeatureExtractor,
                     discriminator: nn.Module | None = None, weights: PartFlowLossWeights = PartFlowLossWeights(),
                     correctness_layers: Sequence[str] = CORRECTNESS_LAYERS,
                     perceptual_layers: Sequence[str] = PERCEPTUAL_LAYERS, style_layers: Sequence[str] = STYLE_LAYERS,
                     adversarial: str = "nonsaturating", form: str = "exp") -> dict[str, torch.Tensor]:
    """Stage 2, generator side: eq 10 and its terms. ``image`` is the generated image (for the D step).
    Without a discriminator (or with ``weights.adv == 0``) ``L_adv`` is left out."""
    out = model(batch["source_image"], batch["source_pose"], batch["target_pose"], batch.get("source_part_masks"))
    target = batch["target_image"]
    with torch.no_grad():
        fs, ft = _extract(extractor, batch["source_image"]), _extract(extractor, target)
    fp = _extract(extractor, out.image)
    sam, per_part = part_sampling_correctness_loss(fs, ft, out.flows, batch.get("target_part_masks"),
                                                   batch.get("source_part_masks"), correctness_layers, form)  # eq 9
    rec = reconstruction_loss(out.image, target)                                                        # eq 11
    per = perceptual_loss(fp, ft, perceptual_layers)                                                    # eq 13
    sty = style_loss(fp, ft, style_layers)                                                              # eq 14
    if discriminator is not None and weights.adv != 0:
        frozen = [p.requires_grad for p in discriminator.parameters()]
        discriminator.requires_grad_(False)  # the generator step must not leave gradients in D
        try:
            adv = generator_adversarial_loss(discriminator(out.image), adversarial)                     # eq 12
        finally:
            for p, r in zip(discriminator.parameters(), frozen):
                p.requires_grad_(r)
    else:
        adv = torch.zeros((), device=rec.device, dtype=rec.dtype)
    total = weights.sam * sam + weights.rec * rec + weights.adv * adv + weights.per * per + weights.sty * sty  # eq 10
    res = {"loss": total, "sam": sam, "rec": rec, "adv": adv, "per": per, "sty": sty, "image": out.image}
    res.update({f"sam_{n}": v for n, v in zip(model.part_names, per_part)})
    return res


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def _floats(d: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in d.items() if torch.is_tensor(v) and v.ndim == 0}


def stage1_step(model, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                extractor: FeatureExtractor, backward: Callable[[torch.Tensor], None] = _default_backward,
                **loss_kwargs) -> dict[str, float]:
    """One stage-1 update (``optimizer`` over ``model.flow_generator_parameters()``). ``backward`` lets an
    accelerate script pass ``accelerator.backward``. Returns the loss terms as floats."""
    optimizer.zero_grad(set_to_none=True)
    losses = stage1_losses(model, batch, extractor, **loss_kwargs)
    backward(losses["loss"])
    optimizer.step()
    return _floats(losses)


def stage2_step(model, discriminator: nn.Module | None, batch: Mapping[str, torch.Tensor],
                g_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer | None,
                extractor: FeatureExtractor, weights: PartFlowLossWeights = PartFlowLossWeights(),
                backward: Callable[[torch.Tensor], None] = _default_backward, **loss_kwargs) -> dict[str, float]:
    """One end-to-end update: the generator (all of ``model``) on eq 10, then the discriminator on eq 12
    with the generated image detached. Returns the loss terms as floats (``d_loss`` for D)."""
    g_optimizer.zero_grad(set_to_none=True)
    losses = generator_losses(model, batch, extractor, discriminator, weights, **loss_kwargs)
    backward(losses["loss"])
    g_optimizer.step()
    result = _floats(losses)
    if discriminator is not None and d_optimizer is not None:
        d_optimizer.zero_grad(set_to_none=True)
        d_loss = discriminator_loss(discriminator(batch["target_image"]), discriminator(losses["image"].detach()))
        backward(d_loss)
        d_optimizer.step()
        result["d_loss"] = float(d_loss.detach())
    return result
