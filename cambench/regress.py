"""``python -m cambench.regress``: the command of :mod:`cambench.cli.regress`."""

from cambench.cli.regress import main

if __name__ == "__main__":
    raise SystemExit(main())
