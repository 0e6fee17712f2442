"""The wheel ships every subpackage, the migrations and the dashboard's files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_every_package_found_in_the_tree(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "build", "*.egg-info", "__pycache__", "dispatcher-d*", "test-artifacts", "results"
        ),
    )
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    (wheel,) = wheels.glob("sms_dispatcher-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())

    packages = sorted(
        init.parent.relative_to(ROOT).as_posix()
        for init in (ROOT / "dispatcher").rglob("__init__.py")
    )
    assert "dispatcher/persistence/migrations/versions" in packages
    for package in packages:
        modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / package).glob("*.py")]
        assert set(modules) <= shipped, f"{package} is not shipped whole"
    for data in (
        "dispatcher/persistence/migrations/script.py.mako",
        "dispatcher/dashboard/templates/base.html",
    ):
        assert data in shipped
