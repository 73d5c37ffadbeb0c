"""The README's method table, generated from the method registry and a saved benchmark run.

``scripts/bench_methods.py --save results/bench/methods-cpu.json`` records, per method and model,
the seconds per image, the ratio to the method's own limit and to the faster peer, and each
method's declared passes at ResNet-50's ``layer4`` at 224 px. :func:`method_table` turns the
registry and that record into Markdown; ``python scripts/method_table.py`` (or
``scripts/bench_methods.py --write-readme``) writes it between the README's markers, and a test
fails when the README's table is not what the registry and the record give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cambench.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]  # the repository
BENCH_RECORD = ROOT / "results/bench/methods-cpu.json"
README = ROOT / "README.md"
START, END = "<!-- method-table:start -->", "<!-- method-table:end -->"
TABLE_MODEL = "resnet50"  # the model whose K and hw give the "passes" column
# Methods of the literature that cambench does not implement, with the reason.
OUT_OF_SCOPE = {
    "LFI-CAM (Lee et al., ICCV 2021)": "trains an attention branch with the network: it is not post-hoc",
    "CALM (Kim et al., ICCV 2021)": "retrains the classifier with a latent attribution variable: it is not post-hoc",
}


def method_table(record: dict[str, Any] | None) -> str:
    """Markdown table of every registered method, with the measured columns of ``record`` (if any)."""
    record = record or {"models": [], "rows": [], "passes": {}, "notes": []}
    models = record["models"]
    rows = {(r["method"], r["model"]): r for r in record["rows"]}
    head = ["config name", "method and formula", "paper", "gradient-free", "cost per image"]
    head.append(f"passes at {TABLE_MODEL}, 224 px")
    for model in models:
        head += [f"s/image {model}", f"x own limit {model}", f"peer/ours {model}"]
    head.append("checked against")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(METHODS):
        cls = METHODS[name]
        cells = [
            f"`{name}`",
            _escape(cls.summary),
            cls.paper,
            "no" if cls.needs_gradients or cls.needs_input_gradients else "yes",
            cls.cost,
            record["passes"].get(name, "-"),
        ]
        for model in models:
            cells += _measured(rows.get((name, model)))
        cells.append(_escape(cls.checked))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if "device" in record:
        lines.append(
            f"- Measured on {record['device']}, torch {record['torch']}, {record['date']}: `{record['command']}`; "
            "s/image of our method, x own limit = s/image / (declared passes x measured cost of one pass of "
            "each kind), peer/ours = the faster peer's s/image / ours (above 1: cambench is faster)."
        )
    lines += [f"- {note}" for note in record["notes"]]
    lines += [f"- Not implemented: {method}: {reason}." for method, reason in OUT_OF_SCOPE.items()]
    return "\n".join(lines)


def _measured(row: dict[str, Any] | None) -> list[str]:
    if row is None or row.get("seconds") is None:
        return ["-", "-", "-"]
    mark = row.get("mark", "")
    limit = f"{row['seconds'] / row['limit']:.2f}" if row.get("limit") else "-"
    peers = row.get("peers") or {}
    if peers:
        library = min(peers, key=peers.get)
        peer = f"{peers[library] / row['seconds']:.2f} ({library})"
    else:
        peer = "-"
    return [f"{row['seconds']:.3g}{mark}", limit, peer]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def load_record(path: Path = BENCH_RECORD) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} markers")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table}\n{END}{after}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the README's method table from the registry and a bench record")
    parser.add_argument("--record", type=Path, default=BENCH_RECORD)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    args.readme.write_text(readme_with_table(args.readme.read_text(), method_table(load_record(args.record))))
    print(f"wrote the method table of {len(METHODS)} methods to {args.readme}")


if __name__ == "__main__":
    main()
