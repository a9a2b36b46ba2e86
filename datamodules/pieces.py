"""A corpus of encoded pieces held in their compact form, expanded one piece or one window at a time.

As dense multi-hot piano-rolls, Lakh MIDI at the default layout would take about 55 GB of memory;
as the notes the cache stores (`CompactStorage.encode_compact`) it is several times smaller, and a
training window is drawn from the notes that overlap it when the data loader asks for it.

The compact forms live in *blocks*: one array per cache shard, memory-mapped from the shard file
(`map_npz_member`), so a split larger than memory stays on disk and the operating system's page cache
keeps what is read often; each piece is a row range of one block. Per piece only three integers and
its length are held (about 28 bytes), never an array object. DataLoader workers share the mapped
pages, and a `CompactPieces` that is pickled (spawned workers) sends the file names, not the data.

Everything that reads a split (windows, samples of real music, the memorisation index) takes any
sequence of encoded arrays, so a plain list of arrays works everywhere a `CompactPieces` does;
`piece_steps` and `piece_window` use the cheap path when there is one.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from datamodules.representations import Representation, compact_codec


def map_npz_member(path: str | Path, name: str) -> np.ndarray:
    """Member ``name`` of an uncompressed ``.npz`` file, memory-mapped read-only (no copy in memory).

    An ``.npz`` is a zip archive of ``.npy`` files; stored without compression (as the cache writes
    its shards) a member's bytes lie in the file as they are, after the zip and npy headers. A
    compressed member (or an object array) cannot be mapped and is read into memory instead.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with np.load(path, allow_pickle=False) as f:
                return f[name]
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header: name and extra-field lengths at bytes 26 and 28
        fh.seek(
            info.header_offset
            + 30
            + int.from_bytes(local[26:28], "little")
            + int.from_bytes(local[28:30], "little")
        )
        version = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: member {name} holds Python objects; it cannot be mapped")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class CompactPieces(Sequence[np.ndarray]):
    """Encoded pieces kept compact: ``pieces[i]`` is the expanded array of piece ``i``.

    Args:
        compacts: each piece's compact form, as `CompactStorage.encode_compact` made it (each its own
            block); or use `from_blocks` for pieces that are row ranges of shared blocks.
        representation: the representation that made them.
        steps: each piece's length in steps, when known (else computed from ``compacts``).
    """

    def __init__(
        self,
        compacts: Sequence[np.ndarray],
        representation: Representation,
        steps: Sequence[int] | None = None,
    ) -> None:
        compacts = list(compacts)
        lengths = np.array([len(c) for c in compacts], dtype=np.int64)
        self._init(
            compacts,
            [None] * len(compacts),
            np.arange(len(compacts), dtype=np.int32),
            np.zeros(len(compacts), dtype=np.int64),
            lengths,
            representation,
            steps,
        )

    def _init(
        self,
        blocks: list[np.ndarray],
        sources: list[tuple[str, str] | None],
        block: np.ndarray,
        start: np.ndarray,
        stop: np.ndarray,
        representation: Representation,
        steps: Sequence[int] | np.ndarray | None,
    ) -> None:
        self.blocks = blocks
        self._sources = sources  # (file, member) of a memory-mapped block, to re-map it after pickling
        self._block, self._start, self._stop = block, start, stop
        self.representation = representation
        self.codec = compact_codec(representation)
        if steps is None:
            steps = [self.codec.compact_steps(self.compact(i)) for i in range(len(block))]
        self.steps = np.asarray(steps, dtype=np.int64)

    @classmethod
    def from_blocks(
        cls,
        blocks: list[np.ndarray],
        rows: Sequence[np.ndarray],
        representation: Representation,
        steps: Sequence[int] | np.ndarray,
        sources: list[tuple[str, str] | None] | None = None,
    ) -> CompactPieces:
        """Pieces stored back to back in ``blocks``: ``rows[b]`` are the row counts of block ``b``'s
        pieces, in order. ``sources[b]`` = ``(npz file, member)`` when block ``b`` is mapped from it."""
        counts = [len(r) for r in rows]
        block = np.repeat(np.arange(len(blocks), dtype=np.int32), counts)
        stop = np.concatenate([np.cumsum(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
        start = stop - (np.concatenate(rows).astype(np.int64) if rows else 0)
        pieces = cls.__new__(cls)
        pieces._init(blocks, sources or [None] * len(blocks), block, start, stop, representation, steps)
        return pieces

    def compact(self, index: int) -> np.ndarray:
        """The compact form of piece ``index`` (a view into its block)."""
        return self.blocks[self._block[index]][self._start[index] : self._stop[index]]

    def __len__(self) -> int:
        return len(self._block)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self.codec.expand(self.compact(i)) for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"piece {index} of {len(self)}")
        return self.codec.expand(self.compact(index))

    def window(self, index: int, start: int, length: int) -> np.ndarray:
        """``self[index][start : start + length]``, drawn from the notes of that stretch only."""
        return self.codec.expand_window(self.compact(index), start, length)

    def subset(self, indices: Sequence[int]) -> CompactPieces:
        """The pieces at ``indices``, in that order (sharing the blocks)."""
        indices = np.asarray(indices, dtype=np.int64)
        pieces = CompactPieces.__new__(CompactPieces)
        pieces._init(
            self.blocks,
            self._sources,
            self._block[indices],
            self._start[indices],
            self._stop[indices],
            self.representation,
            self.steps[indices],
        )
        return pieces

    @property
    def nbytes(self) -> int:
        """Bytes of the compact forms of these pieces (on disk when mapped, else in memory)."""
        if not len(self):
            return 0
        row_bytes = np.array(
            [b.dtype.itemsize * int(np.prod(b.shape[1:])) for b in self.blocks], dtype=np.int64
        )
        return int(((self._stop - self._start) * row_bytes[self._block]).sum())

    @property
    def resident_nbytes(self) -> int:
        """Bytes this object holds in memory: its index arrays and any block that is not mapped."""
        index = self._block.nbytes + self._start.nbytes + self._stop.nbytes + self.steps.nbytes
        return int(index + sum(b.nbytes for b in self.blocks if not isinstance(b, np.memmap)))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # A mapped block travels as its file name (pickling a memmap would copy its data).
        state["blocks"] = [None if src else b for b, src in zip(self.blocks, self._sources)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.blocks = [
            map_npz_member(*src) if b is None and src else b for b, src in zip(self.blocks, self._sources)
        ]


def piece_steps(pieces: Sequence[np.ndarray], index: int) -> int:
    """Time steps of piece ``index``, without expanding it when ``pieces`` is a `CompactPieces`."""
    return int(pieces.steps[index]) if isinstance(pieces, CompactPieces) else len(pieces[index])


def piece_window(pieces: Sequence[np.ndarray], index: int, start: int, length: int) -> np.ndarray:
    """``pieces[index][start : start + length]``, expanding only that window of a `CompactPieces`."""
    if isinstance(pieces, CompactPieces):
        return pieces.window(index, start, length)
    return pieces[index][start : start + length]
