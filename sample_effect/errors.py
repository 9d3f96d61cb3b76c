"""The one exception type users see: every expected failure (bad input, bad setting) raises it.

The CLI prints its message as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SampleEffectError(Exception):
    """A problem with the user's input or settings, with a message that says what and where."""
