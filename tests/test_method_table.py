"""The README's method table: generated from the registry and the saved benchmark record, so a
registered method missing from the README (or a stale row) fails here."""

from pathlib import Path

import pytest
from method_table import END, START, load_record, method_table, readme_with_table

from cambench.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


def readme_table() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def test_every_registered_method_has_a_row_in_the_readme():
    rows = {line.split("|")[1].strip() for line in readme_table().splitlines() if line.startswith("| `")}
    missing = sorted(name for name in METHODS if f"`{name}`" not in rows)
    assert not missing, f"methods missing from the README's table: {missing}; run python scripts/method_table.py"


def test_readme_table_is_what_the_registry_and_the_bench_record_give():
    expected = method_table(load_record(ROOT / "results/bench/methods-cpu.json")).strip()
    assert readme_table() == expected, "the README's method table is stale: run python scripts/method_table.py"


def test_measured_columns_from_a_record():
    record = {
        "models": ["resnet18"],
        "notes": ["a note"],
        "passes": {"gradcam": "1F + 1B"},
        "rows": [
            {
                "method": "gradcam",
                "model": "resnet18",
                "mark": "",
                "seconds": 0.02,
                "limit": 0.016,
                "peers": {"TorchCAM": 0.03, "pytorch-grad-cam": 0.07},
            },
            {"method": "scorecam", "model": "resnet18", "mark": "†", "seconds": 12.5, "limit": None, "peers": {}},
        ],
    }
    lines = {line.split("|")[1].strip(): line for line in method_table(record).splitlines() if line.startswith("| `")}
    assert "| 1F + 1B | 0.02 | 1.25 | 1.50 (TorchCAM) |" in lines["`gradcam`"]  # 0.02 / 0.016; 0.03 / 0.02
    assert "| - | 12.5† | - | - |" in lines["`scorecam`"]  # no passes recorded, reduced setting, no limit, no peer
    assert set(lines) == {f"`{name}`" for name in METHODS}
    assert "- a note" in method_table(record)


def test_readme_without_markers_is_a_clear_error():
    with pytest.raises(ValueError, match="markers"):
        readme_with_table("# no table here", "| table |")
    assert readme_with_table(f"a\n{START}\nold\n{END}\nb", "new") == f"a\n{START}\nnew\n{END}\nb"


def test_bench_merge_replaces_only_the_remeasured_rows():
    from bench_methods import merged

    def row(method: str, model: str, seconds: float) -> dict:
        return {"method": method, "model": model, "seconds": seconds}

    old = {
        "command": "old run",
        "models": ["resnet18", "resnet50"],
        "notes": ["n"],
        "passes": {"gradcam": "1F + 1B", "scorecam": "513F"},
        "rows": [row("scorecam", "resnet50", 9.0), row("gradcam", "resnet18", 1.0), row("scorecam", "resnet18", 2.0)],
    }
    new = {"command": "new run", "date": "d", "models": ["resnet18"], "passes": {"scorecam": "1F + 512T"}}
    new["rows"] = [row("scorecam", "resnet18", 3.0)]
    out = merged(old, new)
    assert [(r["method"], r["model"], r["seconds"]) for r in out["rows"]] == [
        ("gradcam", "resnet18", 1.0),
        ("scorecam", "resnet18", 3.0),
        ("scorecam", "resnet50", 9.0),
    ]
    assert out["passes"] == {"gradcam": "1F + 1B", "scorecam": "1F + 512T"}
    assert out["command"] == "old run" and out["notes"][0] == "n"
    assert out["notes"][1].startswith("re-measured on d (new run)") and out["notes"][1].endswith(": scorecam@resnet18")
