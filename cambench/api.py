"""The Python API: a method by name, the scores of any maps, and the benchmark loop of the command line.

    import cambench
    cam = cambench.method("gradcam", model, target_layer="layer4")
    maps = cam(images).maps
    scores = cambench.score(model, images, maps, metrics=["deletion_insertion"])

- :func:`method` builds a CAM method on any classifier (``nn.Module``; torch.fx splits it at the target
  layer, forward hooks where it cannot be traced); calling it returns a
  :class:`~cambench.methods.CAMOutput`: maps at input size in [0, 1], the raw maps, the logits, the
  explained classes and the declared passes. The classes are importable too
  (``from cambench.methods import GradCAMPlusPlus; GradCAMPlusPlus(model, "layer4")``).
- :func:`score` scores maps from any tool, per image: the metrics that only read maps need no model;
  the metrics that need maps of new inputs or classes take the ``explainer`` that made them, a cambench
  method or any callable ``(images, targets) -> maps``.
- :func:`benchmark` is the loop of ``python -m cambench``: methods and sanity baselines over batches of
  any data, every metric, the baselines' flags and sanity verdicts and the bootstrap summary; with
  ``out_dir`` it writes per-image files and a checkpoint as it goes, and goes on from them when called
  again.

Images are model input (normalised as the model expects); ``preprocessing`` says how, for the metrics
that work in pixel space (ImageNet's mean and std by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from cambench import params
from cambench.analysis.verdicts import beside_baselines
from cambench.data.base import Batch, Sample, collate
from cambench.data.preprocessing import Preprocessing
from cambench.data.registry import DATASETS
from cambench.errors import CambenchError
from cambench.evaluation.explainer import Explainer
from cambench.evaluation.session import Files, run_evaluation
from cambench.io.checkpoint import Checkpoint
from cambench.io.writer import CURVES, SUMMARY, replaced
from cambench.methods import CAMMethod, MethodError, build_method, method_class
from cambench.methods.base import finalise
from cambench.methods.external import FunctionMethod, as_maps
from cambench.metrics import CAPABILITIES, Metric, MetricContext, MetricError, MetricInput, build_metric, metric_class
from cambench.models.build import build_model
from cambench.models.engine import Engine, build_engine
from cambench.models.layers import family, layer_paths

SHAPES_CLASSES, IMAGENET_CLASSES = 8, 1000
Layers = str | nn.Module | Sequence[str | nn.Module] | None
Metrics = Sequence[str] | Mapping[str, Mapping[str, Any]]
STARTED = "benchmark.json"  # what a benchmark folder holds, to go on only with the same settings


def load_model(name: str = "resnet18", weights: str = "reference", num_classes: int | None = None) -> nn.Module:
    """Torchvision classifier ``name`` in eval mode with ``weights``: ``reference`` (the project's checkpoint
    trained on the ``shapes`` dataset, 8 classes, shipped for resnet18 and mobilenet_v3_small and trained
    once and cached for others), ``random``, a checkpoint path, or a torchvision weights name (``DEFAULT``,
    ``IMAGENET1K_V1``, ...; downloaded by torchvision). ``num_classes``: the classes of a random or
    checkpoint model (default: 8 for ``reference``, else 1000). Any ``nn.Module`` classifier works with the
    rest of the API; this is a shortcut to the ones the command line uses. Its parameters keep
    ``requires_grad`` (the command line freezes them), so other tools' gradients work on it too."""
    classes = num_classes or (SHAPES_CLASSES if weights == "reference" else IMAGENET_CLASSES)
    loaded = build_model(name, weights, classes, "shapes" if weights == "reference" else "imagenet")
    return loaded.model.requires_grad_(True)


def load_dataset(name: str = "shapes", preprocessing: Preprocessing | None = None, **options: Any) -> Dataset:
    """Dataset ``name`` (``shapes``, ``imagenet``, ``folder``, ``imagenette``) with the options of its config
    (``conf/dataset/<name>.yaml``: ``root=...``, ``split=...``); items are samples with ``image`` (model
    input), ``label``, ``mask`` (or None), ``id``. Image files go through ``preprocessing`` (ImageNet's
    resize, crop and normalisation by default); ``shapes`` renders model-ready 224 px scenes with masks."""
    if name not in DATASETS:
        raise CambenchError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    config = params.validate_schema(spec.schema, {"name": name, **options}, f"dataset {name}", CambenchError)
    return spec.build(config, preprocessing or Preprocessing())


def method(name: str, model: nn.Module, target_layer: Layers = None, **params: Any) -> CAMMethod:
    """CAM method ``name`` (``gradcam``, ``scorecam``, ... see ``cambench.methods.METHODS``) on ``model`` at
    ``target_layer`` (a dotted module path, the module, a list of them, or None: the model's default), with
    its hyper-parameters ``params`` (checked here: a wrong name, type or value is a one-line
    :class:`~cambench.methods.MethodError`). Engine options as keywords: ``preprocessing``, ``seed``,
    ``score_batch_size``, ``autocast``. Call it on images: ``method(images, targets=None)``."""
    return build_method(name, model, target_layer, **params)


def _named(items: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: params}`` of names (no parameters) or of a mapping."""
    if isinstance(items, Mapping):
        return {name: dict(values or {}) for name, values in items.items()}
    return {name: {} for name in items}


def _metric_specs(metrics: Metrics, extra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: params}`` from names or a mapping, with ``extra`` (``deletion_insertion={"steps": 50}``) merged in."""
    specs = _named(metrics)
    for name, values in extra.items():
        if name not in specs:
            raise MetricError(
                f"parameters for metric {name!r}, which is not among the metrics ({', '.join(specs) or 'none'}): "
                f"add it to metrics= or drop {name}="
            )
        if not isinstance(values, Mapping):
            raise MetricError(f"{name}= takes a dict of its parameters, e.g. {name}={{...}}, got {values!r}")
        specs[name] |= dict(values)
    for name in specs:
        metric_class(name)
    if not specs:
        raise MetricError("no metrics given: name at least one, e.g. metrics=['deletion_insertion']")
    return specs


def _missing(metrics: dict[str, type[Metric]], given: set[str], how: Mapping[str, str]) -> None:
    """MetricError naming each metric's unmet requirement and how to meet it."""
    problems = [
        f"metric {name} needs {CAPABILITIES[need]}: {how.get(need, 'not available here')}"
        for name, cls in metrics.items()
        for need in sorted(cls.requires - given)
    ]
    if problems:
        raise MetricError("; ".join(problems))


def _explainer(explainer: CAMMethod | Callable | None, engine: Engine | None) -> CAMMethod | None:
    if explainer is None or isinstance(explainer, CAMMethod):
        return explainer
    if engine is None:
        raise MetricError("an explainer that is a callable needs the model: give model=")
    return FunctionMethod(explainer, engine)


def score(
    model: nn.Module | None,
    images: Tensor,
    maps: Tensor | np.ndarray,
    targets: Tensor | Sequence[int] | int | None = None,
    metrics: Metrics = ("deletion_insertion", "adcc"),
    explainer: CAMMethod | Callable[[Tensor, Tensor], Any] | None = None,
    masks: Tensor | np.ndarray | None = None,
    *,
    ids: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    batch_size: int = 16,
    score_batch_size: int | None = None,
    **metric_params: Mapping[str, Any],
) -> pd.DataFrame:
    """Per-image scores of ``maps`` (N, h, w) of ``images`` (N, C, H, W, model input) for ``targets`` (default:
    the model's predictions), one row per image (index: ``ids``, default "0", "1", ...), a column per score.

    ``maps`` may come from any tool, as a tensor or a numpy array at any resolution: they are normalised as a
    method's raw map (ReLU, min-max, bilinear resize to the input size, min-max again). ``metrics``: names,
    or ``{name: params}``; a metric's parameters also as ``name={...}`` keywords. Map-only metrics need no
    model (``model=None``); ``masks`` (N, H, W) bool give the localisation metrics their ground truth; the
    metrics that need maps of new inputs or classes call ``explainer``: a cambench method or any callable
    ``(images, targets) -> maps``. The images go through the metrics ``batch_size`` at a time."""
    specs = _metric_specs(metrics, metric_params)
    classes = {name: metric_class(name) for name in specs}
    count = len(images)
    maps = as_maps(maps, count, images.device)
    if not maps.isfinite().all():
        ids_list = list(ids) if ids is not None else [str(i) for i in range(count)]
        bad = [ids_list[i] for i in (~maps.flatten(1).isfinite().all(1)).nonzero()[:, 0].tolist()]
        raise MetricError(
            f"{len(bad)} maps hold NaN or inf (images {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}): "
            "replace them (torch.nan_to_num) or leave those images out"
        )
    ids = [str(i) for i in range(count)] if ids is None else [str(i) for i in ids]
    if len(ids) != count:
        raise MetricError(f"{len(ids)} ids for {count} images: give one id per image")
    given = {"model"} if model is not None else set()
    given |= {"new_maps"} if explainer is not None else set()
    given |= {"masks"} if masks is not None else set()
    how = {
        "model": "give model=",
        "new_maps": "give explainer= (a cambench method or a callable (images, targets) -> maps)",
        "masks": "give masks= (N, H, W) bool",
    }
    _missing(classes, given, how)
    engine = None
    if isinstance(explainer, CAMMethod):
        engine = explainer.engine
    elif model is not None:
        engine = build_engine(model, [], preprocessing, seed, score_batch_size)
    if model is not None:
        images = images.to(next(iter(model.parameters()), torch.empty(0)).device)
    context = MetricContext(engine, _explainer(explainer, engine)) if engine is not None else None
    instances = {name: build_metric(name, context, **params) for name, params in specs.items()}
    mask_tensor = (
        None if masks is None else torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
    )
    out: dict[str, list[Tensor]] = {}
    given_targets = None if targets is None else torch.as_tensor(targets).long().expand(count)
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        chunk = images[rows]
        logits = None
        if engine is not None:
            with torch.no_grad():
                logits = engine.scorer.logits((chunk,)).float()
        chunk_targets = given_targets[rows].to(chunk.device) if given_targets is not None else None
        if chunk_targets is None:
            chunk_targets = logits.argmax(1) if logits is not None else torch.zeros(len(chunk), dtype=torch.long)
        inputs = MetricInput(
            chunk,
            finalise(maps[rows].to(chunk.device), tuple(chunk.shape[-2:])),
            chunk_targets,
            logits,
            ids[rows],
            masks=None if mask_tensor is None else mask_tensor[rows].to(chunk.device).bool(),
        )
        if logits is not None or given_targets is not None:  # without either there is no class to show
            out.setdefault("target", []).append(chunk_targets.cpu())
        for metric in instances.values():
            for column, values in metric.update(inputs).items():
                out.setdefault(column, []).append(values.detach().cpu())
    columns = {column: torch.cat(values) for column, values in out.items()}
    frame = pd.DataFrame(
        {k: (v.double() if v.is_floating_point() else v).numpy() for k, v in columns.items()}, index=ids
    )
    frame.index.name = "id"
    return frame


class BenchmarkResult(NamedTuple):
    rows: pd.DataFrame  # one row per (method or baseline, image): method, id, label, prediction, target, scores, costs
    summary: pd.DataFrame  # per method and metric: n, mean, sd, 95% interval, each baseline's mean, flag


def _batches(data: Dataset | Iterable, batch_size: int, skip: int) -> tuple[Iterable[Batch], int | None, int | None]:
    """Batches of ``data`` with ids, the first ``skip`` images left out (a resumed benchmark); the batch and image
    counts where they are known."""
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise CambenchError("a torch Dataset given as data needs a length (a map-style dataset)")
        indices = range(skip, len(data))
        loader = DataLoader(Subset(data, indices), batch_size=batch_size, collate_fn=_collate(indices))
        return loader, len(loader), len(data)
    return _iterated(data, skip), None, None


def _collate(indices: Sequence[int]) -> Callable[[list], Batch]:
    position = iter(indices)

    def collate_items(items: list) -> Batch:
        samples = [_sample(item, str(next(position))) for item in items]
        return collate(samples)

    return collate_items


def _sample(item: Any, default_id: str) -> Sample:
    """A dataset item as a :class:`Sample`: a Sample, or (image, label[, mask])."""
    if isinstance(item, Sample):
        return item
    if not isinstance(item, tuple | list) or len(item) not in (2, 3):
        raise CambenchError(f"a dataset item must be (image, label) or (image, label, mask), got {type(item).__name__}")
    image, label, *mask = item
    return Sample(torch.as_tensor(image), int(label), torch.as_tensor(mask[0]).bool() if mask else None, default_id)


def _iterated(batches: Iterable, skip: int) -> Iterable[Batch]:
    """(images, labels[, masks]) batches as :class:`Batch` with running ids, the first ``skip`` images left out."""
    seen = 0
    for item in batches:
        if isinstance(item, Batch):
            batch = item
        else:
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise CambenchError(
                    f"each batch must be (images, labels) or (images, labels, masks), got {type(item).__name__}"
                )
            images, labels, *masks = item
            ids = [str(seen + i) for i in range(len(images))]
            masks = torch.as_tensor(masks[0]).bool() if masks else None
            batch = Batch(torch.as_tensor(images), torch.as_tensor(labels).long(), masks, ids)
        seen += len(batch.ids)
        if seen > skip:
            if seen - len(batch.ids) < skip:
                raise CambenchError("a resumed benchmark must see the same batches: the checkpoint ends mid-batch")
            yield batch


def _with_masks(batches: Iterable[Batch], metrics: list[str]) -> Iterator[Batch]:
    for batch in batches:
        if batch.masks is None:
            raise MetricError(
                f"{', '.join(metrics)} need ground-truth masks: give (images, labels, masks) batches or dataset items"
            )
        yield batch


def _engines(model: nn.Module, names: Sequence[str], target_layer: Layers, options: dict) -> dict[str, Engine]:
    """An engine per method, shared by the methods that use the same target layers."""
    engines: dict[tuple, Engine] = {}
    out = {}
    for name in names:
        layers = target_layer if target_layer is not None else method_class(name).default_layers(family(model), model)
        key = tuple(layer_paths(model, layers))
        if key not in engines:
            engines[key] = build_engine(model, list(key), **options)
        out[name] = engines[key]
    return out


def benchmark(
    model: nn.Module,
    data: Dataset | Iterable,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradcam",),
    metrics: Metrics = ("deletion_insertion", "adcc"),
    target_layer: Layers = None,
    baselines: Sequence[str] = ("fakecam",),
    out_dir: str | Path | None = None,
    *,
    target: str = "prediction",
    batch_size: int = 16,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    score_batch_size: int | None = None,
    bootstrap: int = 1000,
    progress: bool = True,
) -> BenchmarkResult:
    """Every method (names, or ``{name: params}``) and sanity baseline on every image of ``data`` (a torch
    Dataset of (image, label[, mask]) items, or any iterable of (images, labels[, masks]) batches; images
    are model input), scored by every metric: the loop of ``python -m cambench``. The baselines explain
    the classes the first method explains (``target``: ``prediction`` or ``label``).

    Returns the per-image rows (a ``method`` column tells the explainers apart) and the summary: per
    method and metric the mean, sd and 95% bootstrap interval, each baseline's mean beside it and the
    ``flag`` column (a baseline at least as good; a failed sanity check). With ``out_dir`` the rows go to
    ``per_image_<name>.csv`` files as the batches finish, with a checkpoint after each; calling again with
    the same settings and data goes on after the last finished batch (a finished one is read back)."""
    if isinstance(methods, str) or isinstance(baselines, str):
        raise CambenchError("methods and baselines are lists of names: methods=['gradcam'], baselines=['fakecam']")
    chosen = _named(methods)
    if not chosen:
        raise MethodError("no methods given: name at least one, e.g. methods=['gradcam']")
    specs = _metric_specs(metrics, {})
    names = [*chosen, *(b for b in baselines if b not in chosen)]
    device = next(iter(model.parameters()), torch.empty(0)).device
    options = {"preprocessing": preprocessing, "seed": seed, "score_batch_size": score_batch_size}
    engines = _engines(model, names[: len(chosen)], target_layer, options)
    first = engines[names[0]]
    explainers = []
    for name in names:
        engine = engines.get(name, first)
        built = build_method(name, engine, **chosen.get(name, {}))
        context = MetricContext(engine, built)
        _missing({m: metric_class(m) for m in specs}, built.capabilities() | {"model", "masks"}, {})
        explainers.append(Explainer(name, built, {m: build_metric(m, context, **p) for m, p in specs.items()}))
    files, skip = None, 0
    if out_dir is not None:
        settings = {"methods": chosen, "baselines": names[len(chosen) :], "metrics": specs, "target": target}
        files = _files(Path(out_dir), names, settings | {"seed": seed, "model": type(model).__name__})
        skip = files.checkpoint.images
    batches, total_batches, total_images = _batches(data, batch_size, skip)
    needs_masks = [m for m in specs if "masks" in metric_class(m).requires]
    if needs_masks:
        batches = _with_masks(batches, needs_masks)
    outcome = run_evaluation(
        explainers,
        batches,
        device,
        total_batches=total_batches or 0,
        total_images=total_images or 0,
        target=target,
        files=files,
        split=first.split,
        progress=progress,
        description=", ".join(chosen),
        bootstrap=bootstrap,
        seed=seed,
    )
    if all(len(frame) == 0 for frame in outcome.rows.values()):
        raise CambenchError("data gave no images: give a non-empty dataset or iterable of batches")
    rows = pd.concat([frame.assign(method=name) for name, frame in outcome.rows.items()], ignore_index=True)
    rows = rows[["method", *(c for c in rows.columns if c != "method")]]
    summaries = []
    for name in chosen:
        others = {n: s for n, s in outcome.summaries.items() if n == name or n not in chosen}
        summary, _ = beside_baselines(others, name, explainers[0].metrics)
        summaries.append(summary.assign(method=name))
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["method", *(c for c in summary.columns if c != "method")]]
    if files is not None:
        with replaced(files.folder / SUMMARY) as partial:
            summary.to_csv(partial, index=False)
        if outcome.curves is not None:
            outcome.curves.to_csv(files.folder / CURVES, index=False)
    return BenchmarkResult(rows, summary)


def _files(folder: Path, names: list[str], settings: dict[str, Any]) -> Files:
    """The benchmark's files in ``folder``; the checkpoint to go on from when it holds the same benchmark
    (the same ``settings``)."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    per_image = {name: f"per_image_{name}.csv" for name in names}
    record = folder / STARTED
    checkpoint = Checkpoint()
    if record.exists():
        held = json.loads(record.read_text())
        if held.get("fingerprint") != key:
            raise CambenchError(
                f"{folder} holds another benchmark ({held.get('settings')}): give another out_dir, or delete it "
                "to start over"
            )
        checkpoint = Checkpoint.load(folder, list(per_image.values()))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"fingerprint": key, "settings": settings}, default=str, indent=2) + "\n")
    hint = "call cambench.benchmark again with the same out_dir to go on"
    return Files(folder, per_image, checkpoint, False, hint)
