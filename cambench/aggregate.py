"""``python -m cambench.aggregate``: the command of :mod:`cambench.cli.aggregate`."""

from cambench.cli.aggregate import main

if __name__ == "__main__":
    raise SystemExit(main())
