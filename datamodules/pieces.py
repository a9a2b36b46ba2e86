"""A corpus of encoded pieces held in their compact form, expanded one piece or one window at a time.

As dense multi-hot piano-rolls, Lakh MIDI at the default layout would take about 55 GB of memory;
as the notes the cache stores (`CompactStorage.encode_compact`) it is several times smaller, and a
training window is drawn from the notes that overlap it when the data loader asks for it.

Everything that reads a split (windows, samples of real music, the memorisation index) takes any
sequence of encoded arrays, so a plain list of arrays works everywhere a `CompactPieces` does;
`piece_steps` and `piece_window` use the cheap path when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from datamodules.representations import Representation, compact_codec


class CompactPieces(Sequence[np.ndarray]):
    """Encoded pieces kept compact: ``pieces[i]`` is the expanded array of piece ``i``.

    Args:
        compacts: each piece's compact form, as `CompactStorage.encode_compact` made it.
        representation: the representation that made them.
        steps: each piece's length in steps, when known (else computed from ``compacts``).
    """

    def __init__(
        self,
        compacts: Sequence[np.ndarray],
        representation: Representation,
        steps: Sequence[int] | None = None,
    ) -> None:
        self.compacts = list(compacts)
        self.representation = representation
        self.codec = compact_codec(representation)
        self.steps = list(steps) if steps is not None else [self.codec.compact_steps(c) for c in compacts]

    def __len__(self) -> int:
        return len(self.compacts)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self.codec.expand(c) for c in self.compacts[index]]
        return self.codec.expand(self.compacts[index])

    def window(self, index: int, start: int, length: int) -> np.ndarray:
        """``self[index][start : start + length]``, drawn from the notes of that stretch only."""
        return self.codec.expand_window(self.compacts[index], start, length)

    def subset(self, indices: Sequence[int]) -> CompactPieces:
        """The pieces at ``indices``, in that order (sharing their compact arrays)."""
        return CompactPieces(
            [self.compacts[i] for i in indices], self.representation, [self.steps[i] for i in indices]
        )

    @property
    def nbytes(self) -> int:
        """Memory held by the compact forms."""
        return int(sum(c.nbytes for c in self.compacts))


def piece_steps(pieces: Sequence[np.ndarray], index: int) -> int:
    """Time steps of piece ``index``, without expanding it when ``pieces`` is a `CompactPieces`."""
    return pieces.steps[index] if isinstance(pieces, CompactPieces) else len(pieces[index])


def piece_window(pieces: Sequence[np.ndarray], index: int, start: int, length: int) -> np.ndarray:
    """``pieces[index][start : start + length]``, expanding only that window of a `CompactPieces`."""
    if isinstance(pieces, CompactPieces):
        return pieces.window(index, start, length)
    return pieces[index][start : start + length]
