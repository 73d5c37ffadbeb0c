"""``python -m cambench.report``: the command of :mod:`cambench.cli.report`."""

from cambench.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
