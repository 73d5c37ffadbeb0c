"""cambench's Hydra configs, shipped in the package as ``cambench.conf`` (read with ``pkg://cambench.conf``)."""
