"""Shared helpers of the test suite."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from cambench.data.preprocessing import Preprocessing
from cambench.methods import CAMMethod, build_method
from cambench.models.engine import Engine, build_engine

TEST_CHUNK = 16  # the scorer's rows per chunk in tests: fixed, never probed by timing


def make_engine(
    model: nn.Module,
    layers: str | Sequence[str],
    batch_size: int | None = TEST_CHUNK,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
) -> Engine:
    """The engine a run would build for ``model`` split at ``layers`` (fp32). Chunks of ``TEST_CHUNK`` rows
    unless given: a probed chunk size (``batch_size=None``) depends on timing, and results computed in other
    chunk sizes may differ in the last bits, so no test compares probed results exactly."""
    return build_engine(model, layers, preprocessing, seed, batch_size)


def make_method(name: str, model: nn.Module, layers: str | Sequence[str], **params) -> CAMMethod:
    """Method ``name`` on ``model`` at ``layers``; ``batch_size``, ``seed`` and ``preprocessing`` go to the engine."""
    engine_args = {k: params.pop(k) for k in ("batch_size", "seed", "preprocessing") if k in params}
    return build_method(name, make_engine(model, layers, **engine_args), **params)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
