"""Shared machinery of every CAM method: registry, the forward pass on the split model, gradients,
normalisation and upsampling, declared cost.

A method subclasses :class:`CAMMethod`, sets its class attributes (paper, cost formula, whether
it needs gradients or takes several target layers) and implements :meth:`CAMMethod.raw_map`,
which turns a :class:`Forward` (activations and gradients at the target layers, clean logits,
targets, and the carries that let it run the layers after a target layer) into a raw (B, h, w)
map. Hyper-parameters are keyword arguments of ``__init__``, typed and defaulted; the config
validation reads them from the signature.

The base runs the forward pass once. Gradient methods get ``d y_c / d A`` from a backward pass
through the layers after the target layer only: the split runs everything before it without
autograd, also when the caller is under ``torch.no_grad()`` or ``torch.inference_mode()``.
``y_c`` is the logit of the target class (as the peers do) unless the method's paper scores
softmax probabilities (``score = "probability"``). Maps then go through ReLU, per-image min-max
normalisation, bilinear upsampling to the input size and min-max again (pytorch-grad-cam's
order, so maps agree with it); a map already at input resolution (the baselines) is not
resampled.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cambench import params
from cambench.data.preprocessing import Preprocessing
from cambench.device import autocast
from cambench.errors import CambenchError
from cambench.models.engine import Engine, Passes, Stream, build_engine
from cambench.models.layers import family
from cambench.models.split import Carry, SplitModel

METHODS: dict[str, type[CAMMethod]] = {}  # the CAM methods: the method table, the benchmarks, the baselines
# methods that are no CAM method of their own (method=saved looks stored maps up): configurable as
# ``method=``, but not in the method table, the benchmarks or the tests that run every CAM method
SOURCES: dict[str, type[CAMMethod]] = {}


class MethodError(CambenchError):
    """A method that cannot run as configured (its parameters, or the model it is given)."""


def register(name: str, registry: dict[str, type[CAMMethod]] = METHODS) -> Callable[[type[CAMMethod]], type[CAMMethod]]:
    """Class decorator: make a method available under its config name (in ``registry``)."""

    def add(cls: type[CAMMethod]) -> type[CAMMethod]:
        if name in METHODS or name in SOURCES:
            raise ValueError(f"method {name!r} is registered twice")
        registry[name] = cls
        cls.name = name
        return cls

    return add


def all_methods() -> dict[str, type[CAMMethod]]:
    """Every ``method=`` choice: the CAM methods and the other sources of maps."""
    return METHODS | SOURCES


@dataclass
class CAMOutput:
    maps: Tensor  # (B, H, W) in [0, 1], input resolution
    raw: Tensor  # (B, h, w) the method's map at its own resolution, before ReLU and normalisation
    logits: Tensor  # (B, num_classes) float32, from the clean forward pass
    targets: Tensor  # (B,) the explained classes
    passes: Passes  # declared cost per image, as the split runs it

    @property
    def constant(self) -> Tensor:
        """(B,) bool: the map is flat (all zeros after ReLU, for example), so any pixel ranking is arbitrary."""
        flat = self.maps.flatten(1)
        return flat.amax(1) == flat.amin(1)


@dataclass
class Forward:
    """One forward pass at the target layers (and, for gradient methods, its backward pass)."""

    images: Tensor
    carries: list[Carry]  # per target layer: (A, *side), in the model's dtype
    logits: Tensor  # (B, num_classes) float32
    targets: Tensor  # (B,)
    gradients: list[Tensor] | None  # per target layer, float32, d y_c / d A
    ids: tuple[str, ...] = ()  # an id per input: what the random draws of a method are keyed by

    @property
    def activations(self) -> list[Tensor]:
        """Per target layer, (B, K, h, w) float32."""
        return [carry[0].detach().float() for carry in self.carries]


def as_targets(targets: Tensor | Sequence[int] | int | None, images: Tensor) -> Tensor | None:
    """``targets`` as a (B,) long tensor on the images' device (an int: the same class for every image)."""
    if targets is None:
        return None
    targets = torch.as_tensor(targets, device=images.device).long()
    if targets.dim() == 0:
        targets = targets.expand(len(images))
    if targets.shape != (len(images),):
        raise MethodError(f"targets must be one class per image ({len(images)}) or one int, got {tuple(targets.shape)}")
    return targets


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation over the last two dims to exactly [0, 1]; a flat map becomes zeros."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    return torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0).view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` (align_corners=False, as cv2.resize)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def finalise(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU, min-max, and (below input resolution) bilinear upsampling and min-max again."""
    maps = minmax(torch.relu(raw.float()))
    if tuple(maps.shape[-2:]) != tuple(size):
        # normalised again: bilinear interpolation misses interior extremes (pytorch-grad-cam does the same)
        maps = minmax(upsample(maps, size))
    return maps


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """sum_k w_k A_k: (B, K) weights and (B, K, h, w) activations -> (B, h, w)."""
    return torch.einsum("bk,bkhw->bhw", weights, activations)


class CAMMethod:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # short citation, for the method table
    summary: ClassVar[str] = ""  # the method's name and formula in one line, for the method table
    checked: ClassVar[str] = ""  # what the tests check it against (peers, authors' code, formula)
    cost: ClassVar[str] = "1F"  # declared cost per image (K channels, hw positions, hyper-parameters)
    needs_gradients: ClassVar[bool] = False  # d y_c / d A at the target layers (a backward pass after them)
    needs_input_gradients: ClassVar[bool] = False  # a backward pass through the whole model (optimisation, LRP)
    multi_layer: ClassVar[bool] = False  # accepts several target layers
    score: ClassVar[str] = "logit"  # what y_c is: logit | probability
    new_maps: ClassVar[bool] = True  # makes maps of any input and class (method=saved only looks stored ones up)

    @dataclass
    class Params(params.Params):
        """The method's hyper-parameters (none here): a subclass declares its own, deriving from its parent's."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # a constructor of its own (FunctionMethod): its signature stands
            return
        # what help() and IDEs show: __init__'s model and target layer, the hyper-parameters (keyword-only), then
        # __init__'s engine options (never the name of a hyper-parameter)
        given = list(inspect.signature(CAMMethod.__init__).parameters.values())[1:]  # without self
        leading = [p for p in given if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        options = [p for p in given if p.kind is inspect.Parameter.KEYWORD_ONLY]
        cls.__signature__ = params.signature(cls.Params, leading, options)

    def __init__(
        self,
        model: nn.Module | Engine,
        target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        preprocessing: Preprocessing | None = None,
        seed: int = 0,
        score_batch_size: int | None = None,
        autocast: torch.dtype | None = None,
        **hyper: Any,
    ):
        """The method on ``model`` at ``target_layer`` (a dotted module path, the module, a list of them for
        multi-layer methods, or None: the model's default layer), with its hyper-parameters ``hyper``
        (``Params``); ``preprocessing`` maps pixels to model input (ImageNet's by default), ``seed`` seeds
        every random draw, ``score_batch_size`` fixes the rows per forward chunk of perturbed inputs
        (None: probed), ``autocast`` is a dtype for mixed precision. ``model`` may also be an
        :class:`~cambench.models.engine.Engine` that a runner built (then without the other options)."""
        self.params = params.validate(type(self).Params, hyper, f"method {self.name}", MethodError)
        if isinstance(model, Engine):
            if target_layer is not None or preprocessing is not None:
                raise MethodError(f"method {self.name}: an engine is already split; give a model to choose layers")
            self.engine = model
        else:
            if target_layer is None:
                target_layer = self.default_layers(family(model), model)
            self.engine = build_engine(model, target_layer, preprocessing, seed, score_batch_size, autocast)
        self.check_model(self.engine.split)
        for name, value in params.as_dict(self.params).items():
            setattr(self, name, value)
        self._stream = Stream()
        self.setup()

    def setup(self) -> None:
        """What a method prepares once its engine and parameters are set (e.g. CAM's linear head)."""

    def generator(self, device: torch.device) -> torch.Generator:
        """The method's own generator: seeded from the run's seed and the batch index, advancing within a batch."""
        return self._stream(self.engine, device)

    @classmethod
    def capabilities(cls) -> set[str]:
        """What the method gives the metrics (keys of ``cambench.metrics.base.CAPABILITIES``)."""
        return {name for name, given in (("gradients", cls.needs_gradients), ("new_maps", cls.new_maps)) if given}

    @classmethod
    def check_model(cls, split: SplitModel) -> None:
        """Raise MethodError when the split model cannot give what the method needs (checked at start)."""
        if len(split.layers) > 1 and not cls.multi_layer:
            raise MethodError(
                f"method {cls.name} takes one target layer, got {len(split.layers)} ({', '.join(split.layers)}); "
                "set model.target_layer to one module path"
            )

    @classmethod
    def default_layers(cls, arch: str, model: nn.Module) -> list[str] | None:
        """The target layers this method uses on ``arch`` (a torchvision name, or the family of a model:
        ``resnet``, ``vgg``, ...) when none is given (``model`` may be a weightless skeleton); None: the
        model's default target layer."""
        return None

    def passes(self, channels: int, positions: int) -> Passes:
        """Declared passes per image for K = ``channels`` and hw = ``positions`` at the (last) target layer."""
        return Passes(forward=1, backward=1 if self.needs_gradients else 0)

    def raw_map(self, fw: Forward) -> Tensor:
        """The (B, h, w) map, before ReLU and normalisation."""
        raise NotImplementedError

    def target_score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """y_c per image: the logit, or the softmax probability for methods whose paper uses it."""
        scores = logits.softmax(1) if self.score == "probability" else logits
        return scores.gather(1, targets[:, None])[:, 0]

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        gradients: bool | None = None,
        ids: Sequence[str] | None = None,
    ) -> Forward:
        """The forward pass at the target layers; with gradients when asked (default: when the method needs them).
        ``ids``: an id per image (default: its position in ``images``)."""
        gradients = self.needs_gradients if gradients is None else gradients
        with autocast(images.device, self.engine.autocast_dtype):
            carries, logits = self.engine.split.forward(images, 0 if gradients else None)
        if targets is None:
            targets = logits.argmax(1)
        grads = None
        if gradients:
            score = self.target_score(logits.float(), targets).sum()
            # only d y_c / d A: no parameter gradients, no layers before the first target layer
            grads = [g.float() for g in torch.autograd.grad(score, [carry[0] for carry in carries])]
        ids = tuple(map(str, range(len(images)))) if ids is None else tuple(ids)
        if len(ids) != len(images):
            raise MethodError(f"method {self.name}: {len(ids)} ids for {len(images)} images; give one id per image")
        return Forward(images, carries, logits.detach().float(), targets, grads, ids)

    def explain(
        self, images: Tensor, targets: Tensor | Sequence[int] | int | None = None, ids: Sequence[str] | None = None
    ) -> CAMOutput:
        """Maps of ``images`` (B, C, H, W), model input, for ``targets`` (B,) (a class for every image, or
        one for all; default: the predicted classes). ``ids`` name the images (default: their positions in
        the call): a stochastic method's draws for an image are a function of the seed and its id only."""
        targets = as_targets(targets, images)
        with torch.inference_mode(False), torch.enable_grad():
            fw = self.forward(images, targets, ids=ids)
            raw = self.raw_map(fw).detach().float()
        channels, height, width = fw.carries[-1][0].shape[1:] if fw.carries else (0, 0, 0)
        passes = self.engine.actual_passes(self.passes(channels, height * width))
        return CAMOutput(finalise(raw, images.shape[-2:]), raw, fw.logits, fw.targets, passes)

    __call__ = explain


class GradientMethod(CAMMethod):
    """A method computed from activations and gradients at one target layer."""

    needs_gradients = True
    cost = "1F + 1B"

    def raw_map(self, fw: Forward) -> Tensor:
        return self.cam(fw.activations[-1], fw.gradients[-1])

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Raw (B, h, w) map from activations and gradients (B, K, h, w)."""
        raise NotImplementedError


def method_class(name: str) -> type[CAMMethod]:
    """The method registered as ``name``; MethodError listing the choices otherwise."""
    methods = all_methods()
    if name not in methods:
        raise MethodError(f"unknown method {name!r}; valid choices: {', '.join(sorted(methods))}")
    return methods[name]


def build_method(
    name: str,
    model: nn.Module | Engine,
    target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
    **options: Any,
) -> CAMMethod:
    """Method ``name`` on ``model`` (or a runner's engine) at ``target_layer``, with its hyper-parameters and
    engine options (see :class:`CAMMethod`): ``cambench.method``."""
    return method_class(name)(model, target_layer, **options)
