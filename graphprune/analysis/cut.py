"""A Cut: which units (channels) a plan removes, asked per space.

Passes read a removal through this one interface (kept indices of a tensor axis, whether a space loses
anything, a per-unit mask for cost models) instead of slicing the analysis' element -> unit map themselves.
"""

from __future__ import annotations

import numpy as np

from .spaces import Space


class Cut:
    def __init__(self, analysis, removed_units):
        self.analysis = analysis
        self.units = np.asarray(removed_units, dtype=np.int64).reshape(-1)
        self.removed = np.zeros(len(analysis.roots) + 1, dtype=bool)  # per unit id (root), True = removed
        self.removed[self.units] = True

    def __len__(self) -> int:
        return len(self.units)

    def _space(self, space_or_tensor, axis) -> Space | None:
        if isinstance(space_or_tensor, Space):
            return space_or_tensor
        return self.analysis.spaces.get(space_or_tensor, axis)

    def kept(self, space_or_tensor, axis: int | None = None) -> np.ndarray | None:
        """Boolean mask of the elements kept on a space (or tensor axis); None when the axis is no space
        (size 1 or unknown: nothing to cut there)."""
        sp = self._space(space_or_tensor, axis)
        if sp is None:
            return None
        return ~self.removed[self.analysis.units_of(sp)]

    def kept_indices(self, space_or_tensor, axis: int | None = None) -> np.ndarray | None:
        mask = self.kept(space_or_tensor, axis)
        return None if mask is None else np.flatnonzero(mask)

    def touches(self, space_or_tensor, axis: int | None = None) -> bool:
        """True when the space loses at least one element."""
        mask = self.kept(space_or_tensor, axis)
        return mask is not None and not bool(mask.all())

    def shrunk(self) -> dict[tuple[str, int], np.ndarray]:
        """Kept indices of every (tensor, axis) that loses elements."""
        out = {}
        for sp in self.analysis.spaces.spaces:
            mask = self.kept(sp)
            if not mask.all():
                out[(sp.tensor, sp.axis)] = np.flatnonzero(mask)
        return out
