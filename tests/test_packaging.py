"""Every sub-package ships: a wheel built from pyproject.toml must contain each package directory."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
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


def _run_from_root(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the test's interpreter from the repository root, as `python -c` / `python -m pytest` are run."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_root_kernels_folder_never_shadows_the_pypi_package():
    """From the root, `import kernels` is the installed PyPI package (transformers imports it), never ours."""
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the PyPI package `kernels` is not installed, so there is nothing to shadow")
    out = _run_from_root("-c", "import kernels, os; print(os.path.realpath(kernels.__file__))")
    assert out.returncode == 0, out.stderr
    found = Path(out.stdout.strip())
    assert ROOT / "kernels" not in found.parents, f"`import kernels` found the project's folder: {found}"


def test_root_kernels_folder_is_not_a_module_without_the_pypi_package():
    """Without site-packages (`-S`), the folder reads as a missing module, not as a half-imported one."""
    out = _run_from_root("-S", "-c", "import kernels")
    assert out.returncode != 0 and "ModuleNotFoundError: No module named 'kernels'" in out.stderr, out.stderr


def test_transformers_and_sample_effect_import_together_from_root():
    """The README's snippet, scripts and notebooks run from the root: transformers' callback and our kernels."""
    code = ("import os, kernels, sample_effect.kernels as k; from transformers import TrainerCallback; "
            "from sample_effect.integrations.trl import TargetChangeCallback; "
            "print(os.path.realpath(k.__file__)); print(issubclass(TargetChangeCallback, TrainerCallback))")
    out = _run_from_root("-c", code)
    assert out.returncode == 0, out.stderr
    ours, subclass = out.stdout.split()
    assert Path(ours) == ROOT / "kernels" / "__init__.py" and subclass == "True"


def test_constraints_pin_every_dependency_the_package_declares():
    """The lock `make test` / `make demo` install from pins each declared dependency to one version."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line is not an exact pin: {line!r}"
            pinned[name.strip().lower().replace("_", "-")] = version.strip()
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    assert names <= set(pinned), f"not pinned in constraints.txt: {sorted(names - set(pinned))}"


def test_constraints_match_the_running_environment_when_installed_from_them():
    """Under `make test` (SAMPLE_EFFECT_LOCKED=1) the suite runs on exactly the locked versions."""
    if os.environ.get("SAMPLE_EFFECT_LOCKED") != "1":
        pytest.skip("not installed from constraints.txt (make test sets SAMPLE_EFFECT_LOCKED=1)")
    wrong = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            have = importlib.metadata.version(name.strip())
            if have.split("+")[0] != version.strip():
                wrong.append(f"{name}: locked {version}, installed {have}")
    assert not wrong, wrong
