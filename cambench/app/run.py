"""The batched evaluation loop: model, method and metrics on one device, rows out per batch.

Before anything is downloaded or trained, :func:`preflight` checks the target layers on a
weightless skeleton, splits it to check that the method can use the model (CAM needs a linear
head) and checks that the dataset and method give every metric what it requires. The split of
the real model is verified on the first batch. Per batch, the method and each metric are timed
separately (synchronised on CUDA); every row carries ``seconds_method``, ``seconds_<metric>``,
the method's declared passes per image and the peak memory. After every batch the run saves a
checkpoint, so a killed run can go on (``runner.resume``, :mod:`cambench.app.resume`); the
engine knows the batch's index and ids, from which every random draw is seeded.
"""

from __future__ import annotations

import logging
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cambench.analysis.plots import GRID_FILE, GRID_PNG, heatmap_grid, save_grid_data
from cambench.analysis.runs import load_finished
from cambench.analysis.statistics import summarise
from cambench.app.config import ConfigError, method_params, target_layers
from cambench.app.resume import Checkpoint, find_earlier, fingerprint, mark_started
from cambench.data.base import Batch, collate
from cambench.data.grid import check_grid, grid_for_run
from cambench.data.preprocessing import Preprocessing
from cambench.data.registry import DATASETS
from cambench.data.sampling import coverage, random_subset, stratified_subset
from cambench.device import AUTOCAST_DTYPES, resolve_device
from cambench.io.maps import MAPS, MapWriter
from cambench.io.writer import CURVES, PER_IMAGE, RunWriter, append_to_table
from cambench.methods import CAMMethod, all_methods, build_method
from cambench.metrics import METRICS, Metric, MetricContext, MetricInput, build_metric, missing_capabilities
from cambench.models.build import build_model, check_target_layers, skeleton
from cambench.models.engine import Passes, build_engine
from cambench.models.split import split_model

log = logging.getLogger(__name__)
GRID_IMAGES = 8  # images in a run's heat-map grid (runner.save_grid)


@dataclass
class RunResult:
    rows: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def preflight(cfg: DictConfig) -> list[str]:
    """Check what can be checked without weights; returns the target layers."""
    spec = DATASETS[cfg.dataset.name]
    num_classes = spec.num_classes(cfg.dataset)
    check_grid(cfg.dataset, num_classes)
    methods = all_methods()
    method = methods[cfg.method.name]
    layers = target_layers(cfg.model.target_layer)
    if layers is None:
        layers = method.default_layers(cfg.model.name, skeleton(cfg.model.name, num_classes))
    layers = check_target_layers(cfg.model.name, num_classes, layers)
    method.check_model(split_model(skeleton(cfg.model.name, num_classes), layers))
    for explainer in dict.fromkeys([cfg.method.name, *cfg.runner.baselines]):
        capabilities = spec.capabilities(cfg.dataset) | methods[explainer].capabilities() | {"model"}
        needs = {n: missing for n in cfg.metrics if (missing := missing_capabilities(METRICS[n], capabilities))}
        if needs:
            raise ConfigError(
                "; ".join(f"metric {name} needs {' and '.join(missing)}" for name, missing in needs.items())
                + f", which dataset={cfg.dataset.name} with method={explainer} cannot give; drop "
                + ("the metric" if len(needs) == 1 else "these metrics")
                + (" or choose another dataset or method" if explainer == cfg.method.name else " or the baseline")
            )
    return layers


def select_images(dataset: Dataset, n: int | None, seed: int) -> tuple[Dataset, str]:
    """The images a run evaluates (see ``sampling``) and a line on their class coverage."""
    if n is None or n >= len(dataset):
        return dataset, f"all {len(dataset)} images"
    labels = dataset.labels() if hasattr(dataset, "labels") else None
    if labels is None:
        return Subset(dataset, random_subset(len(dataset), n, seed).tolist()), f"{n} random images (labels unknown)"
    index = stratified_subset(labels, n, seed)
    described = coverage(torch.as_tensor(labels)[index])
    return Subset(dataset, index.tolist()), f"{described} (seeded subset of {len(dataset)})"


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time in seconds (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: DictConfig, out_dir: Path) -> RunResult:
    """Run one (model, method, dataset, metrics) cell; ``cfg`` is a validated config. With ``runner.resume``
    a finished run of the same config is returned as it is and an unfinished one goes on in its folder."""
    start = time.perf_counter()
    rc = cfg.runner
    key = fingerprint(cfg)
    earlier = find_earlier(key, list(rc.resume_roots)) if rc.resume else None
    if earlier is not None and earlier[1]:
        log.info("%s/%s finished before in %s: skipped (runner.resume)", cfg.method.name, cfg.model.name, earlier[0])
        return finished_result(earlier[0])
    seed_everything(rc.seed)
    layers = preflight(cfg)
    if earlier is None:
        if rc.resume:
            log.info("no earlier run of this config under %s: starting afresh", ", ".join(rc.resume_roots))
        mark_started(out_dir, key)
    else:
        out_dir = earlier[0]
    names = [cfg.method.name, *(name for name in rc.baselines if name != cfg.method.name)]
    files = {name: PER_IMAGE if name == cfg.method.name else f"per_image_{name}.csv" for name in names}
    checkpoint = Checkpoint.load(out_dir, list(files.values())) if earlier else Checkpoint()

    device = resolve_device(rc.device)
    autocast = AUTOCAST_DTYPES[rc.autocast]
    spec = DATASETS[cfg.dataset.name]
    if cfg.dataset.grid and rc.target != "label":  # each cell's class, and recorded as such
        log.warning("dataset.grid: every cell explains its own class: runner.target=label, not prediction")
        cfg = OmegaConf.merge(cfg, {"runner": {"target": "label"}})
        rc = cfg.runner

    loaded = build_model(cfg.model.name, cfg.model.weights, spec.num_classes(cfg.dataset), cfg.dataset.name, layers)
    memory_format = torch.channels_last if rc.channels_last else torch.preserve_format
    model = loaded.model.to(device, memory_format=memory_format)
    chunk = None if rc.score_batch_size == "auto" else rc.score_batch_size
    engine = build_engine(model, loaded.target_layers, loaded.preprocessing, rc.seed, chunk, autocast, memory_format)
    split = engine.split
    method = build_method(cfg.method.name, engine, **method_params(cfg))

    def explainer(name: str, method: CAMMethod) -> Explainer:
        context = MetricContext(engine, method)
        metrics = {metric: build_metric(metric, context, **params) for metric, params in cfg.metrics.items()}
        maps = MapWriter(out_dir / MAPS, checkpoint.batches) if rc.save_maps and name == cfg.method.name else None
        out = Explainer(name, method, metrics, RunWriter(out_dir, files[name], checkpoint.images), maps)
        out.load_state(checkpoint.metrics.get(name, {}))
        return out

    # the method, then the sanity baselines on the same images with the same metrics (their own instances)
    explainers = [explainer(cfg.method.name, method)]
    explainers += [explainer(name, build_method(name, engine)) for name in names[1:]]
    metrics = explainers[0].metrics

    dataset = spec.build(cfg.dataset, loaded.preprocessing)
    if cfg.dataset.grid:  # mosaics of the images the model classifies confidently (cambench/data/grid.py)
        dataset, chosen = grid_for_run(dataset, cfg.dataset, rc, model, device, memory_format)
    else:
        dataset, chosen = select_images(dataset, rc.num_images, rc.seed)
    loader = DataLoader(
        Subset(dataset, range(checkpoint.images, len(dataset))) if checkpoint.images else dataset,
        batch_size=rc.batch_size,
        collate_fn=collate,
        num_workers=rc.num_workers,
        pin_memory=device.type == "cuda",
    )
    log.info(
        "%s on %s (%s, layer %s, %s split), %s of %s on %s",
        cfg.method.name,
        cfg.model.name,
        loaded.weights,
        ", ".join(loaded.target_layers),
        split.mode,
        chosen,
        cfg.dataset.name,
        device,
    )
    if earlier is not None:
        described = f"{cfg.method.name}/{cfg.model.name} at image {checkpoint.images} of {len(dataset)}"
        log.info("resumed %s from %s", described, out_dir)

    bar = tqdm(loader, desc=f"{cfg.method.name}/{cfg.model.name}", unit="batch", disable=not rc.progress)
    bar.update(checkpoint.batches)
    split_difference = None
    grid = GridSample(GRID_IMAGES) if rc.save_grid else None
    before = checkpoint.seconds  # of the earlier processes of a resumed run
    try:
        for index, batch in enumerate(bar, checkpoint.batches):
            batch = batch.to(device, memory_format)
            engine.batch = index  # the random draws are seeded per batch
            if split_difference is None:
                split_difference = split.verify(batch.images[:1])
            targets = batch.labels if rc.target == "label" else None
            for explainer in explainers:  # the baselines explain the method's classes
                targets = explainer.step(batch, targets, device)
            checkpoint.batches, checkpoint.images = index + 1, checkpoint.images + len(batch.ids)
            checkpoint.seconds = before + time.perf_counter() - start
            checkpoint.metrics = {e.name: e.state() for e in explainers}
            checkpoint.save(out_dir)
            if grid is not None:
                grid.add(loaded.preprocessing, batch, {e.name: e.last for e in explainers})
            bar.set_postfix({k: f"{v.item():.3f}" for m in metrics.values() for k, v in m.compute().items()})
    except BaseException:
        if explainers[0].writer.rows_written:
            kept = ", ".join(str(e.writer.per_image) for e in explainers if e.writer.rows_written)
            log.error(
                "stopped after %d images; their rows are kept in %s (runner.resume=true goes on from them)",
                checkpoint.images,
                kept,
            )
        raise

    if grid is not None and grid.ids:
        grid.save(out_dir, cfg.method.name)
    summaries = {e.name: e.summary(rc.bootstrap, rc.seed) for e in explainers}
    rows = explainers[0].writer.rows()
    summary, flags = beside_baselines(summaries, cfg.method.name, metrics)
    seconds = before + time.perf_counter() - start
    for explainer in explainers[1:]:
        summaries[explainer.name].to_csv(out_dir / f"summary_{explainer.name}.csv", index=False)
    curves = [curve for e in explainers for curve in e.curves()]
    if curves:
        pd.concat(curves, ignore_index=True).to_csv(out_dir / CURVES, index=False)
    explainers[0].writer.finish(
        summary,
        OmegaConf.to_container(cfg, resolve=True),
        {
            "wall_seconds": round(seconds, 2),
            "images": chosen,
            "split": {"mode": split.mode, "layers": split.layers, "max_difference": split_difference},
            "score_chunks": engine.scorer.chunk_sizes(),
        },
    )
    append_to_table(
        Path(rc.results_table),
        summary,
        {
            "finished": pd.Timestamp.now().isoformat(timespec="seconds"),
            "model": cfg.model.name,
            "weights": loaded.weights,
            "target_layer": ",".join(loaded.target_layers),
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "images": len(rows),
            "target": rc.target,
            "device": str(device),
            "seconds": round(seconds, 1),
            "run_dir": str(out_dir),
            "baseline_flags": flags,
        },
    )
    return RunResult(rows, summary, out_dir, seconds)


@dataclass
class GridSample:
    """The first ``size`` images of a run with every explainer's maps (``runner.save_grid``): saved as the
    method's ``grid.npz`` (for the aggregator's grid of a sweep) and ``grid.png`` (the method and its
    baselines), see :mod:`cambench.analysis.plots`."""

    size: int
    pixels: list[torch.Tensor] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, preprocessing: Preprocessing, batch: Batch, maps: dict[str, torch.Tensor]) -> None:
        take = max(0, min(self.size - len(self.ids), len(batch.ids)))
        if take:
            self.pixels.append(preprocessing.to_pixels(batch.images[:take]).clamp(0, 1).float().cpu())
            self.ids += list(batch.ids[:take])
            self.labels += [str(label) for label in batch.labels[:take].tolist()]
            for name, value in maps.items():
                self.maps.setdefault(name, []).append(value[:take].float().cpu())

    def save(self, out_dir: Path, method: str) -> None:
        pixels, maps = torch.cat(self.pixels), {name: torch.cat(v) for name, v in self.maps.items()}
        save_grid_data(out_dir / GRID_FILE, method, self.ids, pixels, maps[method], self.labels)
        heatmap_grid(pixels, maps, self.ids, self.labels, out_dir / GRID_PNG)


def finished_result(folder: Path) -> RunResult:
    """The result of the run that finished in ``folder``, from its files."""
    done = load_finished(folder)
    return RunResult(done.rows().reset_index(), done.summary, folder, done.info["timings"]["wall_seconds"])


@dataclass
class Explainer:
    """A method with its own metric instances and per-image file: the run's method or a sanity baseline."""

    name: str
    method: CAMMethod
    metrics: dict[str, Metric]
    writer: RunWriter
    maps: MapWriter | None = None  # the method's maps, with runner.save_maps
    last: torch.Tensor | None = None  # the maps of the last batch (N, h, w), for the heat-map grid

    def step(self, batch: Batch, targets: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Maps and scores of one batch, timed, appended to the per-image file (and the maps to theirs);
        returns the classes explained."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out, seconds = timed(device, self.method.explain, batch.images, targets, batch.ids)
        columns = {"seconds_method": seconds}
        inputs = MetricInput.of(
            out, batch.images, batch.ids, labels=batch.labels, masks=batch.masks, distractors=batch.distractors
        )
        scores: dict[str, torch.Tensor] = {}
        for name, metric in self.metrics.items():
            values, seconds = timed(device, metric.update, inputs)
            scores |= {k: v.cpu() for k, v in values.items()}
            columns[f"seconds_{name}"] = seconds
        n = len(batch.ids)
        per_image = {k: v / n for k, v in columns.items()}
        per_image |= {f"passes_{k}": v for k, v in vars(out.passes).items()}
        per_image["peak_memory_mb"] = peak_memory_mb(device)
        self.writer.append(_rows(batch.ids, batch.labels.cpu(), out, scores, per_image))
        if self.maps is not None:
            self.maps.append(batch.ids, out.raw, out.targets)
        self.last = out.maps
        return out.targets

    def state(self) -> dict[str, dict[str, Any]]:
        """Its metrics' running state, for the checkpoint."""
        return {name: metric.state() for name, metric in self.metrics.items()}

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        for name, metric in self.metrics.items():
            if name in state:
                metric.load_state(state[name])

    def curves(self) -> list[pd.DataFrame]:
        """The metrics' mean curves in long form, one frame each: explainer, curve, x, mean (a row per point)."""
        return [
            pd.DataFrame({"explainer": self.name, "curve": name, "x": x.tolist(), "mean": y.tolist()})
            for metric in self.metrics.values()
            for name, (x, y) in metric.curves().items()
        ]

    def summary(self, resamples: int, seed: int) -> pd.DataFrame:
        """Scores (then values derived from their means), then costs: n, mean, sd, 95% interval."""
        rows = self.writer.rows()
        names = [name for m in self.metrics.values() for name in m.names]
        derived = {name: fn for m in self.metrics.values() for name, fn in m.derived.items()}
        costs = ["seconds_method", *(f"seconds_{name}" for name in self.metrics), *Passes.columns(), "peak_memory_mb"]
        parts = [summarise(rows, names, resamples, seed, derived), summarise(rows, costs, resamples, seed)]
        return pd.concat(parts, ignore_index=True)


def beside_baselines(
    summaries: dict[str, pd.DataFrame], method: str, metrics: dict[str, Metric]
) -> tuple[pd.DataFrame, str]:
    """The method's summary with each baseline's mean in a column of its own, and ``flag`` naming
    the baselines that score at or above the method (by the metric's direction) and the explainers
    that fail a sanity check (:func:`sanity_failures`); also the flags as one line
    (``fakecam: average_drop, complexity; edgecam fails: randomisation_spearman``) for the results table."""
    summary = summaries[method].copy()
    lower = set().union(*(m.lower_is_better for m in metrics.values()))
    scored = {name for m in metrics.values() for name in (*m.names, *m.derived)}
    flags = {row.metric: [] for row in summary.itertuples() if row.metric in scored}
    for name, other in summaries.items():
        if name == method:
            continue
        summary[name] = summary["metric"].map(other.set_index("metric")["mean"])
        for row in summary.itertuples():
            if row.metric in flags:
                theirs, ours = getattr(row, name), row.mean
                if (theirs <= ours) if row.metric in lower else (theirs >= ours):
                    flags[row.metric].append(name)
    failures = sanity_failures(summaries, metrics)
    label = {name: "method" if name == method else name for name in summaries}
    summary["flag"] = summary["metric"].map(
        lambda metric: " ".join(
            [
                *(f"{b} >= method" for b in flags.get(metric, [])),
                *(f"{label[name]} fails ({verdict})" for name, verdict in failures.get(metric, {}).items()),
            ]
        )
    )
    by_baseline = {b: [m for m, names in flags.items() if b in names] for b in summaries if b != method}
    failed = {label[n]: [m for m, by in failures.items() if n in by] for n in summaries}
    line = "; ".join(
        [
            *(f"{b}: {', '.join(ms)}" for b, ms in by_baseline.items() if ms),
            *(f"{n} fails: {', '.join(ms)}" for n, ms in failed.items() if ms),
        ]
    )
    return summary, line


def sanity_failures(summaries: dict[str, pd.DataFrame], metrics: dict[str, Metric]) -> dict[str, dict[str, str]]:
    """Sanity checks failed (``Metric.fails_at``): column -> explainer -> ``1.000 >= 0.9``, where the
    explainer's mean is at or past the threshold by the column's direction."""
    thresholds = {
        column: (limit, column in m.lower_is_better) for m in metrics.values() for column, limit in m.fails_at.items()
    }
    out: dict[str, dict[str, str]] = {}
    for name, summary in summaries.items():
        means = summary.set_index("metric")["mean"]
        for column, (limit, lower) in thresholds.items():
            mean = means.get(column, float("nan"))
            if (mean >= limit) if lower else (mean <= limit):
                out.setdefault(column, {})[name] = f"{mean:.3f} {'>=' if lower else '<='} {limit:g}"
    return out


def _rows(ids: list[str], labels: torch.Tensor, out, scores: dict[str, torch.Tensor], costs: dict) -> list[dict]:
    columns = {
        "id": ids,
        "label": labels.tolist(),
        "prediction": out.logits.argmax(1).cpu().tolist(),
        "target": out.targets.cpu().tolist(),
        "constant_map": out.constant.cpu().tolist(),
    }
    columns |= {name: v.tolist() for name, v in scores.items()}
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return [row | costs for row in rows]
