"""Every sub-package ships: a wheel built from pyproject.toml must contain each package directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {"sample_effect." + ".".join(p.parent.relative_to(ROOT / "sample_effect").parts)
            for p in (ROOT / "sample_effect").rglob("__init__.py") if p.parent != ROOT / "sample_effect"}
    assert dirs <= listed, f"packages missing from pyproject.toml: {sorted(dirs - listed)}"
    assert "sample_effect" in listed and cfg["package-dir"]["sample_effect.kernels"] == "kernels"
