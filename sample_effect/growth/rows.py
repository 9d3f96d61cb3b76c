"""`LazyRows`: a read-only sequence of per-example rows (dicts of tensors over parameter names) formed when read.

The spilled gradients, the centred updates and the simulated steps of growth/ are such sequences:
they hold one row at a time, whatever their length.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import overload

import torch

Row = dict[str, torch.Tensor]


class LazyRows(Sequence[Row]):
    """A sequence whose item i is `row(i)`, computed or read when asked for; a slice gives a list of rows."""

    @abstractmethod
    def row(self, i: int) -> Row:
        """Row i (a fresh dict of tensors)."""

    @overload
    def __getitem__(self, i: int) -> Row: ...

    @overload
    def __getitem__(self, i: slice) -> list[Row]: ...

    def __getitem__(self, i: int | slice) -> Row | list[Row]:
        if isinstance(i, slice):
            return [self.row(k) for k in range(*i.indices(len(self)))]
        return self.row(i)
