"""Scores of many perturbed inputs, in forward chunks sized for the device.

Every perturbation in cambench, a metric's perturbed copies or a method's masked inputs and
ablated activations, is a set of *rows*, M per image: row r = b * M + m is perturbation m of
image b, and ``build(rows)`` makes the model input of a slice of rows on demand, so no more than
one chunk of perturbed tensors exists at a time. Rows go through the whole model, or only
through the tail after a target layer (``layer=i``); :func:`owners` and :func:`expand_rows`
give a chunk's images and its rows of per-image tensors (an expanded view, not a copy, when the
chunk lies within one image). Rows need not be M per image: :meth:`Scorer.score` takes one target
per row, and :func:`take_rows` picks per-image tensors for any ascending list of images (Score-CAM
and Ablation-CAM skip the channels whose perturbation cannot change the score).

The chunk size matters, and not only on GPUs: on a CPU a ResNet forward costs a third more per
image at batch 64 than at batch 8. With ``batch_size=None`` the scorer probes, once per kind of
row, chunk sizes 1, 2, 4, ... on the real rows (see :class:`ChunkProbe`), keeps their scores, and
settles on the fastest size per row. On CUDA an out-of-memory error halves the chunk and retries
it instead of failing the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cambench.device import autocast
from cambench.models.split import SplitModel

log = logging.getLogger(__name__)

Build = Callable[[slice], tuple[Tensor, ...]]
OUTPUTS = ("logit", "probability")  # what a metric may score (its ``output`` option)
# and the class log-odds z_c - logsumexp_{j != c} z_j, from which p_c = sigmoid and 1 - p_c = sigmoid(-.) follow
# without cancellation (Average Gain divides by 1 - p_c, which is 0 in float32 for a confident prediction)
SCORES = (*OUTPUTS, "log_odds")
MAX_CHUNK = {"cpu": 256, "cuda": 4096}  # the probe never goes past this many rows a chunk
RUNS_PER_SIZE = 3
TIE = 1.03  # chunk sizes this close per row are a tie


@dataclass
class ChunkProbe:
    """Finds the chunk size with the lowest time per row while real rows are scored.

    Sizes 1, 2, 4, ... each run three times: the first run pays one-time costs (kernel selection)
    and is not timed, the faster of the other two counts, so a passing load spike does not decide.
    The probe stops once two larger sizes are more than 10% slower per row than the fastest, or at
    ``limit``, and settles on the smallest size within 3% of the fastest: on a CPU, sizes 8 to 32
    often lie within timing noise of each other, and the smallest is as fast, uses less memory and
    is a stable choice.
    """

    limit: int
    size: int = 1
    runs: int = 0
    per_row: dict[int, float] = field(default_factory=dict)
    best: int | None = None

    def next_size(self) -> int:
        return self.best or self.size

    def record(self, size: int, seconds: float) -> None:
        if self.best is not None or size != self.size:
            return
        self.runs += 1
        if self.runs == 1:
            return
        self.per_row[size] = min(self.per_row.get(size, float("inf")), seconds / size)
        if self.runs < RUNS_PER_SIZE:
            return
        fastest = min(self.per_row, key=self.per_row.get)
        slower = [s for s in self.per_row if s > fastest and self.per_row[s] > 1.1 * self.per_row[fastest]]
        if len(slower) >= 2 or 2 * size > self.limit:
            # within timing noise of the fastest, the smallest chunk: less memory, and a stable choice
            self.best = min(s for s, t in self.per_row.items() if t <= TIE * self.per_row[fastest])
        else:
            self.size, self.runs = 2 * size, 0


class Scorer:
    """Target-class scores (logit or softmax probability) of rows of model inputs.

    ``batch_size``: fixed rows per chunk, or None to probe (see the module docstring).
    """

    def __init__(
        self,
        split: SplitModel,
        batch_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        memory_format: torch.memory_format = torch.preserve_format,
    ):
        self.split = split
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.memory_format = memory_format
        self.probes: dict[tuple, ChunkProbe] = {}

    def chunk_sizes(self) -> dict[str, int | None]:
        """The chunk size settled on per kind of row (for the run record)."""
        return {f"{'full' if k[0] is None else f'tail@{k[0]}'} {k[1]}": p.best for k, p in self.probes.items()}

    def logits(self, inputs: tuple[Tensor, ...], layer: int | None = None) -> Tensor:
        """Logits of one chunk: the full model on ``inputs[0]``, or the tail after target ``layer``."""
        if self.memory_format != torch.preserve_format:  # e.g. channels_last, as the model's weights
            inputs = tuple(t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t for t in inputs)
        with torch.no_grad(), autocast(inputs[0].device, self.autocast_dtype):
            if layer is None:
                return self.split.forward(inputs[0])[1]
            return self.split.tail(layer, inputs)

    def score(self, targets: Tensor, build: Build, layer: int | None = None, output: str = "probability") -> Tensor:
        """Scores (n_rows,) float32: row r built by ``build`` and scored for class ``targets[r]``."""
        if output not in SCORES:
            raise ValueError(f"unknown output {output!r}; valid: {', '.join(SCORES)}")
        n_rows = len(targets)
        scores = torch.empty(n_rows, device=targets.device)
        if n_rows == 0:
            return scores
        probe = self._probe(layer, build, targets.device)
        start = 0
        while start < n_rows:
            size = min(self.batch_size or probe.next_size(), n_rows - start)
            timed = self.batch_size is None and probe.best is None
            try:
                begin = self._clock(targets.device) if timed else 0.0
                logits = self.logits(build(slice(start, start + size)), layer)
                scores[start : start + size] = class_scores(logits, targets[start : start + size], output)
                if timed:
                    probe.record(size, self._clock(targets.device) - begin)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self._halve(probe, size)
                continue
            start += size
        return scores

    def score_rows(
        self, targets: Tensor, per_image: int, build: Build, layer: int | None = None, output: str = "probability"
    ) -> Tensor:
        """Scores (B, per_image): row b * per_image + m scored for class ``targets[b]``."""
        scores = self.score(targets.repeat_interleave(per_image), build, layer, output)
        return scores.view(len(targets), per_image)

    def settled_chunk(self, layer: int | None, row_shape: tuple[int, ...]) -> int | None:
        """The chunk size the probe settled on for rows of this kind, if it has (or the fixed size)."""
        probe = self.probes.get((layer, tuple(row_shape)))
        return self.batch_size or (probe.best if probe else None)

    def __call__(self, images: Tensor, targets: Tensor, output: str = "probability") -> Tensor:
        """Scores (N,) of ``targets[n]`` on ``images[n]`` (full forward passes)."""
        return self.score_rows(targets, 1, lambda rows: (images[rows],), output=output)[:, 0]

    def _probe(self, layer: int | None, build: Build, device: torch.device) -> ChunkProbe:
        key = (layer, tuple(build(slice(0, 1))[0].shape[1:]))
        if key not in self.probes:
            self.probes[key] = ChunkProbe(limit=MAX_CHUNK.get(device.type, MAX_CHUNK["cuda"]))
        return self.probes[key]

    def _halve(self, probe: ChunkProbe, size: int) -> None:
        smaller = max(1, size // 2)
        log.warning("out of device memory at %d rows a chunk: retrying with %d", size, smaller)
        if self.batch_size is not None:
            self.batch_size = smaller
        probe.best = smaller
        probe.limit = smaller
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _clock(device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()


def class_scores(logits: Tensor, targets: Tensor, output: str = "probability") -> Tensor:
    """The score (B,) float32 of ``targets`` under ``logits`` (B, classes): the logit, the softmax
    probability, or the class log-odds ``z_c - logsumexp_{j != c} z_j`` (``log_odds``)."""
    logits = logits.float()
    if output == "log_odds":
        own = logits.gather(1, targets[:, None])[:, 0]
        others = logits.scatter(1, targets[:, None], float("-inf")).logsumexp(1)
        return own - others
    scores = logits.softmax(1) if output == "probability" else logits
    return scores.gather(1, targets[:, None])[:, 0]


def owners(rows: slice, per_image: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(image, perturbation) index of every row in ``rows``."""
    index = torch.arange(rows.start, rows.stop, device=device)
    return index // per_image, index % per_image


def expand_rows(tensor: Tensor, rows: slice, per_image: int) -> Tensor:
    """The rows of a per-image tensor (B, ...) for ``rows`` of ``per_image`` rows an image: an
    expanded view of one image's entry when the slice lies within one image, else a gather."""
    first, last = rows.start // per_image, (rows.stop - 1) // per_image
    if first == last:
        return tensor[first : first + 1].expand(rows.stop - rows.start, *tensor.shape[1:])
    return gather(tensor, torch.arange(rows.start, rows.stop, device=tensor.device) // per_image)


def take_rows(tensor: Tensor, images: Tensor) -> Tensor:
    """``tensor[images]`` for ascending image indices held on the CPU: an expanded view of one
    image's entry when every row belongs to it, else a gather."""
    first, last = int(images[0]), int(images[-1])
    if first == last:
        return tensor[first : first + 1].expand(len(images), *tensor.shape[1:])
    return gather(tensor, images.to(tensor.device))


def gather(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[index]`` along dim 0, in the tensor's memory format. A channels_last tensor is
    gathered as its contiguous (N, H, W, C) view: on the CPU, ``index_select`` copies whole rows
    there, where indexing the (N, C, H, W) view goes element by element (about 7x slower)."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return tensor.index_select(0, index)
