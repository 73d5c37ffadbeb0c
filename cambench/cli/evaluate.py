"""``python -m cambench.evaluate MAPS_FILE_OR_RUN_DIR [hydra overrides...]``: score saved or imported
maps with the metrics, without the method that made them.

A thin entry to the normal app: it runs ``python -m cambench method=saved method.path=...`` with
the overrides given, so every metric, sanity baseline row and output file works as in any run.
The maps are an ``.npz`` of ``ids``, ``maps`` (N, H, W) and optional ``targets``, or the folder of
a run saved with ``runner.save_maps=true`` (the format: :mod:`cambench.io.maps`). Give the
model, dataset, ``runner.num_images`` and ``runner.seed`` the maps were made for. Unless the
overrides choose the metrics, it runs ``metrics=[deletion_insertion,confidence]``: the default
metrics less ADCC, whose coherency needs the map of a new input.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cambench.cli.main import main as cambench

USAGE = (
    "usage: python -m cambench.evaluate MAPS_FILE_OR_RUN_DIR [hydra overrides...]\n"
    "MAPS_FILE_OR_RUN_DIR: an .npz of ids, maps (N, H, W) and optional targets, or a run saved with "
    "runner.save_maps=true"
)
METRICS = "metrics=[deletion_insertion,confidence]"


def arguments(argv: list[str]) -> list[str]:
    """The app's arguments for ``argv`` (the maps, then overrides); SystemExit with the usage when no maps are given."""
    if not argv or argv[0].startswith("-") or ("=" in argv[0] and not Path(argv[0]).exists()):  # an override
        raise SystemExit(USAGE)
    path, overrides = str(Path(argv[0]).resolve()), argv[1:]
    chosen = any(arg.split("=", 1)[0].lstrip("+~") == "metrics" for arg in overrides)
    quoted = "'" + path.replace("'", "\\'") + "'"  # spaces, commas and "=" too, in Hydra's override grammar
    return ["method=saved", f"method.path={quoted}", *([] if chosen else [METRICS]), *overrides]


def main() -> None:
    sys.argv = [sys.argv[0], *arguments(sys.argv[1:])]
    cambench()


if __name__ == "__main__":
    main()
