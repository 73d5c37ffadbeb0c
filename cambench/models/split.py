"""A classifier split at its target layers, so methods and metrics can run any part of it.

With target layers l_1, ..., l_L (in network order) the model becomes a chain of stages::

    stage_0(x) -> carry_1 = (A_1, *side_1)
    stage_i(*carry_i) -> carry_{i+1} = (A_{i+1}, *side_{i+1})
    stage_L(*carry_L) -> logits

``A_i`` is the output of ``l_i`` and ``side_i`` holds the tensors computed before it that later
stages still use (the identity branch when ``l_i`` sits inside a residual block). A method that
perturbs ``A_i`` runs only the *tail* (stages i+1..L) on the perturbed activations, with
``side_i`` expanded over the perturbations rather than copied; a gradient method starts autograd
at ``A_1``, so nothing before the target layer records a graph.

The stages come from torch.fx: the model is traced with the target layers as leaves, every node
goes to the stage of the deepest target it depends on, so work that does not depend on a target
(a residual block's downsample branch) runs once in an earlier stage. An in-place module or op
that would modify a stage's input (a perturbed activation, an autograd leaf) or a value another
node reads becomes out-of-place; private chains such as conv -> bn -> relu_ stay in place. A
module called several times in one forward (a shared ReLU) is split at its last call.

Where a model cannot be traced, :class:`HookSplit` falls back to forward hooks: a stage is then a
full forward pass whose target-layer output is replaced, so a tail pass costs a full forward
(``tail_is_full_forward``), and the run records that cost.
"""

from __future__ import annotations

import copy
import itertools
import logging
import operator
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import Tensor, fx, nn

from cambench.models.layers import TargetLayerError

log = logging.getLogger(__name__)

Carry = tuple[Tensor, ...]
# out-of-place equivalents of the in-place ops a traced classifier may contain
_OUT_OF_PLACE_FUNCTIONS = {operator.iadd: operator.add, operator.imul: operator.mul, torch.relu_: torch.relu}
_OUT_OF_PLACE_METHODS = {"add_", "mul_", "sub_", "div_", "relu_", "clamp_", "sigmoid_", "tanh_", "hardtanh_"}


class SplitError(TargetLayerError):
    """The target layers cannot split the model (not called, not in one chain, wrong output)."""


class SplitModel:
    """Stages of a model split at ``layers``; see the module docstring."""

    tail_is_full_forward = False
    mode = "fx"

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        graph_module = _trace(model, self.layers)
        self.stages = _build_stages(graph_module, self.layers)

    def forward(self, images: Tensor, grad_from: int | None = None) -> tuple[list[Carry], Tensor]:
        """Run every stage: the carry at each target layer, and the logits.

        With ``grad_from = i``, ``A_i`` becomes a leaf that requires grad and only the stages
        after it record a graph (``A_j`` for j > i stay connected to it).
        """
        carries: list[Carry] = []
        carry: Carry = (images,)
        for stage_index, stage in enumerate(self.stages):
            with torch.set_grad_enabled(grad_from is not None and stage_index > grad_from):
                out = stage(*carry)
            if stage_index == len(self.layers):
                return carries, out
            if grad_from == stage_index:
                out = (out[0].detach().requires_grad_(True), *out[1:])
            carries.append(out)
            carry = out
        raise AssertionError("unreachable")

    def tail(self, layer: int, carry: Carry) -> Tensor:
        """Logits from a carry at target layer ``layer`` (0-based): stages layer+1 .. L."""
        for stage in self.stages[layer + 1 :]:
            carry = stage(*carry)
            if not isinstance(carry, tuple):
                return carry
        raise AssertionError("the last stage returns the logits")

    def verify(self, images: Tensor, atol: float = 1e-5) -> float:
        """Check ``tail(head(x)) == model(x)`` in fp32; returns the largest difference."""
        with torch.no_grad():
            expected = self.model(images).float()
            carries, got = self.forward(images)
        for layer, carry in zip(self.layers, carries, strict=True):
            if carry[0].dim() != 4:
                raise SplitError(
                    f"target layer {layer} outputs shape {tuple(carry[0].shape)}; CAM methods need a convolutional "
                    "feature map (N, C, H, W): choose a convolutional layer"
                )
        diff = (expected - got.float()).abs().max().item()
        if not diff <= atol * max(1.0, expected.abs().max().item()):
            raise SplitError(
                f"the model split at {', '.join(self.layers)} does not reproduce the model (max |difference| "
                f"{diff:.2e}); choose another model.target_layer"
            )
        return diff


def _trace(model: nn.Module, layers: list[str]) -> fx.GraphModule:
    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
            return qualname in layers or super().is_leaf_module(module, qualname)

    return fx.GraphModule(model, Tracer().trace(model))


def _out_of_place(gm: fx.GraphModule) -> None:
    """Make in-place modules and ops out-of-place where they would modify a tensor someone else
    reads: a stage input (an activation handed in, perhaps perturbed or a leaf of autograd) or a
    value with other users. In-place ops on a private intermediate (conv -> bn -> relu_) stay."""

    def shared(node: fx.Node) -> bool:
        value = node.args[0] if node.args else None
        return isinstance(value, fx.Node) and (value.op == "placeholder" or len(value.users) > 1)

    for node in gm.graph.nodes:
        if not shared(node):
            continue
        if node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", False):
            module = copy.copy(gm.get_submodule(node.target))
            module.inplace = False
            name = node.target.replace(".", "_") + "_out_of_place"
            gm.add_submodule(name, module)
            node.meta["module_path"] = node.target  # for messages: the model's own name of the module
            node.target = name
        elif node.op == "call_function":
            node.target = _OUT_OF_PLACE_FUNCTIONS.get(node.target, node.target)
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and node.target in _OUT_OF_PLACE_METHODS:
            node.target = node.target[:-1]
    gm.recompile()


def _descendants(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.users)
    return seen


def _target_nodes(gm: fx.GraphModule, layers: list[str]) -> list[fx.Node]:
    nodes = list(gm.graph.nodes)
    targets = []
    for layer in layers:
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
        if not calls:
            raise SplitError(f"target layer {layer} is not called in the model's forward pass; choose another layer")
        targets.append(calls[-1])  # the last call, as forward hooks would see it
    order = {n: i for i, n in enumerate(nodes)}
    targets.sort(key=order.__getitem__)
    for earlier, later in itertools.pairwise(targets):
        if later not in _descendants(earlier):
            raise SplitError(
                f"target layers {earlier.target} and {later.target} lie on parallel branches; multi-layer methods "
                "need layers that follow one another (for example layer2, layer3, layer4)"
            )
    return targets


def _build_stages(gm: fx.GraphModule, layers: list[str]) -> list[fx.GraphModule]:
    targets = _target_nodes(gm, layers)
    reach = [_descendants(t) for t in targets]
    nodes = [n for n in gm.graph.nodes if n.op not in ("output", "get_attr")]
    stage_of = {n: max((i + 1 for i, r in enumerate(reach) if n in r), default=0) for n in nodes}
    output = next(n for n in gm.graph.nodes if n.op == "output")

    carries: list[list[fx.Node]] = []  # carry_i: A_i first, then the side tensors later stages use
    for i, target in enumerate(targets):
        side = [
            n
            for n in nodes
            if n is not target and stage_of[n] <= i and any(stage_of.get(u, len(targets) + 1) > i for u in n.users)
        ]
        carries.append([target, *side])

    stages = []
    for s in range(len(targets) + 1):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}

        def lookup(n: fx.Node, graph: fx.Graph = graph, env: dict = env) -> fx.Node:
            if n not in env and n.op == "get_attr":  # parameters and buffers are read, never carried
                env[n] = graph.get_attr(n.target)
            return env[n]

        inputs = [n for n in nodes if n.op == "placeholder"] if s == 0 else carries[s - 1]
        for n in inputs:
            env[n] = graph.placeholder(n.name)
        for n in nodes:
            if stage_of[n] == s and n.op != "placeholder":
                env[n] = graph.node_copy(n, lookup)
        if s < len(targets):
            graph.output(tuple(lookup(n) for n in carries[s]))
        else:
            graph.output(fx.map_arg(output.args[0], lookup))
        stage = fx.GraphModule(gm, graph)
        _out_of_place(stage)
        stages.append(stage)
    return stages


class HookSplit(SplitModel):
    """Fallback for models torch.fx cannot trace: hooks capture and replace target-layer outputs
    in full forward passes. A carry is ``(A_i, x)``: the tail reruns the whole model on ``x`` with
    the output of ``l_i`` replaced, so a tail pass costs a full forward."""

    tail_is_full_forward = True
    mode = "hooks"

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.modules = [model.get_submodule(layer) for layer in self.layers]
        self.calls = [0] * len(self.layers)

    def forward(self, images: Tensor, grad_from: int | None = None) -> tuple[list[Carry], Tensor]:
        captured: list[Tensor | None] = [None] * len(self.layers)
        counts = [0] * len(self.layers)

        def capture(i: int):
            def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
                counts[i] += 1
                if i != grad_from:
                    captured[i] = output
                    return None
                # autograd starts here: a fresh leaf, cloned so in-place ops after it leave it intact
                torch.set_grad_enabled(True)
                captured[i] = output.detach().requires_grad_(True)
                return captured[i].clone()

            return hook

        with ExitStack() as stack:
            for i, module in enumerate(self.modules):
                stack.callback(module.register_forward_hook(capture(i)).remove)
            stack.enter_context(torch.no_grad())
            logits = self.model(images)
        missing = [layer for layer, a in zip(self.layers, captured, strict=True) if a is None]
        if missing:
            raise SplitError(f"target layer {missing[0]} was not called in the forward pass; choose another layer")
        self.calls = counts
        return [(a, images) for a in captured], logits

    def tail(self, layer: int, carry: Carry) -> Tensor:
        activation, images = carry
        seen = [0]

        def replace(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            seen[0] += 1  # replaced by a copy: the modules after it may work in place
            return activation.clone() if seen[0] == self.calls[layer] else None

        handle = self.modules[layer].register_forward_hook(replace)
        try:
            return self.model(images)
        finally:
            handle.remove()


class Whole(HookSplit):
    """No target layer: the model as it is, one full forward pass (for scoring, or maps from another tool)."""

    mode = "whole"


def split_model(model: nn.Module, layers: Sequence[str]) -> SplitModel:
    """The fx split of ``model`` at ``layers``, or the hook fallback when the model cannot be traced; without
    layers, the model untraced."""
    if not layers:
        return Whole(model, [])
    try:
        return SplitModel(model, layers)
    except SplitError:
        raise
    except Exception as err:  # torch.fx raises many types on untraceable Python
        log.warning(
            "torch.fx cannot trace %s (%s: %s): falling back to forward hooks; every tail pass now costs a full "
            "forward pass",
            type(model).__name__,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        split = HookSplit(model, layers)
        for layer in layers:
            model.get_submodule(layer)  # an unknown path fails here, not in the first batch
        return split
