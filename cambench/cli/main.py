"""``python -m cambench`` / ``cambench``: compose ``conf/``, validate, run, print the summary."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cambench.app.config import validate
from cambench.app.run import run
from cambench.cli.errors import guarded


@guarded
def run_and_print(cfg: DictConfig) -> None:
    result = run(validate(cfg), Path(HydraConfig.get().runtime.output_dir))
    print(
        f"\n{cfg.method.name} on {cfg.model.name} / {cfg.dataset.name}: {len(result.rows)} images "
        f"in {result.seconds:.1f} s\n{result.summary.to_string(index=False, float_format='%.4f')}\n"
        f"per-image rows and summary: {result.out_dir}\nresults table: {cfg.runner.results_table}"
    )


# the package's configs: conf/ of the checkout (editable install), or the copy inside an installed wheel
@hydra.main(version_base="1.3", config_path="pkg://cambench.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    if status := run_and_print(cfg):
        sys.exit(status)


if __name__ == "__main__":
    main()
