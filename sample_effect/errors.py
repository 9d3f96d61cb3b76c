"""The one exception type users see: every expected failure (bad input, bad setting) raises it.

The CLI prints its message as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

NameOf = Callable[[str, str], str]  # (owner, field) -> how a message writes that field

# A field in a message template: `<field>` (of the template's owner) or `<Owner.field>` (of another
# config class or function, for advice such as "or a larger <ComputeConfig.memory_budget>"); `<<` is
# a literal `<` (see `literal`), so that user text (a regex with a named group) is never read as a field.
_FIELD = re.compile(r"<<|<(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([a-z_][a-z0-9_]*)>")


def _python_name(owner: str, field: str) -> str:
    """How Python-side messages write a field: `Owner.field`."""
    return f"{owner}.{field}"


def _render(owner: str, template: str, name_of: NameOf = _python_name) -> str:
    """`template` with every `<field>` written as `name_of(owner, field)` (`<Other.field>`: `name_of("Other", field)`)."""
    return _FIELD.sub(lambda m: "<" if m.group(2) is None else name_of(m.group(1) or owner, m.group(2)), template)


def _refs(owner: str, template: str) -> tuple[tuple[str, str], ...]:
    return tuple((m.group(1) or owner, m.group(2)) for m in _FIELD.finditer(template) if m.group(2) is not None)


def literal(text: object) -> str:
    """`text` for a message template, kept as is when the fields are rendered (every `<` doubled).

    For user text in a `ConfigError` or `field_text` template: a path, an id, a regex such as `(?P<name>...)`."""
    return str(text).replace("<", "<<")


class SampleEffectError(Exception):
    """A problem with the user's input or settings, with a message that says what and where."""


class ConfigError(SampleEffectError):
    """A setting out of range, named by its config field: `SFTConfig.lr must be a positive number`.

    The message is written with each field in angle brackets (`"<lr> must be ..."`) and `owner` is
    the config class (or function) the fields belong to; a field of another owner is written
    `<Other.field>`. Printed from Python, a field reads `Owner.field`; the CLI prints the flag that
    sets it instead (`--lr must be ...`) through `render`, so the library never has to know the
    command line. `fields` are the owner's own fields, `refs` every (owner, field) the message names.
    """

    FIELD = _FIELD

    def __init__(self, owner: str, template: str) -> None:
        self.owner, self.template = owner, template
        self.refs = _refs(owner, template)
        self.fields = tuple(name for other, name in self.refs if other == owner)
        super().__init__(self.render(_python_name))

    def render(self, name_of: NameOf) -> str:
        """The message with every field written as `name_of(owner, field)`."""
        return _render(self.owner, self.template, name_of)


class FieldText(str):
    """A message that is not raised (a warning, a note) but names fields as a `ConfigError` does.

    It is the `Owner.field` text itself (a plain `str` to every consumer), and keeps `owner` and
    `template` so that the CLI can `render` it with its flags instead.
    """

    owner: str
    template: str
    refs: tuple[tuple[str, str], ...]

    def __new__(cls, owner: str, template: str) -> FieldText:
        self = super().__new__(cls, _render(owner, template))
        self.owner, self.template, self.refs = owner, template, _refs(owner, template)
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]  # pickle / copy rebuild from these
        return (self.owner, self.template)

    def render(self, name_of: NameOf) -> str:
        """The message with every field written as `name_of(owner, field)`."""
        return _render(self.owner, self.template, name_of)


def field_text(owner: str, template: str) -> FieldText:
    """A warning's or note's text whose `<field>`s read `Owner.field`, as in a `ConfigError`'s message.

    The result is a `str`; `render_text(text, name_of)` writes its fields another way (the CLI's flags)."""
    return FieldText(owner, template)


def render_text(text: str | BaseException, name_of: NameOf) -> str:
    """A message with its fields written as `name_of(owner, field)`: rendered for a `FieldText` or a
    `ConfigError`, as is (`str(text)`) for anything else."""
    if isinstance(text, (FieldText, ConfigError)):
        return text.render(name_of)
    return str(text)
