"""Write docs/api_reference.md from the docstrings and signatures, so the API reference cannot drift.

    python scripts/gen_api_reference.py            # rewrite docs/api_reference.md
    python scripts/gen_api_reference.py --check    # exit 1 if it is out of date or a docstring is missing

Stdlib only (inspect, importlib). Documented modules: every module of the package except the CLI
and the ones SKIP names (MODULES fixes the order). Public names: a module's `__all__` when it has
one, else the classes and functions it defines whose names do not start with `_`; public methods
and properties of those classes too. Names an `__all__` re-exports from another documented module
link to their entry there. Missing docstrings are listed on stderr and fail `--check`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import enum
import importlib
import inspect
import io
import pkgutil
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api_reference.md"

# The documented modules, in this order; any other module found in the package is appended in
# name order, so a new module is documented (and its docstrings checked) without editing this list.
MODULES = [
    "sample_effect",
    "sample_effect.data.examples",
    "sample_effect.data.sources",
    "sample_effect.models.loading",
    "sample_effect.targets.core",
    "sample_effect.update.optim",
    "sample_effect.engine.core",
    "sample_effect.scoring.effects",
    "sample_effect.objectives.losses",
    "sample_effect.errors",
    "sample_effect.engine.planner",
    "sample_effect.engine.projection",
    "sample_effect.store.cache",
    "sample_effect.runtime.distributed",
    "sample_effect.validation.linearization",
    "sample_effect.growth.sft",
    "sample_effect.growth.noise",
    "sample_effect.growth.rl",
    "sample_effect.growth.rl_config",
    "sample_effect.growth.rl_effects",
    "sample_effect.growth.rl_stats",
    "sample_effect.growth.rl_batches",
    "sample_effect.growth.rl_curvature",
    "sample_effect.growth.rl_terms",
    "sample_effect.growth.rl_warnings",
    "sample_effect.growth.rl_gather",
    "sample_effect.growth.trajectory",
    "sample_effect.growth.rows",
    "sample_effect.growth.rl_results",
    "sample_effect.validation.rl_curves",
    "sample_effect.training.imitation",
    "sample_effect.analysis.markers",
    "sample_effect.analysis.quantiles",
    "sample_effect.rollouts.generation",
    "sample_effect.rollouts.rewards",
    "sample_effect.data.kk",
    "sample_effect.plots.figures",
    "sample_effect.io",
    "sample_effect.models.lora",
    "sample_effect.update.hf_checkpoint",
    "sample_effect.models.precision",
    "sample_effect.models.registry",
    "sample_effect.models.tiny",
    "sample_effect.models.smollm2",
    "sample_effect.kernels",
    "sample_effect.kernels.ghost",
    "sample_effect.kernels.adam",
    "sample_effect.training",
    "sample_effect.integrations.trl",
]

# Never documented: the CLI (its reference is docs/cli.md), and modules whose public names a
# documented package re-exports (`sample_effect.kernels`, `sample_effect.training`).
SKIP = [
    r"sample_effect\.(.*\.)?_[^.]*",  # private modules and __main__
    r"sample_effect\.cli(\..*)?",
    r"sample_effect\.kernels\.(jvp|vmap)",
    r"sample_effect\.training\.(common|sft|grpo|redistill)",
    r"sample_effect\.integrations",  # only a docstring; its modules are listed
]


def module_names() -> list[str]:
    """MODULES, then every other module of the package that SKIP does not exclude, sorted."""
    found = {"sample_effect"}
    # sample_effect.kernels lives outside sample_effect/ (pyproject's package-dir), so walk it too
    for package in ("sample_effect", "sample_effect.kernels"):
        path = importlib.import_module(package).__path__
        found |= {info.name for info in pkgutil.walk_packages(path, package + ".")} | {package}
    found = {m for m in found if not any(re.fullmatch(pattern, m) for pattern in SKIP)}
    return [m for m in MODULES if m in found] + sorted(found - set(MODULES))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def public_names(module: Any) -> list[str]:
    """`__all__` in its own order, else the public classes and functions the module defines, sorted."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            names.append(name)
    return sorted(names)


def own_doc(obj: Any) -> str | None:
    """The object's own docstring (not inherited, not the one dataclasses make up), cleaned."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
        return None  # dataclasses' generated "Name(field: type, ...)"
    if isinstance(obj, type) and issubclass(obj, enum.Enum) and doc == "An enumeration.":
        return None
    return inspect.cleandoc(doc)


def render_value(value: Any) -> str:
    """A default value as source-ish text, free of memory addresses and of this machine's paths."""
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        mod = getattr(value, "__module__", "") or ""
        name = getattr(value, "__qualname__", repr(value))
        return name if mod in ("builtins", "") else f"{mod}.{name}"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, Path):
        value = str(value)
    text = _ADDRESS.sub("", repr(value))
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")


def render_annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


class _Text:
    """Shown as its text by `inspect.Parameter.__str__` (no quotes, no repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def render_signature(obj: Any, name: str) -> str:
    """`name(params) -> ret` on one line, or one parameter a line when longer than 100 characters."""
    if isinstance(obj, inspect.Signature):
        sig = obj
    else:
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return f"{name}(...)"
    params = []
    for p in sig.parameters.values():
        changes: dict[str, Any] = {}
        if p.annotation is not p.empty:
            changes["annotation"] = _Text(render_annotation(p.annotation))
        if p.default is not p.empty:
            changes["default"] = _Text(render_value(p.default))
        params.append(p.replace(**changes))
    items = _with_markers(params)
    ret = ""
    if sig.return_annotation is not sig.empty:
        ret = " -> " + render_annotation(sig.return_annotation)
    one_line = f"{name}({', '.join(items)}){ret}"
    if len(one_line) <= 100:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in items) + f"){ret}"


def _with_markers(params: list[inspect.Parameter]) -> list[str]:
    """Each parameter's text, with the "/" and "*" markers where `inspect.Signature` puts them."""
    items: list[str] = []
    kinds = [p.kind for p in params]
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and inspect.Parameter.VAR_POSITIONAL not in kinds[:i] \
                and (i == 0 or kinds[i - 1] is not p.KEYWORD_ONLY):
            items.append("*")
        items.append(str(p))
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or kinds[i + 1] is not p.POSITIONAL_ONLY):
            items.append("/")
    return items


def _code(text: str) -> list[str]:
    return ["```python", text, "```", ""]


def markdown(doc: str) -> str:
    """A docstring as Markdown: as written, except that '<' outside `code` cannot open an HTML tag."""
    out = []
    for line in doc.splitlines():
        if line.startswith("    "):  # an indented (code) block shows '<' as it is
            out.append(line)
            continue
        pieces = line.split("`")
        pieces[::2] = [piece.replace("<", "&lt;") for piece in pieces[::2]]
        out.append("`".join(pieces))
    return "\n".join(out)


def _doc_lines(doc: str | None) -> list[str]:
    return [markdown(doc), ""] if doc else ["*(no docstring)*", ""]


def field_comments(cls: type) -> dict[str, str]:
    """Trailing `# comments` on a dataclass's field lines, by field name (they document the field)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and not re.match(r"#\s*(type:|noqa|pragma)", tok.string)}
    out = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.end_lineno in comments:
            out[node.target.id] = comments[node.end_lineno]
    return out


def render_dataclass_fields(cls: type) -> list[str]:
    notes = field_comments(cls)
    with_notes = any(notes.get(f.name) for f in dataclasses.fields(cls))
    rows = ["| field | type | default | notes |", "| --- | --- | --- | --- |"] if with_notes else \
        ["| field | type | default |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f"`{render_value(f.default)}`"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{render_value(f.default_factory)}()`"
        else:
            default = "required"
        cells = [f"`{f.name}`", f"`{render_annotation(f.type)}`", default]
        if with_notes:
            cells.append(markdown(notes.get(f.name, "")))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*rows, ""]


def class_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties the class itself defines, in source order."""
    out = []
    for name, raw in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(raw, staticmethod):
            out.append((name, raw.__func__))
        elif isinstance(raw, classmethod):
            out.append((name, raw.__get__(None, cls)))  # bound: no `cls` in the signature
        elif isinstance(raw, property) or inspect.isfunction(raw):
            out.append((name, raw))
    return out


def _drop_self(cls: type, name: str, func: Any) -> Any:
    """A plain method's signature without `self`; a staticmethod's as it is."""
    if isinstance(cls.__dict__.get(name), staticmethod):
        return func
    sig = inspect.signature(func)
    params = list(sig.parameters.values())[1:]
    return sig.replace(parameters=params)


def member_doc(cls: type, name: str, obj: Any) -> str | None:
    """A method's docstring; for an undocumented override, its base's (this package's) or a pointer to it.

    Docstrings of other libraries' base classes are not copied: they change with their versions.
    """
    doc = obj.__doc__ if isinstance(obj, property) else getattr(obj, "__doc__", None)
    if doc and doc.strip():
        return inspect.cleandoc(doc)
    for base in cls.__mro__[1:]:
        if name not in base.__dict__:
            continue
        if base.__module__.split(".")[0] != "sample_effect":
            return f"Overrides `{base.__module__.split('.')[0]}.{base.__qualname__}.{name}`."
        base_doc = getattr(base.__dict__[name], "__doc__", None)
        if base_doc and base_doc.strip():
            return inspect.cleandoc(base_doc)
    return None


def render_object(qualname: str, obj: Any, missing: list[str]) -> list[str]:
    name = qualname.rsplit(".", 1)[1]
    lines = [f"### `{qualname}`", ""]
    doc = own_doc(obj)
    if doc is None:
        missing.append(qualname)
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            bases = ", ".join(b.__name__ for b in obj.__bases__)
            lines += _code(f"class {name}({bases})")
        elif dataclasses.is_dataclass(obj):
            frozen = obj.__dataclass_params__.frozen  # type: ignore[attr-defined]
            lines += _code(f"@dataclass{'(frozen=True)' if frozen else ''}\nclass {name}")
        else:
            lines += _code("class " + render_signature(obj, name).removesuffix(" -> None"))
        lines += _doc_lines(doc)
        if dataclasses.is_dataclass(obj):
            lines += render_dataclass_fields(obj)
        for mname, member in class_members(obj):
            mdoc = member_doc(obj, mname, member)
            if mdoc is None:
                missing.append(f"{qualname}.{mname}")
            if isinstance(member, property):
                ret = ""
                if member.fget is not None and "return" in getattr(member.fget, "__annotations__", {}):
                    ret = ": " + render_annotation(member.fget.__annotations__["return"])
                sig = f"{name}.{mname}{ret}  # property"
            else:
                bound = member if inspect.ismethod(member) else _drop_self(obj, mname, member)
                sig = render_signature(bound, f"{name}.{mname}")
            lines += [f"#### `{name}.{mname}`", "", *_code(sig), *_doc_lines(mdoc)]
    elif callable(obj):
        lines += _code(render_signature(obj, name))
        lines += _doc_lines(doc)
    else:
        lines += _code(f"{name} = {render_value(obj)}")
    return lines


def defining_module(obj: Any) -> str | None:
    mod = getattr(obj, "__module__", None)
    return mod if isinstance(mod, str) else None


def render() -> tuple[str, list[str]]:
    """The whole reference and the public names without a docstring."""
    missing: list[str] = []
    modules = [importlib.import_module(m) for m in module_names()]
    # Where each object gets its full entry: the module that defines it, when that one is documented
    # and exports it; else the first documented module that exports it.
    home: dict[int, str] = {}
    exports = {m.__name__: public_names(m) for m in modules}
    for m in modules:
        for name in exports[m.__name__]:
            obj = getattr(m, name)
            dm = defining_module(obj)
            if dm in exports and name in exports[dm] and getattr(sys.modules[dm], name) is obj:
                home.setdefault(id(obj), f"{dm}.{name}")
            else:
                home.setdefault(id(obj), f"{m.__name__}.{name}")

    parts = [
        "# Python API reference",
        "",
        "Generated from the docstrings and signatures by `python scripts/gen_api_reference.py`; "
        "`tests/test_api_reference.py` fails when it is out of date or a public name has no "
        "docstring. The hand-written overview is [api.md](api.md).",
        "",
        "## Contents",
        "",
    ]
    for m in modules:
        summary = markdown(" ".join((own_doc(m) or "").split("\n\n")[0].split()))
        parts.append(f"- [`{m.__name__}`](#{slug(m.__name__)}): {summary}".rstrip(": "))
    parts.append("")

    for m in modules:
        mdoc = own_doc(m)
        if mdoc is None:
            missing.append(m.__name__)
        parts += [f"## `{m.__name__}`", "", *_doc_lines(mdoc)]
        names = exports[m.__name__]
        linked = []
        for name in names:
            obj = getattr(m, name)
            if home[id(obj)] != f"{m.__name__}.{name}":
                linked.append((name, home[id(obj)]))
        if linked:
            parts += ["Re-exported here:", ""]
            for name, target in linked:
                parts.append(f"- `{name}`: see [`{target}`](#{slug(target)})")
            parts.append("")
        for name in names:
            obj = getattr(m, name)
            if home[id(obj)] == f"{m.__name__}.{name}":
                parts += render_object(f"{m.__name__}.{name}", obj, missing)
    text = "\n".join(parts).rstrip("\n") + "\n"
    return text, missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="only compare; exit 1 if docs/api_reference.md differs or a docstring is missing")
    args = ap.parse_args()
    text, missing = render()
    if missing:
        print("public names without a docstring:\n  " + "\n  ".join(missing), file=sys.stderr)
    if args.check:
        old = DOC.read_text() if DOC.exists() else ""
        stale = old != text
        if stale:
            diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), "docs/api_reference.md",
                                             "generated", lineterm="", n=1))
            shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
            print(f"{DOC.relative_to(ROOT)} is out of date; run python scripts/gen_api_reference.py\n{shown}",
                  file=sys.stderr)
        return 1 if stale or missing else 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
