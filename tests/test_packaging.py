"""A non-editable install carries the Hydra configs: the wheel ships conf/ as cambench.conf."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_config_and_hydra_composes_from_the_installed_copy(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("cambench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "conf").rglob("*.yaml"):
        assert f"cambench/conf/{config.relative_to(ROOT / 'conf').as_posix()}" in names
    # every module of the package, the papers' published values, and the license pyproject names
    for module in (ROOT / "cambench").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names
    assert "cambench/analysis/published/poppi2021.csv" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # from another folder, with only the installed copy on the path, the app composes its config
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cambench.cli.main as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
        "sys.argv = ['cambench', '--cfg', 'job', 'method=scorecam']; m.main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "name: scorecam" in result.stdout and "name: resnet18" in result.stdout
