"""The batched evaluation loop: model, method and metrics on one device, rows out per batch."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cambench.data.base import collate
from cambench.data.registry import DATASETS
from cambench.device import AUTOCAST_DTYPES, resolve_device
from cambench.methods import build_method
from cambench.metrics import MetricInput, Scorer, build_metric
from cambench.models.build import build_model
from cambench.models.layers import resolve_target_layer
from cambench.results.summary import summarise
from cambench.results.writer import RunWriter, append_to_table

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    rows: pd.DataFrame
    summary: pd.DataFrame
    out_dir: Path
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def run(cfg: DictConfig, out_dir: Path) -> RunResult:
    """Run one (model, method, dataset, metrics) cell; ``cfg`` is a validated config."""
    start = time.perf_counter()
    rc = cfg.runner
    seed_everything(rc.seed)
    device = resolve_device(rc.device)
    autocast = AUTOCAST_DTYPES[rc.autocast]
    spec = DATASETS[cfg.dataset.name]

    loaded = build_model(
        cfg.model.name, cfg.model.weights, spec.num_classes(cfg.dataset), cfg.dataset.name, cfg.model.target_layer
    )
    memory_format = torch.channels_last if rc.channels_last else torch.preserve_format
    model = loaded.model.to(device, memory_format=memory_format)
    method = build_method(
        cfg.method.name, model, resolve_target_layer(model, loaded.target_layer), autocast_dtype=autocast
    )
    metrics = [build_metric(name, **(params or {})) for name, params in cfg.metrics.items()]
    scorer = Scorer(model, rc.score_batch_size, autocast)

    dataset = spec.build(cfg.dataset, loaded.preprocessing)
    if rc.num_images is not None and rc.num_images < len(dataset):
        dataset = Subset(dataset, range(rc.num_images))
    loader = DataLoader(
        dataset,
        batch_size=rc.batch_size,
        collate_fn=collate,
        num_workers=rc.num_workers,
        pin_memory=device.type == "cuda",
    )
    log.info(
        "%s on %s (%s, layer %s), %d images of %s on %s",
        cfg.method.name,
        cfg.model.name,
        loaded.weights,
        loaded.target_layer,
        len(dataset),
        cfg.dataset.name,
        device,
    )

    writer = RunWriter(out_dir)
    bar = tqdm(loader, desc=f"{cfg.method.name}/{cfg.model.name}", unit="batch", disable=not rc.progress)
    try:
        for batch in bar:
            batch = batch.to(device, memory_format)
            out = method(batch.images, batch.labels if rc.target == "label" else None)
            inputs = MetricInput(batch.images, out.maps, out.targets, batch.labels, batch.masks, scorer)
            scores = {name: v.cpu() for m in metrics for name, v in m.update(inputs).items()}
            writer.append(_rows(batch.ids, batch.labels.cpu(), out.logits.argmax(1).cpu(), out.targets.cpu(), scores))
            bar.set_postfix({k: f"{v.item():.3f}" for m in metrics for k, v in m.compute().items()})
    except BaseException:
        if writer.rows_written:
            log.error("stopped after %d images; their rows are kept in %s", writer.rows_written, writer.per_image)
        raise

    rows = writer.rows()
    names = [name for m in metrics for name in m.names]
    summary = summarise(rows, names, rc.bootstrap, rc.seed)
    seconds = time.perf_counter() - start
    writer.finish(summary, OmegaConf.to_container(cfg, resolve=True), {"wall_seconds": round(seconds, 2)})
    append_to_table(
        Path(rc.results_table),
        summary,
        {
            "finished": pd.Timestamp.now().isoformat(timespec="seconds"),
            "model": cfg.model.name,
            "weights": loaded.weights,
            "target_layer": loaded.target_layer,
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "images": len(rows),
            "target": rc.target,
            "device": str(device),
            "seconds": round(seconds, 1),
            "run_dir": str(out_dir),
        },
    )
    return RunResult(rows, summary, out_dir, seconds)


def _rows(ids: list[str], labels, predictions, targets, scores: dict[str, torch.Tensor]) -> list[dict]:
    columns = {"id": ids, "label": labels.tolist(), "prediction": predictions.tolist(), "target": targets.tolist()}
    columns |= {name: v.tolist() for name, v in scores.items()}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
