"""SS-CAM. Wang, Naidu, Michael and Kundu, "SS-CAM: Smoothed Score-CAM for Sharper Visual
Feature Localization", arXiv 2020, https://arxiv.org/abs/2006.14255.

Score-CAM with Gaussian noise on the masks, N noisy copies of each mask averaged:

    M_k = minmax(U(A_k)),   w_k = (1/N) sum_n p_c(x * (M_k + delta_kn)),   delta_kn ~ N(0, sigma^2)
    L = ReLU(sum_k w_k A_k)

The noise is added to the normalised *upsampled* mask, one value per input pixel (shared by the
colour channels), independent for every channel and copy, as TorchCAM's SSCAM (0.5) writes the
paper's formula, M_k = (s(U(A_k)) + delta) * x, and implements it; the authors released no code
(TorchCAM's is the reference implementation), and we take its defaults (N = 35, sigma = 2). With
sigma = 0 this is exactly our Score-CAM (softmax probabilities of the target, as the Score-CAM
authors' code; flat channels skipped with w_k = 0).

TorchCAM deviates as its Score-CAM does: it normalises A_k before upsampling and weights by a
softmax over channels of the mean logit differences (1/N) sum_n (y_c(x * (M_k + delta_kn)) - y_c(x))
(the Score-CAM paper's Algorithm 1) instead of the mean probabilities; it also scores flat
channels. Its noise is drawn per call from the global generator.

The noise is a pure function of the image's key (one 32-bit key per image, drawn in order from
the method's CPU generator, which a run seeds per batch), the channel, the copy and the pixel
(:func:`row_noise`): the scorer's chunk sizes and the device change no value (the batch size
does), and the masked inputs are built chunk by chunk (the K N noisy masks of a batch never
exist at once).
Cost: 1 forward pass, then at most K N (flat channels are skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, MethodError, register
from cambench.methods.scorecam import Perturb, ScoreCAM

MASK32 = 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """PCG's output permutation of 32-bit integers held in int64 (Jarzynski and Olano, "Hash
    Functions for GPU Rendering", JCGT 2020): a bijection of [0, 2^32) whose outputs for
    distinct inputs pass as independent uniform draws. No intermediate exceeds 2^62."""
    state = (x * 747796405 + 2891336453) & MASK32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & MASK32
    return (word >> 22) ^ word


def row_noise(keys: Tensor, size: tuple[int, int]) -> Tensor:
    """(R, H, W) standard normal noise, a pure function of each row's 32-bit key and the pixel:
    z = Phi^-1((u + 1/2) / 2^23), u the top 23 bits of hash32(hash32(pixel) ^ key) (|z| < 5.4)."""
    pixels = hash32(torch.arange(size[0] * size[1], device=keys.device))
    u = hash32(pixels[None] ^ keys[:, None]) >> 9
    return torch.special.ndtri((u.float() + 0.5) / 2**23).view(-1, *size)


@register("sscam")
class SSCAM(ScoreCAM):
    paper = "Wang et al., arXiv 2020"
    summary = "SS-CAM: w_k = mean_n p_c(x * (minmax(up(A_k)) + noise_kn)), noise N(0, sigma^2) per pixel"
    checked = "TorchCAM SSCAM (same noise; it deviates as its Score-CAM); Score-CAM at sigma = 0"
    cost = "(1 + K N)F"

    @dataclass
    class Params(ScoreCAM.Params):
        samples: int = 35
        sigma: float = 2.0

        def check(self) -> None:
            if self.samples < 1 or self.sigma < 0:
                raise MethodError(f"sscam needs samples >= 1 and sigma >= 0, got {self.samples} and {self.sigma}")

    def perturb(self, fw: Forward) -> Perturb:
        # one key per image, drawn in order on the CPU: the device does not change them
        keys = torch.randint(2**32, (len(fw.images),), generator=self.generator(torch.device("cpu")))
        keys = keys.to(fw.images.device)

        def noisy(masks: Tensor, pairs: Tensor, samples: Tensor) -> Tensor:
            rows = hash32(hash32(keys[pairs[:, 0]] ^ pairs[:, 1]) ^ samples)  # one key per (image, channel, copy)
            return masks + self.sigma * row_noise(rows, masks.shape[-2:])

        return noisy
