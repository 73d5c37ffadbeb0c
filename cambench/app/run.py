"""One run of the Hydra app, in four stages over the Python API's pieces: config -> objects -> the loop.

- :func:`prepare`: the resume lookup (``runner.resume``: a finished run of the same config is returned
  as it is, an unfinished one goes on in its folder), seeding, and :func:`preflight`, which checks
  before anything is downloaded or trained what can be checked on a weightless skeleton (target
  layers, whether the method can use the model, what the metrics need);
- :func:`build`: the model, its engine (:func:`cambench.models.engine.build_engine`), the method and
  sanity baselines as explainers with their metrics, the images (a seeded, label-stratified subset,
  or grid mosaics) and their loader;
- :func:`evaluate`: :func:`cambench.evaluation.session.run_evaluation` with the run's files (per-image
  rows, a checkpoint after every batch, saved maps) and the heat-map grid;
- :func:`finish`: the summaries beside the baselines with their verdicts
  (:mod:`cambench.analysis.verdicts`), ``run.json`` and a row of the shared results table.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from cambench.analysis.runs import load_finished
from cambench.analysis.verdicts import beside_baselines
from cambench.app.config import ConfigError, method_params, target_layers
from cambench.app.resume import find_earlier, fingerprint, mark_started
from cambench.data.base import collate
from cambench.data.grid import check_grid, grid_for_run
from cambench.data.registry import DATASETS
from cambench.data.sampling import select_images
from cambench.device import AUTOCAST_DTYPES, resolve_device
from cambench.evaluation.explainer import Explainer
from cambench.evaluation.observers import GridSample
from cambench.evaluation.session import Files, Outcome, run_evaluation
from cambench.io.checkpoint import Checkpoint
from cambench.io.writer import CURVES, PER_IMAGE, append_to_table, write_run_info
from cambench.methods import all_methods, build_method
from cambench.metrics import METRICS, MetricContext, build_metric, missing_capabilities
from cambench.models.build import LoadedModel, build_model, check_target_layers, skeleton
from cambench.models.engine import Engine, build_engine
from cambench.models.split import split_model

log = logging.getLogger(__name__)
GRID_IMAGES = 8  # images in a run's heat-map grid (runner.save_grid)
RESUME_HINT = "runner.resume=true goes on from them"


@dataclass
class RunResult:
    rows: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path
    seconds: float


@dataclass
class Plan:
    """What :func:`prepare` settled: the config, the run's folder, its target layers and where it starts."""

    cfg: DictConfig
    out_dir: Path
    layers: list[str]
    files: dict[str, str]  # explainer -> its per-image file
    checkpoint: Checkpoint
    resumed: bool


@dataclass
class Built:
    """What :func:`build` made from a plan."""

    loaded: LoadedModel
    engine: Engine
    explainers: list[Explainer]
    images: Dataset
    chosen: str  # the images, in words
    device: torch.device


def run(cfg: DictConfig, out_dir: Path) -> RunResult:
    """Run one (model, method, dataset, metrics) cell; ``cfg`` is a validated config."""
    plan = prepare(cfg, out_dir)
    if isinstance(plan, RunResult):
        return plan
    built = build(plan)
    return finish(plan, built, evaluate(plan, built))


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


def prepare(cfg: DictConfig, out_dir: Path) -> Plan | RunResult:
    """Resume lookup, seeding and preflight; a finished earlier run of the same config is returned as it is."""
    rc = cfg.runner
    key = fingerprint(cfg)
    earlier = find_earlier(key, list(rc.resume_roots)) if rc.resume else None
    if earlier is not None and earlier[1]:
        log.info("%s/%s finished before in %s: skipped (runner.resume)", cfg.method.name, cfg.model.name, earlier[0])
        return finished_result(earlier[0])
    seed_everything(rc.seed)
    layers = preflight(cfg)
    if cfg.dataset.grid and rc.target != "label":  # each cell's class, and recorded as such
        log.warning("dataset.grid: every cell explains its own class: runner.target=label, not prediction")
        cfg = OmegaConf.merge(cfg, {"runner": {"target": "label"}})
    if earlier is None:
        if rc.resume:
            log.info("no earlier run of this config under %s: starting afresh", ", ".join(rc.resume_roots))
        mark_started(out_dir, key)
    else:
        out_dir = earlier[0]
    names = [cfg.method.name, *(name for name in rc.baselines if name != cfg.method.name)]
    files = {name: PER_IMAGE if name == cfg.method.name else f"per_image_{name}.csv" for name in names}
    checkpoint = Checkpoint.load(out_dir, list(files.values())) if earlier else Checkpoint()
    return Plan(cfg, out_dir, layers, files, checkpoint, earlier is not None)


def build(plan: Plan) -> Built:
    """The model and its engine, the explainers (method, then baselines) with their metrics, and the images."""
    cfg, rc = plan.cfg, plan.cfg.runner
    device = resolve_device(rc.device)
    autocast = AUTOCAST_DTYPES[rc.autocast]
    spec = DATASETS[cfg.dataset.name]
    loaded = build_model(
        cfg.model.name, cfg.model.weights, spec.num_classes(cfg.dataset), cfg.dataset.name, plan.layers
    )
    memory_format = torch.channels_last if rc.channels_last else torch.preserve_format
    model = loaded.model.to(device, memory_format=memory_format)
    chunk = None if rc.score_batch_size == "auto" else rc.score_batch_size
    engine = build_engine(model, loaded.target_layers, loaded.preprocessing, rc.seed, chunk, autocast, memory_format)

    def explainer(name: str, params: dict) -> Explainer:
        method = build_method(name, engine, **params)
        context = MetricContext(engine, method)
        return Explainer(name, method, {m: build_metric(m, context, **p) for m, p in cfg.metrics.items()})

    explainers = [explainer(cfg.method.name, method_params(cfg))]
    explainers += [explainer(name, {}) for name in plan.files if name != cfg.method.name]

    dataset = spec.build(cfg.dataset, loaded.preprocessing)
    if cfg.dataset.grid:  # mosaics of the images the model classifies confidently (cambench/data/grid.py)
        dataset, chosen = grid_for_run(dataset, cfg.dataset, rc, model, device, memory_format)
    else:
        dataset, chosen = select_images(dataset, rc.num_images, rc.seed)
    return Built(loaded, engine, explainers, dataset, chosen, device)


def evaluate(plan: Plan, built: Built) -> Outcome:
    """The evaluation loop over the images not yet done, writing the run's files as it goes."""
    cfg, rc, checkpoint = plan.cfg, plan.cfg.runner, plan.checkpoint
    dataset = built.images
    log.info(
        "%s on %s (%s, layer %s, %s split), %s of %s on %s",
        cfg.method.name,
        cfg.model.name,
        built.loaded.weights,
        ", ".join(built.loaded.target_layers),
        built.engine.split.mode,
        built.chosen,
        cfg.dataset.name,
        built.device,
    )
    if plan.resumed:
        described = f"{cfg.method.name}/{cfg.model.name} at image {checkpoint.images} of {len(dataset)}"
        log.info("resumed %s from %s", described, plan.out_dir)
    loader = DataLoader(
        Subset(dataset, range(checkpoint.images, len(dataset))) if checkpoint.images else dataset,
        batch_size=rc.batch_size,
        collate_fn=collate,
        num_workers=rc.num_workers,
        pin_memory=built.device.type == "cuda",
    )
    grid = GridSample(GRID_IMAGES, built.loaded.preprocessing) if rc.save_grid else None
    outcome = run_evaluation(
        built.explainers,
        loader,
        built.device,
        total_batches=checkpoint.batches + len(loader),
        total_images=len(dataset),
        target=rc.target,
        memory_format=torch.channels_last if rc.channels_last else torch.preserve_format,
        files=Files(plan.out_dir, plan.files, checkpoint, rc.save_maps, RESUME_HINT),
        grid=grid,
        split=built.engine.split,
        progress=rc.progress,
        description=f"{cfg.method.name}/{cfg.model.name}",
        bootstrap=rc.bootstrap,
        seed=rc.seed,
    )
    if grid is not None:
        grid.save(plan.out_dir, cfg.method.name)
    return outcome


def finish(plan: Plan, built: Built, outcome: Outcome) -> RunResult:
    """The summaries beside the baselines, the run's record and its row of the results table."""
    cfg, rc, method = plan.cfg, plan.cfg.runner, plan.cfg.method.name
    metrics = built.explainers[0].metrics
    summary, flags = beside_baselines(outcome.summaries, method, metrics)
    for name, baseline_summary in outcome.summaries.items():
        if name != method:
            baseline_summary.to_csv(plan.out_dir / f"summary_{name}.csv", index=False)
    if outcome.curves is not None:
        outcome.curves.to_csv(plan.out_dir / CURVES, index=False)
    split = built.engine.split
    write_run_info(
        plan.out_dir,
        summary,
        OmegaConf.to_container(cfg, resolve=True),
        {
            "wall_seconds": round(outcome.seconds, 2),
            "images": built.chosen,
            "split": {"mode": split.mode, "layers": split.layers, "max_difference": outcome.split_difference},
            "score_chunks": built.engine.scorer.chunk_sizes(),
            "peak_memory": outcome.memory,
        },
    )
    rows = outcome.rows[method]
    append_to_table(
        Path(rc.results_table),
        summary,
        {
            "finished": pd.Timestamp.now().isoformat(timespec="seconds"),
            "model": cfg.model.name,
            "weights": built.loaded.weights,
            "target_layer": ",".join(built.loaded.target_layers),
            "method": method,
            "dataset": cfg.dataset.name,
            "images": len(rows),
            "target": rc.target,
            "device": str(built.device),
            "seconds": round(outcome.seconds, 1),
            "run_dir": str(plan.out_dir),
            "baseline_flags": flags,
        },
    )
    return RunResult(rows, summary, plan.out_dir, outcome.seconds)


def finished_result(folder: Path) -> RunResult:
    """The result of the run that finished in ``folder``, from its files."""
    done = load_finished(folder)
    return RunResult(done.rows().reset_index(), done.summary, folder, done.info["timings"]["wall_seconds"])
