"""Cost of every CAM method: seconds per image, against the method's own limit, against one forward
pass, and against pytorch-grad-cam and TorchCAM where they implement the same method.

    python scripts/bench_methods.py [--models resnet18 resnet50] [--methods gradcam ablationcam ...]
        [--batch-size 8] [--image-size 224] [--repeats 3] [--slow-images 1] [--slow-image-size PX]
        [--slow-repeats 1] [--device cuda|cpu] [--markdown] [--save FILE [--merge]] [--write-readme]

Everything is timed in one run, per model (random weights, eval mode, channels_last, the default
target layer) on the same device, images and targets (the predicted classes, fixed once per
setting). Each row is one block, timed round-robin so that its ratios are measured under the same
conditions: our method, the model's forward pass, a forward pass with the backward pass after the
target layer (gradient methods), and each peer (which builds its extractor and removes its hooks
inside its own call). A time is the fastest of ``--repeats`` rounds after one warm-up call of each
(on a shared virtual machine the host steals CPU in bursts, which the fastest round filters out);
our method is first warmed up until the scorer's chunk probes have settled, as after a run's first
batch. CUDA is synchronised around each call. Times are reported per image.

A method's *limit* is its declared passes per image (``CAMOutput.passes``: F full forward passes,
B backward passes through the layers after the target layer, Bx backward passes through the whole
model to the input, T tail passes through those layers)
times the measured cost of one pass of each kind, at the same images and resolution:

    t_F  the model's forward pass under ``torch.inference_mode``, per image, in the row's block;
    t_B  ``split.forward(x, grad_from=0)`` and ``autograd.grad`` of the summed target logits with
         respect to the target activation, minus t_F, per image, in the row's block;
    t_Bx the model's forward pass and ``autograd.grad`` of the summed target logits with respect
         to the input, minus t_F, per image, in the row's block (methods that optimise an input
         mask or propagate relevance to the input);
    t_T  ``split.tail(0, rows)`` per row, on a chunk of repeated carries of the size the scorer
         settled on for tail rows;
    limit = F t_F + B t_B + Bx t_Bx + T t_T.

Rows of methods with more than 16 forward-pass equivalents per image (a backward pass to the
input counts as two; Score-CAM: 1 + K; and Ablation-CAM, whose pytorch-grad-cam peer runs the
layers before the target layer K times) use reduced settings, marked with a dagger:
``--slow-images`` images at ``--slow-image-size`` px (default 224 for resnet18, 112 for the
others) and ``--slow-repeats`` repeats. Rows with more than 4000 (SS-CAM: 35 K, IS-CAM: 10 K,
at ResNet-50) run one call on one image at 64 px, marked with a double dagger; a row
whose target map would be 1 x 1 is not timed. Their limit, forward pass and peers are timed at those settings too.

Peers are used as documented: pytorch-grad-cam ``cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])``
(progress bars silenced); TorchCAM: a forward pass of the model on the batch (grad-enabled for the
gradient extractors, under ``inference_mode`` for CAM, ScoreCAM and SmoothGradCAMpp, which make
their own passes), then ``extractor(class_idx=targets, scores=logits)``. TorchCAM returns maps at
feature resolution; its timing includes the upsampling to input size and min-max normalisation
(cambench's ``finalise``) that ours and pytorch-grad-cam's include, so all three produce the same
kind of map. Peer ratios are
peer seconds / our seconds: above 1 means cambench is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torchvision
from method_table import BENCH_RECORD, README, TABLE_MODEL, method_table, readme_with_table
from torch import Tensor, nn

from cambench.methods import METHODS, CAMMethod, build_method
from cambench.methods.base import finalise
from cambench.models.engine import Passes, build_engine
from cambench.models.layers import default_target_layer
from cambench.models.split import Carry

R = TypeVar("R")

PGC, TORCHCAM = "pytorch-grad-cam", "TorchCAM"
PACKAGES = {PGC: ("pytorch_grad_cam", "grad-cam"), TORCHCAM: ("torchcam", "torchcam")}
SLOW_FORWARDS = 16  # a method with more forward-pass equivalents per image than this runs at reduced settings
SLOW_IMAGE_SIZE = {"resnet18": 224}  # default --slow-image-size per architecture; others: DEFAULT_SLOW_SIZE
DEFAULT_SLOW_SIZE = 112
SLOWER_FORWARDS = 4000  # more than this (SS-CAM: 35 K, IS-CAM: 10 K): one image at SLOWER_IMAGE_SIZE, one round
SLOWER_IMAGE_SIZE: dict[str, int] = {}  # per architecture; others: DEFAULT_SLOWER_SIZE
DEFAULT_SLOWER_SIZE = 64  # at 32 px, ResNet's layer4 is 1 x 1: every mask is flat and nothing is scored
TABLE_K, TABLE_HW = 2048, 49  # ResNet-50 at layer4, 224 px: the passes column of the Markdown table
SINGLE_PASS_GRADIENT = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")
TARGET_FORWARD, TARGET_LIMIT, TARGET_ABLATION = 1.1, 1.25, 50.0
MARK, MARK_SLOWER = "†", "‡"  # rows timed at reduced settings


@dataclass(frozen=True)
class Peer:
    library: str  # PGC or TORCHCAM
    name: str  # the class in the library
    slow: bool = False  # about K full forward passes per image: the row runs at reduced settings or slower


PEERS: dict[str, tuple[Peer, ...]] = {
    "cam": (Peer(TORCHCAM, "CAM"),),
    "gradcam": (Peer(PGC, "GradCAM"), Peer(TORCHCAM, "GradCAM")),
    "gradcampp": (Peer(PGC, "GradCAMPlusPlus"), Peer(TORCHCAM, "GradCAMpp")),
    "smoothgradcampp": (Peer(TORCHCAM, "SmoothGradCAMpp"),),
    "xgradcam": (Peer(PGC, "XGradCAM"), Peer(TORCHCAM, "XGradCAM")),
    "hirescam": (Peer(PGC, "HiResCAM"),),
    "layercam": (Peer(PGC, "LayerCAM"), Peer(TORCHCAM, "LayerCAM")),
    "eigencam": (Peer(PGC, "EigenCAM"),),
    "randomcam": (Peer(PGC, "RandomCAM"),),
    "scorecam": (Peer(PGC, "ScoreCAM", slow=True), Peer(TORCHCAM, "ScoreCAM", slow=True)),
    "ablationcam": (Peer(PGC, "AblationCAM", slow=True),),
    "sscam": (Peer(TORCHCAM, "SSCAM", slow=True),),
    "iscam": (Peer(TORCHCAM, "ISCAM", slow=True),),
}
TORCHCAM_USES_SCORES = {"GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM"}  # need the grad-enabled logits


@dataclass(frozen=True)
class Setting:
    images: int
    size: int
    mark: str = ""  # "", MARK or MARK_SLOWER: reduced settings

    def __str__(self) -> str:
        return f"{self.images}x{self.size}{self.mark}"


@dataclass
class Inputs:
    images: Tensor
    targets: Tensor
    carry: Carry  # at the target layer, computed without autograd


@dataclass
class Row:
    method: str
    model: str
    setting: Setting
    seconds: float | None = None  # per image
    passes: Passes | None = None
    limit: float | None = None  # per image
    forward: float | None = None  # t_F per image, timed in the row's block
    backward: float | None = None  # t_B per image, timed in the row's block
    input_backward: float | None = None  # t_Bx per image, timed in the row's block
    tail_chunk: str = ""
    peers: dict[str, float] = field(default_factory=dict)  # library -> seconds per image
    errors: list[str] = field(default_factory=list)
    skipped: str = ""  # why the row was not timed

    def peer_ratio(self, library: str) -> float | None:
        if library not in self.peers or not self.seconds:
            return None
        return self.peers[library] / self.seconds

    def faster_peer(self) -> tuple[str, float] | None:
        """The faster peer and its ratio peer seconds / ours."""
        if not self.peers or not self.seconds:
            return None
        library = min(self.peers, key=self.peers.get)
        return library, self.peers[library] / self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], R], repeats: int, device: torch.device) -> tuple[float, R]:
    """Fastest wall time of ``repeats`` calls of ``fn`` after one warm-up call, and the last result."""
    return interleaved({"fn": fn}, repeats, device)["fn"]


PAUSE = 0.25  # seconds between two timed calls


def interleaved(
    fns: dict[str, Callable[[], R]], repeats: int, device: torch.device, warmup: bool = True
) -> dict[str, tuple[float, R]]:
    """Fastest wall time of each function and its last result, timed round-robin (one warm-up call
    each first, unless ``warmup`` is False: calls of a minute or more): ratios between them are
    measured under the same conditions, in one run. The fastest round, not the median: on a shared
    virtual machine the host steals CPU in bursts.

    Each call starts after a pause of ``PAUSE`` seconds: the thread pools of the previous call
    (numpy's OpenBLAS after pytorch-grad-cam's SVD, OpenMP after torch) spin for a while after
    returning and would slow whichever function runs next (ours after pytorch-grad-cam's EigenCAM
    measured 34.7 ms/image without the pause, 27.5 with it; the model's forward alone 27.7)."""
    results = {name: fn() for name, fn in fns.items()} if warmup else {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            time.sleep(PAUSE)
            start = time.perf_counter()
            results[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]), results[name]) for name in fns}


class ModelBench:
    """One model, split at its default target layer, with the engine a run would build."""

    def __init__(self, arch: str, device: torch.device, layers: list[str] | None = None):
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, num_classes=1000).eval()
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.arch, self.device = arch, device
        self.layers = layers or [default_target_layer(self.model, arch)]
        self.layer = self.layers[-1]
        self.engine = build_engine(self.model, self.layers, memory_format=torch.channels_last)
        self.split = self.engine.split
        self._inputs: dict[Setting, Inputs] = {}
        self._costs: dict[tuple[Setting, str], float] = {}

    def inputs(self, setting: Setting) -> Inputs:
        """Random images (seeded), their predicted classes and their carry at the target layer."""
        if setting not in self._inputs:
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(setting.images, 3, setting.size, setting.size, generator=generator)
            images = images.to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():  # not inference_mode: the targets are indices autograd may save
                carries, logits = self.split.forward(images)
            self._inputs[setting] = Inputs(images, logits.argmax(1), carries[-1])
        return self._inputs[setting]

    def shape(self, setting: Setting) -> tuple[int, int]:
        """(K, hw) at the target layer."""
        channels, height, width = self.inputs(setting).carry[0].shape[1:]
        return channels, height * width

    def cost(self, setting: Setting, kind: str, repeats: int) -> float:
        """Seconds per image of the split's forward pass (``split``), or per row of a tail pass on
        chunks of N rows (``tail@N``)."""
        key = (setting, kind)
        if key not in self._costs:
            self._costs[key] = self._measure(setting, kind, repeats)
        return self._costs[key]

    def _measure(self, setting: Setting, kind: str, repeats: int) -> float:
        inputs = self.inputs(setting)
        if kind == "split":  # the split's own forward pass (diagnostic: its overhead over the model)

            def run() -> None:
                with torch.inference_mode():
                    self.split.forward(inputs.images)

            return best_seconds(run, repeats, self.device)[0] / setting.images
        chunk = int(kind.removeprefix("tail@"))
        rows = tuple(
            t[:1]
            .expand(chunk, *t.shape[1:])
            .contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.contiguous_format)
            for t in inputs.carry
        )

        def tail() -> None:
            with torch.no_grad():
                self.split.tail(len(self.layers) - 1, rows)

        return best_seconds(tail, repeats, self.device)[0] / chunk

    def forward_fns(self, setting: Setting) -> dict[str, Callable[[], object]]:
        """The passes a limit is made of, to time in the same block as the method: the model's own
        forward pass, a forward pass with the backward pass after the target layer, and one with
        the backward pass through the whole model to the input."""
        inputs = self.inputs(setting)
        images, targets = inputs.images, inputs.targets

        def forward() -> None:
            with torch.inference_mode():
                self.model(images)

        def forward_backward() -> None:
            with torch.inference_mode(False), torch.enable_grad():
                carries, logits = self.split.forward(images, grad_from=0)
                score = logits.float().gather(1, targets[:, None]).sum()
                torch.autograd.grad(score, [carries[0][0]])

        def forward_input_backward() -> None:
            with torch.inference_mode(False), torch.enable_grad():
                x = images.clone().requires_grad_(True)
                score = self.model(x).float().gather(1, targets[:, None]).sum()
                torch.autograd.grad(score, [x])

        return {
            "forward": forward,
            "forward+backward": forward_backward,
            "forward+input_backward": forward_input_backward,
        }

    def tail_chunk(self, setting: Setting) -> tuple[int, str]:
        """The chunk size the scorer settled on for tail rows at this setting, and how it was found."""
        key = (len(self.split.layers) - 1, tuple(self.inputs(setting).carry[0].shape[1:]))
        probe = self.engine.scorer.probes.get(key)
        if probe is None:
            return setting.images * self.shape(setting)[0], "no probe: one chunk per batch"
        if probe.best is None:
            return probe.size, "probe not settled"
        return probe.best, "probed"

    def limit(self, setting: Setting, row: Row, repeats: int) -> tuple[float, str]:
        """F t_F + B t_B + Bx t_Bx + T t_T per image, and the tail chunk used."""
        passes = row.passes
        limit = passes.forward * row.forward + passes.backward * row.backward
        limit += passes.input_backward * row.input_backward
        chunk_note = ""
        if passes.tail:
            chunk, how = self.tail_chunk(setting)
            limit += passes.tail * self.cost(setting, f"tail@{chunk}", repeats)
            chunk_note = f"{chunk} ({how})"
        return limit, chunk_note

    def costs_summary(self, rows: list[Row], repeats: int) -> list[str]:
        lines = []
        for setting in self._inputs:
            forwards = [r.forward for r in rows if r.model == self.arch and r.setting == setting and r.forward]
            t_f = statistics.median(forwards) if forwards else None
            parts = [f"t_F {1000 * t_f:.2f} ms/image (median over the rows' blocks)"] if t_f else []
            if t_f:
                parts.append(f"split forward {self.cost(setting, 'split', repeats) / t_f:.2f}x t_F")
            backwards = [r.backward for r in rows if r.model == self.arch and r.setting == setting and r.backward]
            if backwards:
                parts.append(f"t_B {1000 * statistics.median(backwards):.3f} ms/image")
            for (s, kind), value in self._costs.items():
                if s == setting and kind.startswith("tail@"):
                    parts.append(f"t_T {1e6 * value:.1f} us/row at chunks of {kind.removeprefix('tail@')}")
            k, hw = self.shape(setting)
            lines.append(
                f"  {setting} ({setting.images} image(s), {setting.size} px, K={k}, hw={hw}): " + ", ".join(parts)
            )
        return lines


def available(library: str) -> str | None:
    """The installed version of a peer library, or None."""
    module, distribution = PACKAGES[library]
    try:
        importlib.import_module(module)
    except ImportError:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def peer_call(peer: Peer, model: nn.Module, layer: str, inputs: Inputs) -> Callable[[], object]:
    """A zero-argument call that builds the peer's extractor, explains the inputs and removes its
    hooks, so the peer's hooks never run during the other timings of the block."""
    images, class_idx = inputs.images, inputs.targets.tolist()
    if peer.library == PGC:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        outputs = [ClassifierOutputTarget(c) for c in class_idx]

        def call() -> object:
            cam = getattr(pytorch_grad_cam, peer.name)(model=model, target_layers=[model.get_submodule(layer)])
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # tqdm progress bars of ScoreCAM, AblationCAM
                    return cam(input_tensor=images, targets=outputs)
            finally:  # not ``with cam``: its __exit__ swallows IndexError
                cam.activations_and_grads.release()

        return call

    from torchcam import methods

    kwargs = {}
    if peer.name == "CAM":
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        kwargs["fc_layer"] = linears[-1]

    def call() -> object:
        extractor = getattr(methods, peer.name)(model, layer, **kwargs)
        try:
            if peer.name in TORCHCAM_USES_SCORES:
                (maps,) = extractor(class_idx=class_idx, scores=model(images))
            else:
                with torch.inference_mode():
                    model(images)
                (maps,) = extractor(class_idx=class_idx)
        finally:
            extractor.remove_hooks()
        # TorchCAM stops at feature resolution: the same maps as ours and pytorch-grad-cam's need this
        return finalise(maps, images.shape[-2:])

    return call


def settle(method: CAMMethod, inputs: Inputs, tries: int = 5) -> Passes:
    """Warm the method up until the scorer's chunk probes have settled, as after a run's first
    batch (at most ``tries`` calls); returns its declared passes."""
    for _ in range(tries):
        out = method.explain(inputs.images, inputs.targets)
        if all(p.best is not None for p in method.engine.scorer.probes.values()):
            break
    return out.passes


def bench_row(
    bench: ModelBench,
    name: str,
    method: CAMMethod,
    setting: Setting,
    repeats: int,
    peers: dict[str, str | None],
    warmup: bool = True,
) -> Row:
    row = Row(name, bench.arch, setting)
    inputs = bench.inputs(setting)
    try:
        row.passes = settle(method, inputs)
    except Exception as err:  # report and go on with the other methods
        row.errors.append(f"cambench {name}: {type(err).__name__}: {err}")
        return row
    fns: dict[str, Callable[[], object]] = {"ours": lambda: method.explain(inputs.images, inputs.targets)}
    passes = bench.forward_fns(setting)
    fns["forward"] = passes["forward"]
    for kind in ("backward", "input_backward"):
        if getattr(row.passes, kind):
            fns[f"forward+{kind}"] = passes[f"forward+{kind}"]
    for peer in PEERS.get(name, ()):
        if peers[peer.library] is not None:
            fns[peer.library] = peer_call(peer, bench.model, bench.layer, inputs)
    try:
        times = {
            key: seconds / setting.images
            for key, (seconds, _) in interleaved(fns, repeats, bench.device, warmup).items()
        }
    except Exception as err:
        row.errors.append(f"{name} block: {type(err).__name__}: {str(err).splitlines()[0]}")
        return row
    row.seconds, row.forward = times["ours"], times["forward"]
    row.backward = max(times.get("forward+backward", times["forward"]) - times["forward"], 0.0)
    row.input_backward = max(times.get("forward+input_backward", times["forward"]) - times["forward"], 0.0)
    row.limit, row.tail_chunk = bench.limit(setting, row, repeats)
    row.peers = {library: times[library] for library in PACKAGES if library in times}
    return row


def fmt(value: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def seconds_str(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2e}"


HEADER = (
    f"{'method':16s} {'setting':>9s} {'s/image':>9s} {'passes':>12s} {'limit s/img':>11s} {'x limit':>7s} "
    f"{'x fwd':>7s} {'pgc/ours':>8s} {'tcam/ours':>9s}  faster peer"
)


def row_line(row: Row) -> str:
    if row.skipped:
        return f"{row.method:16s} {row.setting!s:>9s} not timed: {row.skipped}"
    faster = row.faster_peer()
    faster_str = "-" if faster is None else f"{faster[0]} ({'we are faster' if faster[1] >= 1 else 'peer is faster'})"
    ratio = row.seconds / row.limit if row.seconds and row.limit else None
    forward = row.seconds / row.forward if row.seconds and row.forward else None
    return (
        f"{row.method:16s} {row.setting!s:>9s} {seconds_str(row.seconds):>9s} "
        f"{row.passes.formula() if row.passes else '-':>12s} {seconds_str(row.limit):>11s} {fmt(ratio):>7s} "
        f"{fmt(forward, '.1f'):>7s} {fmt(row.peer_ratio(PGC)):>8s} {fmt(row.peer_ratio(TORCHCAM)):>9s}  {faster_str}"
    )


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def record(rows: list[Row], methods: dict[str, CAMMethod], models: list[str], notes: list[str], device: str) -> dict:
    """What ``--save`` writes and the README's method table is generated from."""
    return {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "torch": torch.__version__,
        "peers": {lib: available(lib) for lib in PACKAGES},
        "models": models,
        "notes": notes,
        "passes": {name: method.passes(TABLE_K, TABLE_HW).formula() for name, method in methods.items()},
        "rows": [
            {
                "method": r.method,
                "model": r.model,
                "images": r.setting.images,
                "size": r.setting.size,
                "mark": r.setting.mark,
                "seconds": r.seconds,
                "limit": r.limit,
                "forward": r.forward,
                "peers": r.peers,
                "passes": r.passes.formula() if r.passes else None,
                "skipped": r.skipped,
            }
            for r in rows
        ],
    }


def merged(old: dict, new: dict) -> dict:
    """``old`` with the rows (method, model) of ``new`` replaced or added, and the merge noted: for
    re-measuring a few methods after a change without timing every method again."""
    remeasured = {(r["method"], r["model"]) for r in new["rows"]}
    models = old["models"] + [m for m in new["models"] if m not in old["models"]]
    rows = [r for r in old["rows"] if (r["method"], r["model"]) not in remeasured] + new["rows"]
    rows.sort(key=lambda r: (models.index(r["model"]), r["method"]))
    which = ", ".join(f"{m}@{a}" for m, a in sorted(remeasured))
    note = f"re-measured on {new['date']} ({new['command']}), each row in one run with its own limit and peers: {which}"
    return {
        **old,
        "models": models,
        "notes": old["notes"] + [note],
        "passes": {**old["passes"], **new["passes"]},
        "rows": rows,
    }


def check_targets(rows: list[Row]) -> list[str]:
    """One line per target: met or not, with the rows that decide it."""
    timed = [r for r in rows if r.seconds is not None]

    def verdict(label: str, checked: list[tuple[Row, float, bool]], spec: str = ".2f") -> str:
        if not checked:
            return f"  [n/a]     {label}: nothing measured"
        failing = [(r, v) for r, v, ok in checked if not ok]
        shown = failing or [(r, v) for r, v, _ in checked]
        detail = ", ".join(f"{r.method}@{r.model} {v:{spec}}x" for r, v in shown)
        status = "[NOT MET]" if failing else "[met]    "
        return f"  {status} {label}: {'failing: ' if failing else ''}{detail}"

    forward = [
        (r, r.seconds / r.forward, r.seconds / r.forward <= TARGET_FORWARD)
        for r in timed
        if r.method in SINGLE_PASS_GRADIENT and r.forward
    ]
    limit = [(r, r.seconds / r.limit, r.seconds / r.limit <= TARGET_LIMIT) for r in timed if r.limit]
    ablation = [
        (r, ratio, ratio >= TARGET_ABLATION)
        for r in timed
        if r.method == "ablationcam" and r.model == "resnet18" and (ratio := r.peer_ratio(PGC)) is not None
    ]
    peers = [(r, f[1], f[1] >= 1.0) for r in timed if (f := r.faster_peer()) is not None]
    return [
        "Targets:",
        verdict(f"single-pass gradient methods within {TARGET_FORWARD}x of one forward pass", forward),
        verdict(f"every method within {TARGET_LIMIT}x of its own limit", limit),
        verdict(
            f"Ablation-CAM at resnet18 layer4 at least {TARGET_ABLATION:g}x faster than pytorch-grad-cam's",
            ablation,
            ".0f",
        ),
        verdict("no method slower than the faster peer (peer/ours >= 1)", peers),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), help="default: every registered method")
    parser.add_argument("--batch-size", type=int, default=8, help="images per call")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--slow-images", type=int, default=1, help="images per call of the reduced rows")
    parser.add_argument(
        "--slow-image-size",
        type=int,
        default=None,
        help=f"px of the reduced rows (default: {SLOW_IMAGE_SIZE} else {DEFAULT_SLOW_SIZE})",
    )
    parser.add_argument("--slow-repeats", type=int, default=2, help="repeats of the reduced rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", action="store_true", help="also print the README's method table")
    parser.add_argument("--save", type=Path, help=f"write the measurements as JSON (the README's: {BENCH_RECORD})")
    parser.add_argument("--write-readme", action="store_true", help="write the method table into README.md")
    parser.add_argument(
        "--merge", action="store_true", help="replace only the measured (method, model) rows of the --save record"
    )
    args = parser.parse_args()
    if args.merge and not (args.save and args.save.exists()):
        parser.error("--merge needs --save with an existing record to merge into")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(sorted(METHODS))}")

    device = torch.device(args.device)
    peers = {library: available(library) for library in PACKAGES}
    print(
        f"torch {torch.__version__}, {device} ({torch.get_num_threads()} threads); "
        + ", ".join(f"{lib} {v or 'not installed: skipped'}" for lib, v in peers.items()),
        flush=True,
    )

    rows: list[Row] = []
    instances: dict[str, CAMMethod] = {}
    notes = [
        f"{MARK}, {MARK_SLOWER}: reduced settings (rows with more than {SLOW_FORWARDS}, or more than "
        f"{SLOWER_FORWARDS}, forward-pass equivalents per image, here or in a peer; a backward pass to the input "
        "counts as two):"
    ]
    for arch in args.models:
        bench = ModelBench(arch, device)
        normal = Setting(args.batch_size, args.image_size)
        slow_size = args.slow_image_size or SLOW_IMAGE_SIZE.get(arch, DEFAULT_SLOW_SIZE)
        slow = Setting(args.slow_images, slow_size, MARK)
        slower = Setting(1, SLOWER_IMAGE_SIZE.get(arch, DEFAULT_SLOWER_SIZE), MARK_SLOWER)
        k = bench.shape(normal)[0]
        print(
            f"\n{arch} at {bench.layer} (K={k}, {bench.split.mode} split), {normal.images} images at {normal.size} px, "
            f"reduced rows {slow}, {slower}",
            flush=True,
        )
        notes.append(
            f"{arch}: {MARK} {slow.images} image(s) at {slow.size} px, best of {args.slow_repeats}; "
            f"{MARK_SLOWER} 1 image at {slower.size} px, one call; "
            f"others: {normal.images} at {normal.size} px, best of {args.repeats}"
        )
        print(HEADER, flush=True)
        for name in args.methods:
            layers = METHODS[name].default_layers(arch, bench.model)
            here = bench if layers is None else ModelBench(arch, device, layers)
            try:
                method = build_method(name, here.engine)
            except Exception as err:
                rows.append(Row(name, arch, normal, errors=[f"cambench {name}: {type(err).__name__}: {err}"]))
                print(f"{name:16s} cannot run: {err}", flush=True)
                continue
            if arch == TABLE_MODEL or name not in instances:  # the passes column is ResNet-50's
                instances[name] = method
            passes = here.engine.actual_passes(method.passes(*here.shape(normal)))
            forwards = passes.forward + 2 * passes.input_backward
            if forwards > SLOWER_FORWARDS:
                setting, repeats = slower, 1
            elif forwards > SLOW_FORWARDS or any(p.slow for p in PEERS.get(name, ())):
                setting, repeats = slow, args.slow_repeats
            else:
                setting, repeats = normal, args.repeats
            if here.shape(setting)[1] == 1:
                row = Row(name, arch, setting, skipped=f"the map is 1 x 1 at {setting.size} px: nothing to time")
            else:
                row = bench_row(here, name, method, setting, repeats, peers, warmup=setting is not slower)
            rows.append(row)
            print(row_line(row), flush=True)
            for error in row.errors:
                print(f"    error: {error}", flush=True)
        print(f"pass costs of {arch}:", flush=True)
        for line in bench.costs_summary(rows, args.repeats):
            print(line, flush=True)
        settled = ", ".join(
            f"{kind}: {size or 'not settled'}" for kind, size in bench.engine.scorer.chunk_sizes().items()
        )
        print(f"  scorer chunk sizes (rows): {settled or 'none probed'}", flush=True)
        for row in rows:
            if row.model == arch and row.tail_chunk:
                print(f"  t_T for {row.method} at chunks of {row.tail_chunk}", flush=True)

    saved = record(rows, instances, args.models, notes, describe(device))
    if args.merge:
        saved = merged(json.loads(args.save.read_text()), saved)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(saved, indent=1) + "\n")
        print(f"\nsaved to {args.save}")
    if args.write_readme:
        README.write_text(readme_with_table(README.read_text(), method_table(saved)))
        print(f"wrote the method table to {README}")
    if args.markdown:
        print()
        print(method_table(saved))
    print()
    print("\n".join(check_targets(rows)))
    errors = [e for r in rows for e in r.errors]
    if errors:
        print("\nErrors:")
        print("\n".join(f"  {e}" for e in errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
