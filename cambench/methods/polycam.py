"""Poly-CAM. Englebert, Cornu and De Vleeschouwer, "Poly-CAM: High resolution class activation map
for convolutional neural networks", ICPR 2022, https://arxiv.org/abs/2204.13359 (as the authors'
code, aenglebert/polycam, ``polycam/core.py`` and ``polycam/polycam.py``).

At each target layer l (network order 1..L), channel weights from masked forwards as Score-CAM,
with the authors' percentile normalisation N (``core.py`` ``normalize``: per map,
(x - p_0.1) / max(p_99.9, 1e-12) clipped to [0, 1], np.percentile's linear interpolation; note
the division by the upper percentile, not by its distance to the lower one):

    M_k = U(N(A_l,k))                 (U: bilinear resize to the input, align_corners=False)
    PCAM+:   w_k = p_c(x * M_k)                                  (``PCAMp.get_weights``)
    PCAM-:   w_k = ReLU(p_c(x) - p_c(x * (1 - M_k)))             (``PCAMm.get_weights``)
    PCAM+-:  w_k = ReLU(p_c(x * M_k) + p_c(x) - p_c(x * (1 - M_k)))   (``PCAMpm.get_weights``)
    S_l = ReLU(sum_k w_k A_l,k)

p_c is the softmax probability of the class (``utils.softmax_sigmoid``). The maps are fused from
the deepest layer to the shallowest (``core.py`` ``compute_cams``, with the default ``lnorm=True``):

    P_L = S_L,    P_l = ReLU(LNorm(S_l) * U_l(P_{l+1})),    LNorm(S) = S / max(U_l(D(S)), 1e-12)

D resizes to the resolution of P_{l+1} and U_l back to that of S_l (bilinear, align_corners=False,
no antialiasing): the local relevance normalisation. The map is N(P_1), the finest one (the
authors return every level; ``[-1]``, the finest, is the saliency map of their README and
evaluation). The base then min-max normalises it and resizes it to the input (the authors resize
N(P_1) without min-max: an affine difference only).

Default target layers (``default_layers``, used when ``model.target_layer`` is not set): the
authors' ``utils.find_layer_list`` takes the last layer before each change of spatial size. On
VGG16 that is ``features.3, 8, 15, 22, 29`` (also the list of their ``generate_explanations.py``,
line 93): the module before each max pooling, which we take on every VGG depth (vgg11_bn:
``features.2, 6, 13, 20, 27``). On ResNet we take ``relu, layer1, layer2, layer3, layer4``, their
explicit ResNet-50 list (``generate_explanations.py`` line 88) and what ``find_layer_list`` finds
on ResNet-18/34; on Bottleneck ResNets ``find_layer_list`` picks the shared ReLU of ``layer2.0``
etc., whose hook keeps its last call (the block output), so the layers at 56 px are skipped and
7 px comes twice: an artefact. On MobileNetV3 ``find_layer_list`` stops at the first
squeeze-excitation block (its pooled 1 x 1 output), so we apply its rule to the feature blocks:
the block before each stride-2 block and the last block (large: ``features.1, 3, 6, 12, 16``;
small: ``features.0, 1, 3, 8, 12``). Other models: the model's default target layer only.

The masked inputs of all layers go through the scorer in large chunks, built chunk by chunk.
Channels that are zero everywhere are not scored (their weight multiplies zero; the authors
score them). ``max_channels = n > 0`` (not in the paper; a speed-up) scores only the n channels
of each layer with the largest mean activation per image, the others weigh zero. The authors'
forward pass of the clean image per layer is the one clean pass here. Cost: (1 + sum_l K_l)
forward passes, (1 + 2 sum_l K_l) for PCAM+- (K_l at most ``max_channels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from cambench.methods.base import CAMMethod, Forward, MethodError, register, upsample, weighted_sum
from cambench.models.engine import Passes
from cambench.models.layers import family
from cambench.models.scorer import take_rows

VARIANTS = {"plus": "PCAM+", "minus": "PCAM-", "plusminus": "PCAM+-"}
# per variant, the masked inputs scored per channel: x * M_k (False) and x * (1 - M_k) (True)
COMPLEMENTS = {"plus": (False,), "minus": (True,), "plusminus": (False, True)}
OUTLIER_PERCENT = 0.1  # the authors' normalize(outlier_perc=0.1): clip below the 0.1th, above the 99.9th percentile


def percentile_normalise(maps: Tensor) -> Tensor:
    """The authors' ``normalize`` per (h, w) map: (x - p_0.1) / max(p_99.9, 1e-12), clipped to [0, 1]."""
    flat = maps.flatten(-2)
    ordered = flat.sort(-1).values
    low, high = (_percentile(ordered, q) for q in (OUTLIER_PERCENT, 100 - OUTLIER_PERCENT))
    return ((flat - low) / high.clamp_min(1e-12)).clamp(0, 1).view_as(maps)


def _percentile(ordered: Tensor, q: float) -> Tensor:
    """np.percentile(..., q, axis=-1) (linear interpolation) of values sorted along the last dim, keepdim."""
    position = q / 100 * (ordered.shape[-1] - 1)
    below = math.floor(position)
    above = min(below + 1, ordered.shape[-1] - 1)
    low, high = ordered[..., below : below + 1], ordered[..., above : above + 1]
    return low + (high - low) * (position - below)


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.MaxPool2d) and m.stride not in (1, (1, 1)) for m in module.modules())


@register("polycam")
class PolyCAM(CAMMethod):
    paper = "Englebert et al., ICPR 2022"
    summary = (
        "Poly-CAM (Englebert et al., ICPR 2022, authors' code): Score-CAM-style weights at several layers "
        "(PCAM+ p_c(x M_k), PCAM- ReLU(p_c(x) - p_c(x (1 - M_k))), PCAM+-), fused coarse to fine: "
        "P_l = ReLU(LNorm(S_l) * up(P_{l+1}))"
    )
    checked = "authors' code (transcribed) on a stub"
    cost = "(1 + sum_l K_l)F; (1 + 2 sum_l K_l)F for PCAM+-"
    multi_layer = True
    score = "probability"

    @dataclass
    class Params(CAMMethod.Params):
        variant: str = "plus"
        max_channels: int = 0

        def check(self) -> None:
            if self.variant not in VARIANTS:
                choices = ", ".join(f"{k} ({v})" for k, v in VARIANTS.items())
                raise MethodError(f"polycam: method.variant must be one of {choices}; got {self.variant!r}")
            if self.max_channels < 0:
                raise MethodError(
                    f"polycam: method.max_channels must be >= 0 (0: every channel); got {self.max_channels}"
                )

    def setup(self) -> None:
        self.channels = self._layer_channels()

    @classmethod
    def default_layers(cls, arch: str, model: nn.Module) -> list[str] | None:
        fam = family(arch)
        if fam == "vgg":
            return [f"features.{i - 1}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        if fam == "resnet":
            return ["relu", "layer1", "layer2", "layer3", "layer4"]
        if fam == "mobilenet_v3":
            blocks = list(model.features)
            last = len(blocks) - 1
            return [f"features.{i}" for i in range(len(blocks)) if i == last or _downsamples(blocks[i + 1])]
        return None

    def passes(self, channels: int, positions: int) -> Passes:
        scored = sum(min(k, self.max_channels or k) for k in self.channels)
        return Passes(forward=1 + len(COMPLEMENTS[self.variant]) * scored)

    def _layer_channels(self) -> list[int]:
        """K_l of every target layer, from one forward pass of a blank image (for the declared cost)."""
        parameter = next(self.engine.model.parameters())
        size = self.engine.preprocessing.crop_size
        with torch.no_grad():
            carries, _ = self.engine.split.forward(torch.zeros(1, 3, size, size, device=parameter.device))
        return [carry[0].shape[1] for carry in carries]

    def raw_map(self, fw: Forward) -> Tensor:
        activations = fw.activations
        weights = self.weights(fw, activations)
        fused = None
        for a, w in zip(reversed(activations), reversed(weights), strict=True):
            level = torch.relu(weighted_sum(w, a))
            if fused is not None:
                size = level.shape[-2:]
                local = upsample(upsample(level, fused.shape[-2:]), size).clamp_min(1e-12)
                level = level / local * upsample(fused, size)
            fused = torch.relu(level)
        return percentile_normalise(fused)

    def scored_channels(self, a: Tensor) -> Tensor:
        """(B, K) bool: the channels to score, those not zero everywhere (at most ``max_channels`` of the largest
        mean activation per image)."""
        live = (a != 0).flatten(2).any(2)
        if self.max_channels and self.max_channels < a.shape[1]:
            top = a.mean((2, 3)).topk(self.max_channels, dim=1).indices
            live &= torch.zeros_like(live).scatter_(1, top, True)
        return live

    def weights(self, fw: Forward, activations: list[Tensor]) -> list[Tensor]:
        """Per target layer, (B, K_l) channel weights of the variant, from all masked forwards at once."""
        size = fw.images.shape[-2:]
        pairs = [self.scored_channels(a).nonzero() for a in activations]  # (image, channel), image-major
        # rows: one segment per (layer, mask kind), each over the layer's nonzero channels
        segments = [(layer, c) for layer in range(len(activations)) for c in COMPLEMENTS[self.variant]]
        owners = [pairs[layer][:, 0].cpu() for layer, _ in segments]
        bounds = torch.tensor([0] + [len(o) for o in owners]).cumsum(0).tolist()

        def masked(rows: slice) -> tuple[Tensor]:
            parts = []
            for (layer, complement), images, (start, stop) in zip(segments, owners, pairwise(bounds), strict=True):
                lo, hi = max(rows.start, start) - start, min(rows.stop, stop) - start
                if lo < hi:
                    p = pairs[layer][lo:hi]
                    masks = upsample(percentile_normalise(activations[layer][p[:, 0], p[:, 1]]), size)
                    masks = 1 - masks if complement else masks
                    parts.append(take_rows(fw.images, images[lo:hi]) * masks[:, None].to(fw.images.dtype))
            return (torch.cat(parts),)

        targets = torch.cat([fw.targets[pairs[layer][:, 0]] for layer, _ in segments])
        scored = self.engine.scorer.score(targets, masked, output=self.score)
        scores = dict(zip(segments, scored.split([len(o) for o in owners]), strict=True))
        clean = fw.logits.softmax(1).gather(1, fw.targets[:, None])[:, 0]
        weights = []
        for layer, (a, p) in enumerate(zip(activations, pairs, strict=True)):
            if self.variant == "plus":
                values = scores[layer, False]
            else:  # PCAM- and PCAM+-: ReLU of the drop when the channel's region is removed (+ the kept score)
                kept = scores[layer, False] if self.variant == "plusminus" else 0.0
                values = torch.relu(kept + clean[p[:, 0]] - scores[layer, True])
            w = torch.zeros(a.shape[:2], device=a.device)
            w[p[:, 0], p[:, 1]] = values
            weights.append(w)
        return weights
