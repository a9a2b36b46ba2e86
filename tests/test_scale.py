"""Lakh-scale data: preprocessing memory does not grow with the corpus, shards are memory-mapped
(a split larger than memory stays on disk), items stream in sorted order, windows are computed."""

from __future__ import annotations

import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules import MusicDataModule
from datamodules.cache import build_cache, load_cache
from datamodules.music_datamodule import WindowIndex
from datamodules.pieces import CompactPieces, map_npz_member
from datamodules.representations import PianoRollRepresentation
from datamodules.sources import FolderSource, list_files, walk_files
from muselab.bench.data import generate_midi_folder


def _representation() -> PianoRollRepresentation:
    return PianoRollRepresentation(
        n_tracks=4,
        track_mode="program",
        program_groups=[[0, 7], [32, 39], [40, 55], [24, 31]],
        pitch_low=24,
        pitch_high=96,
    )


def _build_peak(root: Path, cache: Path) -> int:
    """Peak bytes Python allocated while preprocessing ``root`` (one process, so all of it is seen)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        build_cache(FolderSource(str(root)), _representation(), cache, n_jobs=1, shard_size=4, progress=False)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_preprocessing_peak_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """4x the files, the same peak: items stream into shards, the manifest is summed shard by shard.

    The code before streaming held the item list, every shard's metadata and the sorted file list:
    about 690 bytes a file more here (227 kB for 100 files, 433 kB for 400).
    """
    generate_midi_folder(tmp_path / "small", 100, 40, seed=1)
    generate_midi_folder(tmp_path / "large", 400, 40, seed=1)
    _build_peak(tmp_path / "small", tmp_path / "warm-up")  # imports and first-use caches
    small = _build_peak(tmp_path / "small", tmp_path / "cache-small")
    large = _build_peak(tmp_path / "large", tmp_path / "cache-large")
    assert large - small < 100 * 300, (
        f"peak grew by {large - small} bytes for 300 more files ({small} -> {large})"
    )


def test_a_loaded_split_stays_on_disk_mapped_and_serves_the_same_windows(tmp_path: Path) -> None:
    generate_midi_folder(tmp_path / "midi", 40, 300, seed=2)
    rep = _representation()
    directory = build_cache(
        FolderSource(str(tmp_path / "midi")), rep, tmp_path / "cache", n_jobs=2, shard_size=8
    )
    corpus = load_cache(directory)
    pieces = corpus.arrays
    assert isinstance(pieces, CompactPieces) and len(pieces) == 40
    assert all(isinstance(block, np.memmap) for block in pieces.blocks)  # the notes are not read
    assert pieces.resident_nbytes < pieces.nbytes / 20  # a few integers a piece, not its notes
    # The same notes as reading the shard outright.
    with np.load(directory / "shard-00001.npz") as shard:
        assert np.array_equal(shard["data"], map_npz_member(directory / "shard-00001.npz", "data"))
    # A pickled split (spawned data loader workers) sends file names and maps them again.
    clone = pickle.loads(pickle.dumps(pieces))
    assert len(pickle.dumps(pieces)) < pieces.nbytes / 5
    assert all(isinstance(block, np.memmap) for block in clone.blocks)
    subset = pieces.subset([5, 0, 39])
    for i, j in enumerate([5, 0, 39]):
        assert np.array_equal(subset[i], rep.expand(np.asarray(pieces.compact(j))))
        assert np.array_equal(clone.window(j, 8, 32), pieces[j][8:40])
    assert list(subset.steps) == [pieces.steps[5], pieces.steps[0], pieces.steps[39]]


def test_the_datamodule_trains_from_mapped_shards(tmp_path: Path) -> None:
    generate_midi_folder(tmp_path / "midi", 24, 200, seed=3)
    dm = MusicDataModule(
        FolderSource(str(tmp_path / "midi")), _representation(), str(tmp_path / "cache"), window=32, n_jobs=1
    )
    dm.setup()
    train = dm.split_arrays["train"]
    assert isinstance(train, CompactPieces) and all(isinstance(b, np.memmap) for b in train.blocks)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1:] == (32, 4, 73) and batch["x"].sum() > 0


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=8),
    window=st.one_of(st.none(), st.integers(1, 64)),
    hop=st.integers(1, 80),
)
def test_window_index_is_the_list_it_replaces(lengths: list[int], window: int | None, hop: int) -> None:
    expected = []
    for piece, length in enumerate(lengths):
        if window is None:
            expected.append((piece, 0))
            continue
        last = max(length - window, 0)
        starts = list(range(0, last + 1, hop))
        if starts[-1] != last:
            starts.append(last)
        expected += [(piece, s) for s in starts]
    index = WindowIndex(np.array(lengths), window, hop)
    assert len(index) == len(expected) and list(index) == expected
    with pytest.raises(IndexError):
        index[len(index)]


def test_files_stream_in_the_order_of_their_sorted_paths(tmp_path: Path) -> None:
    names = [
        "b/z.mid",
        "b/a.mid",
        "a.mid",
        "a/x.mid",
        "a-b/c.mid",
        "B.mid",
        "b/sub/k.mid",
        ".hidden/x.mid",
        "c.txt",
    ]
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    os.symlink(tmp_path / "b", tmp_path / "b" / "loop")  # a link loop is walked once
    walked = [Path(p).relative_to(tmp_path).as_posix() for p in list_files(tmp_path, (".mid",))]
    by_parts = sorted(
        (tuple(parts) for parts, _ in walk_files(tmp_path, (".mid",)) if "loop" not in parts),
    )
    assert walked == ["/".join(p) for p in by_parts]
    assert walked[:4] == ["B.mid", "a/x.mid", "a-b/c.mid", "a.mid"] and ".hidden/x.mid" not in walked
    source = FolderSource(str(tmp_path))
    assert [item.key for item in source.iter_items()] == [item.key for item in source.items()] == walked
