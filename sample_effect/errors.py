"""The one exception type users see: every expected failure (bad input, bad setting) raises it.

The CLI prints its message as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class SampleEffectError(Exception):
    """A problem with the user's input or settings, with a message that says what and where."""


class ConfigError(SampleEffectError):
    """A setting out of range, named by its config field: `SFTConfig.lr must be a positive number`.

    The message is written with each field in angle brackets (`"<lr> must be ..."`) and `owner` is
    the config class (or function) the fields belong to. Printed from Python, a field reads
    `Owner.field`; the CLI prints the flag that sets it instead (`--lr must be ...`) through
    `render`, so the library never has to know the command line.
    """

    FIELD = re.compile(r"<([a-z_][a-z0-9_]*)>")

    def __init__(self, owner: str, template: str) -> None:
        self.owner, self.template = owner, template
        self.fields = tuple(self.FIELD.findall(template))
        super().__init__(self.render(lambda owner, name: f"{owner}.{name}"))

    def render(self, name_of: Callable[[str, str], str]) -> str:
        """The message with every field written as `name_of(owner, field)`."""
        return self.FIELD.sub(lambda m: name_of(self.owner, m.group(1)), self.template)
