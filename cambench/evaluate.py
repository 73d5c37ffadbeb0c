"""``python -m cambench.evaluate``: the command of :mod:`cambench.cli.evaluate`."""

from cambench.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
