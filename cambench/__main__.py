"""``python -m cambench``: the Hydra app, :mod:`cambench.cli.main`."""

from cambench.cli.main import main

if __name__ == "__main__":
    main()
