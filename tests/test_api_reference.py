"""docs/api_reference.md is generated from the code and docs/api.md names only things that exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_api_reference.py"
API_MD = ROOT / "docs" / "api.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_public_name_has_a_docstring():
    _, missing = _generator().render()
    assert not missing, "public names without a docstring (add one, then rerun " \
        "python scripts/gen_api_reference.py):\n  " + "\n  ".join(missing)


def test_api_md_imports_exist():
    blocks = re.findall(r"```python\n(.*?)```", API_MD.read_text(), re.S)
    assert blocks, "docs/api.md has no python code block"
    names = []
    for node in ast.walk(ast.parse(blocks[0])):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            names += [(node.module, alias.name, hasattr(module, alias.name)) for alias in node.names]
    assert names, "docs/api.md's first code block imports nothing"
    assert [f"{m}.{n}" for m, n, ok in names if not ok] == []


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_api_md_dotted_names_exist():
    text = API_MD.read_text()
    dotted = sorted(set(re.findall(r"\bsample_effect(?:\.\w+)+", text)))
    assert dotted
    assert [d for d in dotted if not _resolve(d)] == []
