"""Average Drop and Increase in Confidence, Chattopadhyay et al., "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018,
https://arxiv.org/abs/1710.11063, and Average Gain, Zhang et al., "Opti-CAM: Optimizing saliency
maps for interpretability", CVIU 2024, https://arxiv.org/abs/2301.07002.

Y is the softmax probability of the explained class c on the image x, O the same on the
explanation input x * L: the model's (normalised) input tensor times the map L in [0, 1] at input
size, so a removed pixel becomes the dataset's mean colour (Poppi et al.'s code, TorchCAM's
``ClassificationMetric``). Per image, as fractions (papers print them x 100):

    Average Drop            max(0, Y - O) / Y           lower is better
    Increase in Confidence  1[O > Y]                    higher is better (a tie within rounding: 0)
    Average Gain            max(0, O - Y) / (1 - Y)     higher is better (0 where Y = 1)

computed from the class log-odds without cancellation (:func:`confidence_changes`).

pytorch-grad-cam's ``DropInConfidence`` is the absolute drop max(0, Y - O), not divided by Y: not
the paper's measure. TorchCAM divides by Y + 1e-7; we divide by Y exactly. One forward pass per
image (the explanation input), batched through the run's scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.metrics.base import Metric, MetricInput, register
from cambench.models.scorer import class_scores

NAMES = ("average_drop", "increase_in_confidence", "average_gain")
# log-odds this close are a tie for Increase in Confidence: within float32 rounding of the logits (a map that
# is 1 but for one pixel, Fake-CAM, gives O = Y but for the last bits, whose sign another CPU's kernels flip)
TIE = 1e-4


def confidence_changes(clean: Tensor, explained: Tensor) -> dict[str, Tensor]:
    """Per-image Average Drop, Increase in Confidence and Average Gain (B,) from the class log-odds
    (``class_scores(..., "log_odds")``) on the images (``clean``, Y = sigmoid) and on the explanation
    inputs (``explained``, O = sigmoid), in a form without cancellation:

        AD = max(0, 1 - O / Y),   AG = max(0, 1 - (1 - O) / (1 - Y)),   IC = 1[O > Y]

    with log Y = logsigmoid(m) and log(1 - Y) = logsigmoid(-m). As fractions of probabilities, 1 - Y is 0
    in float32 for a confident prediction, and a last-bit change of a logit moved Average Gain by 1e-4 on
    another CPU; as log-odds it is well conditioned everywhere (a change of the log-odds by d moves each
    ratio by a factor of at most e^|d|). Log-odds within ``TIE`` of each other are no increase."""
    clean, explained = clean.double(), explained.double()
    drop = -torch.expm1(F.logsigmoid(explained) - F.logsigmoid(clean))
    gain = -torch.expm1(F.logsigmoid(-explained) - F.logsigmoid(-clean))
    return {
        "average_drop": drop.clamp_min(0).float(),
        "increase_in_confidence": (explained > clean + TIE).float(),
        "average_gain": gain.nan_to_num(0.0).clamp_min(0).float(),  # 0 where Y = 1 (an infinite log-odds)
    }


def explanation_inputs(images: Tensor, maps: Tensor) -> Tensor:
    """x * L: the model input times the map (B, H, W) in [0, 1], broadcast over channels."""
    return images * maps[:, None].to(images.dtype)


@register("confidence")
class Confidence(Metric):
    """Average Drop, Increase in Confidence and Average Gain; see the module docstring."""

    names = NAMES
    lower_is_better = frozenset({"average_drop"})

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        explained = self.ctx.scorer(explanation_inputs(batch.images, batch.maps), batch.targets, "log_odds")
        return confidence_changes(class_scores(batch.logits, batch.targets, "log_odds"), explained)
