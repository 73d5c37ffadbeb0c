"""Safe checkpoint I/O: the shipped ``shapes`` references, the user cache, local files.

Shipped references live in this folder as fp16 safetensors listed in ``manifest.json`` with
their sha256 and held-out accuracy; a reference for an architecture that ships none is trained
once with the reference recipe and cached under the user cache directory with the same record.
Every reference is hash-checked before it is loaded. Local checkpoints load through safetensors
or ``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cambench.errors import CambenchError

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "checkpoints"
MANIFEST = "manifest.json"


class CheckpointError(CambenchError):
    pass


def cache_dir() -> Path:
    """``$CAMBENCH_CACHE``, else ``$XDG_CACHE_HOME/cambench``, else ``~/.cache/cambench``."""
    if env := os.environ.get("CAMBENCH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cambench"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def find_reference(arch: str) -> tuple[Path, dict] | None:
    """The shipped, else cached, ``shapes`` reference of ``arch`` and its record, if any."""
    for folder in (SHIPPED_DIR, cache_dir() / "checkpoints"):
        if arch in (manifest := read_manifest(folder)):
            return folder / manifest[arch]["file"], manifest[arch]
    return None


def load_reference(arch: str, model: nn.Module) -> dict:
    """Load the reference checkpoint of ``arch`` into ``model`` after checking its hash."""
    found = find_reference(arch)
    if found is None:
        raise CheckpointError(f"no shapes reference checkpoint for {arch}")
    path, record = found
    if not path.exists():
        raise CheckpointError(f"reference checkpoint {path} is listed in its manifest but missing; reinstall cambench")
    if (digest := sha256(path)) != record["sha256"]:
        raise CheckpointError(
            f"reference checkpoint {path} is corrupt: sha256 {digest} != {record['sha256']}; "
            "reinstall cambench (shipped) or delete the file to retrain it (cached)"
        )
    load_into(model, path)
    return record


def save_reference(arch: str, model: nn.Module, record: dict, folder: Path) -> Path:
    """Write ``model`` as fp16 safetensors into ``folder`` and add it to the folder's manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{arch}_shapes.safetensors"
    state = {
        k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    save_file(state, path)
    manifest = read_manifest(folder)
    manifest[arch] = {"file": path.name, "sha256": sha256(path), **record}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (loaded with ``weights_only=True``)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot load {path} safely ({err}); save a plain state dict (torch.save(model.state_dict())) "
            "or convert it to safetensors"
        ) from None
    for key in ("state_dict", "model"):  # common training-loop wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(model: nn.Module, path: Path) -> None:
    """Load a checkpoint into ``model``; a size or class-count mismatch is a clear error."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        details = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:3]]
        if missing:
            details.append(f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected keys {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({'; '.join(details)}). Check model.name and that "
            "the dataset's class count matches the checkpoint's classifier"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
