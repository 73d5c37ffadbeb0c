"""Device and mixed precision: resolved once from the runner config, used by methods and metrics."""

from __future__ import annotations

import torch

from cambench.errors import CambenchError

AUTOCAST_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(CambenchError):
    pass


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"runner.device={name} but CUDA is not available; use runner.device=cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None)
