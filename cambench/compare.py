"""``python -m cambench.compare``: the command of :mod:`cambench.cli.compare`."""

from cambench.cli.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
