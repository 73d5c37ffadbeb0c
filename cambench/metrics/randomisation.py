"""Model randomisation: the cascading model-parameter randomisation test of Adebayo, Gilmer, Muelly,
Goodfellow, Hardt and Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292.

The model's blocks b_1, ..., b_K are ordered from the output back to the input. Step k re-initialises
b_1..b_k (cumulatively: the head first, then the last stage, ...), the same method (same name,
parameters and target layers) explains the same images for the same classes (``batch.targets``) on
that model, and its map L^(k) is compared with the original map L:

    randomisation_spearman_k = rho_s(L, L^(k)),   randomisation_ssim_k = SSIM(L, L^(k))
    randomisation_spearman   = mean_k rho_s(L, L^(k)),   randomisation_ssim = mean_k SSIM(L, L^(k))

Lower is better: a map that ignores the model (Edge-CAM, Fake-CAM) keeps 1 at every step, and an
explainer whose mean randomisation_spearman is 0.9 or more fails the test: the run's summary flags it
(``edgecam fails (1.000 >= 0.9)``; Grad-CAM on the shipped resnet18 scores about 0.2). rho_s
is the Spearman rank correlation over pixels and SSIM the Gaussian-window SSIM of
:mod:`cambench.metrics.class_sensitivity` (the same functions). A randomised map that is flat (a
Grad-CAM map that is zero everywhere after ReLU, common once the head is random) ranks no pixel: its
rho_s counts as 0, the expected correlation when its ties are broken at random (scipy, and Quantus,
give NaN, and skipping those steps would leave the mean to the few steps whose map is not flat).
Where the original map is flat, rho_s is NaN (undefined at every step) and the means skip it. The
per-step columns are written when ``layers`` is set (the number of blocks randomised, from the
output); with ``layers = None`` every block is randomised and only the means are written (the
block count depends on the model, the columns are fixed by the config).

Blocks: the model's top-level children in definition order (torchvision defines them in forward
order), with a child named ``features`` (an nn.Sequential: VGG, MobileNet) expanded into its own
children; children without parameters (ReLU, pooling, dropout) are skipped and a normalisation
layer joins the block before it. So ResNet: fc, layer4, layer3, layer2, layer1, conv1+bn1 (6
steps); VGG: classifier, then each conv (+ its batch norm) of ``features`` from the last (9 steps
for vgg11, 17 for vgg19); MobileNetV3: classifier, features.N, ..., features.0 (14 small, 18 large).

Re-initialisation: every submodule of the block that has ``reset_parameters()`` calls it (PyTorch's
default init: Kaiming-uniform for conv and linear layers; batch norm back to weight 1, bias 0 and
running mean 0, variance 1, counter 0), drawing from torch's RNG seeded with ``seed + k`` for step k
(the run's seed; k = 1 is Quantus's MPRT seed ``seed + 1``) on the model's device, inside
``torch.random.fork_rng``: the run's global RNG is untouched and every batch sees the same
randomised models (the draws are the device's: a CPU and a GPU run randomise differently). A block
with parameters outside such modules fails at start; parameters held by the model itself, outside
its children, are never randomised.

Cost: K more maps per image (the method's own cost each, e.g. 1F + 1B for Grad-CAM: 6 more for a
ResNet), batched per step. Memory: one deep copy of the model for the run, built on the first
batch on its device, with the method rebuilt on it (its own Engine and Scorer: same preprocessing,
mixed precision and seed). Per batch the copy's blocks are restored from the original model and
re-randomised in place block by block (explain after each), so no per-step copy is kept. A
stochastic method (noise, random maps) draws from the rebuilt method's own generator, reseeded per
batch as the method's: the first step draws the original map's noise, the later steps new noise,
so a model-independent stochastic map scores below 1.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from cambench import params
from cambench.methods.base import METHODS, CAMMethod, build_method
from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.metrics.class_sensitivity import ssim
from cambench.metrics.correlation import spearman

log = logging.getLogger(__name__)

Block = tuple[str, ...]  # module paths re-initialised together in one step

EXPANDED = ("features",)  # top-level Sequentials whose children are blocks of their own
NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)
SPEARMAN, SSIM = "randomisation_spearman", "randomisation_ssim"
MAX_STEPS = 64  # per-step columns are declared (lower is better) up to this many steps
SSIM_WINDOW = 11


def step_columns(steps: int) -> tuple[str, ...]:
    """The per-step columns for ``steps`` steps: the Spearman ones, then the SSIM ones."""
    return tuple(f"{name}_{k}" for name in (SPEARMAN, SSIM) for k in range(1, steps + 1))


def _has_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or isinstance(module, NORMS)


def randomisation_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` ordered from the output back to the input (see the module docstring)."""
    units: list[list[str]] = []
    for name, child in model.named_children():
        if name in EXPANDED and isinstance(child, nn.Sequential):
            items = [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            items = [(name, child)]
        for path, module in items:
            if not _has_state(module):
                continue
            if isinstance(module, NORMS) and units:
                units[-1].append(path)  # conv -> bn: one block
            else:
                units.append([path])
    return [tuple(unit) for unit in reversed(units)]


def unresettable(model: nn.Module, blocks: list[Block]) -> list[str]:
    """Parameters of ``blocks`` that no ``reset_parameters()`` in them re-initialises."""
    missing = []
    for path in itertools.chain.from_iterable(blocks):
        for sub, module in model.get_submodule(path).named_modules(prefix=path):
            if not hasattr(module, "reset_parameters"):
                missing += [f"{sub}.{name}" for name, _ in module.named_parameters(recurse=False)]
    return missing


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's default generators of the CPU and of ``device`` seeded with ``seed``, restored on exit."""
    device = torch.device(device)
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def randomise(model: nn.Module, block: Block, seed: int) -> None:
    """Re-initialise ``block`` of ``model`` in place: each submodule's ``reset_parameters()``,
    in module order, from torch's RNG seeded with ``seed`` (the global RNG is left as it was)."""
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    with torch.inference_mode(False), torch.no_grad(), seeded(seed, device):
        for path in block:
            for module in model.get_submodule(path).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def restore(model: nn.Module, original: nn.Module, blocks: list[Block]) -> None:
    """Copy the parameters and buffers of ``blocks`` from ``original`` into ``model`` (same architecture)."""
    with torch.inference_mode(False), torch.no_grad():
        for path in itertools.chain.from_iterable(blocks):
            dst, src = model.get_submodule(path), original.get_submodule(path)
            pairs = zip(
                itertools.chain(dst.parameters(), dst.buffers()),
                itertools.chain(src.parameters(), src.buffers()),
                strict=True,
            )
            for d, s in pairs:
                d.copy_(s)


def rank_similarity(maps: Tensor, again: Tensor) -> Tensor:
    """Spearman's rho (B,) of ``maps`` and ``again`` (B, H, W): 0 where ``again`` is flat (no ranking: the
    expectation under random tie-breaking), NaN where ``maps`` is flat."""
    flat = again.flatten(1).amax(1) == again.flatten(1).amin(1)
    original_flat = maps.flatten(1).amax(1) == maps.flatten(1).amin(1)
    return torch.where(flat & ~original_flat, 0.0, spearman(maps, again))


@register("model_randomisation")
class ModelRandomisation(Metric):
    """Cascading model randomisation: rank correlation and SSIM between the map and the maps of the
    progressively randomised model (lower is better); see the module docstring."""

    names = (SPEARMAN, SSIM)
    lower_is_better = frozenset((SPEARMAN, SSIM, *step_columns(MAX_STEPS)))
    # a map that hardly depends on the parameters fails the test: flagged in the summary
    fails_at: ClassVar[dict[str, float]] = {SPEARMAN: 0.9}
    requires = frozenset({"model", "new_maps"})  # the maps of the randomised models

    @dataclass
    class Params(Metric.Params):
        layers: int | None = None

        def check(self) -> None:
            if self.layers is not None and not 1 <= self.layers <= MAX_STEPS:
                raise MetricError(f"model_randomisation.layers must be null or in 1..{MAX_STEPS}, got {self.layers}")

    def setup(self) -> None:
        ctx, layers = self.ctx, self.layers
        name = getattr(ctx.method, "name", "")
        if name not in METHODS:
            raise MetricError(f"model_randomisation rebuilds the method by its registered name; got {name!r}")
        self.method_params = params.as_dict(ctx.method.params)
        blocks = randomisation_blocks(ctx.model)
        if not blocks:
            raise MetricError(f"model_randomisation found no parameterised blocks in {type(ctx.model).__name__}")
        if layers is not None and layers > len(blocks):
            raise MetricError(
                f"model_randomisation.layers is {layers}, but {type(ctx.model).__name__} has {len(blocks)} blocks: "
                f"set layers <= {len(blocks)} or null (all)"
            )
        self.blocks = blocks if layers is None else blocks[:layers]
        missing = unresettable(ctx.model, self.blocks)
        if missing:
            raise MetricError(
                f"model_randomisation cannot re-initialise {', '.join(missing[:5])}: their modules have no "
                "reset_parameters(); set model_randomisation.layers to stop before them"
            )
        self.per_step = layers is not None
        self._model: nn.Module | None = None
        self._method: CAMMethod | None = None
        log.info("model_randomisation: %d steps: %s", len(self.blocks), ", ".join("+".join(b) for b in self.blocks))

    @classmethod
    def columns(cls, params: Params) -> tuple[str, ...]:
        return cls.names + (step_columns(params.layers) if params.layers is not None else ())

    def _build(self, device: torch.device) -> None:
        """The working copy of the model on ``device`` and the method rebuilt on it (once per run)."""
        self._model = copy.deepcopy(self.ctx.model).to(device)
        twin = self.ctx.engine.rebuilt(self._model)
        self._method = build_method(self.ctx.method.name, twin, **self.method_params)

    def randomised_maps(self, images: Tensor, targets: Tensor, ids: Sequence[str] | None = None) -> Iterator[Tensor]:
        """The maps (B, H, W) of ``images`` for ``targets`` after each step k = 1..K, in order."""
        if self._model is None:
            self._build(images.device)
        restore(self._model, self.ctx.model, self.blocks)
        self._method.engine.batch = self.ctx.engine.batch  # its draws are seeded per batch, as the method's
        for k, block in enumerate(self.blocks, 1):
            randomise(self._model, block, self.ctx.engine.seed + k)
            yield self._method.explain(images, targets, ids).maps

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        if min(batch.maps.shape[-2:]) < SSIM_WINDOW:
            raise MetricError(f"model_randomisation's SSIM needs maps of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels")
        rho, s = [], []
        for again in self.randomised_maps(batch.images, batch.targets, batch.ids):
            rho.append(rank_similarity(batch.maps, again))
            s.append(ssim(batch.maps, again))
        rho_steps, ssim_steps = torch.stack(rho, 1), torch.stack(s, 1)  # (B, K)
        values = {SPEARMAN: rho_steps.nanmean(1), SSIM: ssim_steps.nanmean(1)}
        if self.per_step:
            for k in range(len(self.blocks)):
                values[f"{SPEARMAN}_{k + 1}"] = rho_steps[:, k]
                values[f"{SSIM}_{k + 1}"] = ssim_steps[:, k]
        return values
