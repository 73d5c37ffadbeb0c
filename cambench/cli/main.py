"""``python -m cambench`` / ``cambench``: compose ``conf/``, validate, run, print the summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cambench.app.config import ConfigError, validate
from cambench.app.run import run
from cambench.data.base import DatasetError
from cambench.device import DeviceError
from cambench.methods import MethodError
from cambench.metrics import MetricError
from cambench.models.build import ModelError
from cambench.models.checkpoints import CheckpointError
from cambench.models.layers import TargetLayerError

log = logging.getLogger("cambench")
# the package's configs: conf/ of the checkout (editable install), or the copy inside an installed wheel
USER_ERRORS = (
    ConfigError,
    DatasetError,
    DeviceError,
    MethodError,
    MetricError,
    ModelError,
    CheckpointError,
    TargetLayerError,
)


@hydra.main(version_base="1.3", config_path="pkg://cambench.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        result = run(validate(cfg), Path(HydraConfig.get().runtime.output_dir))
    except USER_ERRORS as err:
        log.error("%s", err)
        sys.exit(2)
    print(
        f"\n{cfg.method.name} on {cfg.model.name} / {cfg.dataset.name}: {len(result.rows)} images "
        f"in {result.seconds:.1f} s\n{result.summary.to_string(index=False, float_format='%.4f')}\n"
        f"per-image rows and summary: {result.out_dir}\nresults table: {cfg.runner.results_table}"
    )


if __name__ == "__main__":
    main()
