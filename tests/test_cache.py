"""The preprocessing cache (reuse, keys, resume, atomic shards, skipped files), the hash split and
`MusicDataModule` windows, all on real MIDI files written by muspy and read back by symusic."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import muspy
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datamodules import MusicDataModule, WindowDataset, hash_split
from datamodules.cache import _atomic_save, atomic_write_text, build_cache, load_cache
from datamodules.music_datamodule import pad_collate
from datamodules.representations import (
    MelodyRepresentation,
    PianoRollRepresentation,
    build_representation,
    compact_codec,
)
from datamodules.sources import LOADERS, FolderSource, SourceItem
from tests.conftest import write_midi_folder

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHARD_NAME = "shard-{:05d}.npz"


def build(folder: Path, cache_dir: Path, rep: PianoRollRepresentation | None = None, **kwargs) -> Path:
    """A small, serial build: 2 pieces a shard, so the 9 files of `write_midi_folder` make 5 shards."""
    kwargs = {"n_jobs": 1, "shard_size": 2, "progress": False, "min_steps": 1, **kwargs}
    return build_cache(FolderSource(str(folder)), rep or PianoRollRepresentation(), cache_dir, **kwargs)


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Identity of every file: a rewrite (even of the same bytes) changes the inode or the mtime."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir()}


def assert_clean(directory: Path) -> None:
    """Only whole shards and the manifest: no temporary file left behind, every shard loadable."""
    for path in directory.iterdir():
        assert path.name == "manifest.json" or (path.name.startswith("shard-") and path.suffix == ".npz"), (
            path
        )
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                assert {"data", "rows", "steps", "keys", "splits", "skipped"} <= set(f.files)
                assert int(f["rows"].sum()) == len(f["data"])
                assert len(f["rows"]) == len(f["steps"]) == len(f["keys"]) == len(f["splits"])


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of the MIDI items loaded (the real loader runs; with n_jobs=1 it runs in this process)."""
    seen: list[str] = []
    real = LOADERS["midi"]

    def counting(item: SourceItem):
        seen.append(item.key)
        return real(item)

    monkeypatch.setitem(LOADERS, "midi", counting)
    return seen


# -------------------------------------------------------------------------------------------- reuse
def test_cache_is_reused_on_a_second_build(midi_folder: Path, tmp_path: Path, loads: list[str]) -> None:
    cache_dir = tmp_path / "cache"
    directory = build(midi_folder, cache_dir)
    assert len(loads) == 9 and sorted(p.name for p in directory.glob("shard-*")) == [
        SHARD_NAME.format(i) for i in range(5)
    ]
    before = snapshot(directory)
    loads.clear()
    start = time.perf_counter()
    again = build(midi_folder, cache_dir)
    elapsed = time.perf_counter() - start
    assert again == directory
    assert loads == []  # nothing parsed...
    assert snapshot(directory) == before  # ...and nothing rewritten, the manifest included
    assert elapsed < 1.0
    assert [p.name for p in cache_dir.iterdir()] == [directory.name]
    assert_clean(directory)


def test_a_changed_representation_or_source_gets_a_new_directory(
    midi_folder: Path, tmp_path: Path, loads: list[str]
) -> None:
    cache_dir = tmp_path / "cache"
    rep = PianoRollRepresentation(pitch_high=84)
    first = build(midi_folder, cache_dir, rep)
    before = snapshot(first)
    # The same configuration rebuilt from its dict (as a checkpoint does) maps to the same cache.
    assert build(midi_folder, cache_dir, build_representation(rep.to_config())) == first
    loads.clear()
    other = build(midi_folder, cache_dir, PianoRollRepresentation(pitch_high=83))
    assert other != first and other.parent == first.parent
    assert len(loads) == 9  # built from scratch
    assert snapshot(first) == before  # the old cache is left alone
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["representation"]["pitch_high"] == 83
    # A file added to the folder changes the source fingerprint, so the key too.
    muspy.write_midi(midi_folder / "added.mid", muspy.read_midi(next(midi_folder.rglob("piece0.mid"))))
    added = build(midi_folder, cache_dir, rep)
    assert added not in (first, other)
    assert json.loads((added / "manifest.json").read_text())["pieces"] == 7
    for directory in (first, other, added):
        assert_clean(directory)


# ------------------------------------------------------------------------------------------- resume
def test_a_killed_run_resumes_only_the_missing_shard(
    midi_folder: Path, tmp_path: Path, loads: list[str]
) -> None:
    directory = build(midi_folder, tmp_path / "cache")
    manifest = json.loads((directory / "manifest.json").read_text())
    corpus = load_cache(directory)
    before = snapshot(directory)
    (directory / "manifest.json").unlink()
    (directory / SHARD_NAME.format(2)).unlink()
    loads.clear()
    assert build(midi_folder, tmp_path / "cache") == directory
    assert sorted(loads) == ["b/piece2.mid", "b/piece4.mid"]  # the items of shard 2, and only those
    after = snapshot(directory)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {SHARD_NAME.format(2), "manifest.json"}
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    resumed = load_cache(directory)
    assert resumed.keys == corpus.keys and resumed.skipped == corpus.skipped
    assert all(np.array_equal(a, b) for a, b in zip(resumed.arrays, corpus.arrays))
    assert_clean(directory)


def test_a_killed_run_resumes_with_a_process_pool(midi_folder: Path, tmp_path: Path) -> None:
    directory = build(midi_folder, tmp_path / "cache", n_jobs=2)
    corpus = load_cache(directory)
    before = snapshot(directory)
    (directory / "manifest.json").unlink()
    (directory / SHARD_NAME.format(1)).unlink()
    build(midi_folder, tmp_path / "cache", n_jobs=2)
    after = snapshot(directory)
    assert {name for name in after if after[name] != before.get(name)} == {
        SHARD_NAME.format(1),
        "manifest.json",
    }
    resumed = load_cache(directory)
    assert resumed.keys == corpus.keys
    assert all(np.array_equal(a, b) for a, b in zip(resumed.arrays, corpus.arrays))
    assert_clean(directory)


def _slow_in_parent_dying_in_helper(real, parent: int, exit_code: int):
    """A MIDI loader: slow in this process (so the forked helper surely takes shards), fatal in the helper."""

    def load(item: SourceItem):
        if os.getpid() != parent:
            os._exit(exit_code)  # killed outright: no Python cleanup, no message
        time.sleep(0.05)
        return real(item)

    return load


def test_a_dead_helper_process_stops_the_build_with_a_clear_error_and_loses_nothing(
    midi_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = LOADERS["midi"]
    monkeypatch.setitem(LOADERS, "midi", _slow_in_parent_dying_in_helper(real, os.getpid(), 3))
    cache_dir = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=r"preprocessing process died \(exit code 3\)"):
        build(midi_folder, cache_dir, n_jobs=2)
    (directory,) = cache_dir.iterdir()
    assert not (directory / "manifest.json").exists()
    assert_clean(directory)  # the shards this process finished are whole; nothing half-written
    monkeypatch.setitem(LOADERS, "midi", real)
    assert build(midi_folder, cache_dir, n_jobs=2) == directory
    fresh = load_cache(build(midi_folder, tmp_path / "fresh"))
    resumed = load_cache(directory)
    assert resumed.keys == fresh.keys and resumed.skipped == fresh.skipped
    assert all(np.array_equal(a, b) for a, b in zip(resumed.arrays, fresh.arrays))


def test_an_error_in_a_helper_process_is_reported_with_its_traceback(
    midi_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamodules.cache as cache

    parent, real_save = os.getpid(), cache._atomic_save

    def save(path: Path, **arrays) -> None:
        if os.getpid() != parent:
            raise OSError(28, "No space left on device")
        time.sleep(0.05)
        real_save(path, **arrays)

    monkeypatch.setattr(cache, "_atomic_save", save)
    with pytest.raises(RuntimeError, match=r"(?s)preprocessing process failed.*OSError.*No space left"):
        build(midi_folder, tmp_path / "cache", n_jobs=2)
    (directory,) = (tmp_path / "cache").iterdir()
    assert_clean(directory)


def test_an_interrupted_run_leaves_whole_shards_and_finishes_later(
    midi_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = LOADERS["midi"]
    seen: list[str] = []

    def interrupted(item: SourceItem):
        seen.append(item.key)
        if item.key == "b/piece4.mid":  # the second item of shard 2: Ctrl-C in the middle of a shard
            raise KeyboardInterrupt
        return real(item)

    monkeypatch.setitem(LOADERS, "midi", interrupted)
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build(midi_folder, cache_dir)
    (directory,) = cache_dir.iterdir()
    assert sorted(p.name for p in directory.iterdir()) == [SHARD_NAME.format(0), SHARD_NAME.format(1)]
    assert_clean(directory)
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_cache(directory)

    seen.clear()
    monkeypatch.setitem(LOADERS, "midi", lambda item: seen.append(item.key) or real(item))
    assert build(midi_folder, cache_dir) == directory
    assert len(seen) == 5  # shards 2, 3 and 4
    assert_clean(directory)
    fresh = load_cache(build(midi_folder, tmp_path / "fresh"))
    resumed = load_cache(directory)
    assert resumed.keys == fresh.keys and resumed.skipped == fresh.skipped
    assert all(np.array_equal(a, b) for a, b in zip(resumed.arrays, fresh.arrays))


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full, say")


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "shard-00000.npz"
    _atomic_save(path, data=np.arange(5))
    with pytest.raises(RuntimeError, match="disk full"):
        _atomic_save(path, data=np.array([_Unpicklable()], dtype=object))
    with np.load(path) as f:
        assert f["data"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        _atomic_save(tmp_path / "never.npz", data=np.array([_Unpicklable()], dtype=object))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.npz"]  # no temporary file
    atomic_write_text(tmp_path / "manifest.json", "{}")
    atomic_write_text(tmp_path / "manifest.json", '{"pieces": 1}')
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"pieces": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000.npz"]


def test_shards_round_trip_both_piano_rolls_and_tokens(midi_folder: Path, tmp_path: Path) -> None:
    source = FolderSource(str(midi_folder))
    items = [i for i in source.items() if i.key.startswith(("a/", "b/"))]
    for rep in (PianoRollRepresentation(pitch_low=40, pitch_high=80), MelodyRepresentation(track=-1)):
        directory = build(midi_folder, tmp_path / "cache", rep, shard_size=4)
        # What a run loads is what encoding each file directly gives, whatever the shards store.
        for corpus in (load_cache(directory), load_cache(directory, rep)):
            assert corpus.keys == [i.key for i in items]
            for item, array in zip(items, corpus.arrays):
                expected = rep.encode(LOADERS["midi"](item))
                assert array.dtype == expected.dtype and array.shape == expected.shape
                assert np.array_equal(array, expected) and array.any()
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["steps"] == sum(len(a) for a in load_cache(directory).arrays)
        with np.load(directory / SHARD_NAME.format(0)) as shard:
            if rep.kind == "pianoroll":  # notes, not cells: (onset, end, flat track-pitch column)
                assert shard["data"].shape[1] == 3 and shard["data"].dtype == np.int32
            else:
                assert shard["data"].ndim == 1


def test_piano_roll_compact_form_is_small_and_expands_to_the_roll(midi_folder: Path) -> None:
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=40, pitch_high=80)
    for path in sorted(midi_folder.rglob("piece*.mid")):
        music = muspy.read_midi(path)
        compact = rep.encode_compact(music)
        roll = rep.expand(compact)
        assert np.array_equal(roll, rep.encode(music))
        assert rep.compact_steps(compact) == len(roll) and rep.compact_is_silent(compact) == (not roll.any())
        assert compact.nbytes < roll.nbytes
    assert rep.expand(rep.encode_compact(muspy.Music(resolution=4))).shape == (0, 2, 41)


# ------------------------------------------------------------------------------------------ skipped
def test_skipped_files_are_counted_with_reasons(midi_folder: Path, tmp_path: Path) -> None:
    high = muspy.Music(resolution=4, tracks=[muspy.Track(notes=[muspy.Note(0, 100, 16, 80)])])
    muspy.write_midi(midi_folder / "too_high.mid", high)
    short = muspy.Music(resolution=4, tracks=[muspy.Track(notes=[muspy.Note(0, 60, 4, 80)])])
    muspy.write_midi(midi_folder / "short.mid", short)
    directory = build(midi_folder, tmp_path / "cache", PianoRollRepresentation(pitch_high=84), min_steps=8)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["pieces"] == 6
    assert manifest["skipped"] == 5
    assert manifest["skipped_by_reason"] == {
        "unreadable": 2,
        "no notes": 1,
        "no notes in the representation's tracks and pitch range": 1,
        "too short": 1,
    }
    reasons = dict(load_cache(directory).skipped)
    assert set(reasons) == {"corrupt.mid", "empty.mid", "silent.mid", "too_high.mid", "short.mid"}
    assert reasons["silent.mid"] == "no notes"
    assert reasons["short.mid"] == "too short: 4 steps < 8"
    assert reasons["empty.mid"].startswith("unreadable: ")
    assert len(manifest["skipped_first"]) == 5 and any(
        "corrupt.mid (unreadable" in s for s in manifest["skipped_first"]
    )

    dm = MusicDataModule(
        FolderSource(str(midi_folder)),
        PianoRollRepresentation(pitch_high=84),
        cache_dir=str(tmp_path / "cache"),
        window=16,
        min_steps=8,
        n_jobs=1,
    )
    dm.setup()
    summary = dm.data_summary()
    assert summary["data/skipped"] == 5 and summary["data/skipped_by_reason"]["unreadable"] == 2
    assert sum(summary[f"data/pieces_{s}"] for s in ("train", "val", "test")) >= 6


# ------------------------------------------------------------------------------------------- split
@SETTINGS
@given(
    key=st.text(min_size=1, max_size=40),
    val=st.floats(0, 0.5),
    test=st.floats(0, 0.5),
    more=st.floats(0, 0.5),
)
def test_hash_split_grows_a_split_without_reshuffling(key: str, val: float, test: float, more: float) -> None:
    split = hash_split(key, val, test)
    assert split in {"train", "val", "test"}
    assert hash_split(key, val, test) == split
    # A larger test fraction only pulls keys into test; a key already there stays.
    if split == "test":
        assert hash_split(key, val, test + more) == "test"
    if split == "train":
        assert hash_split(key, max(val - more, 0.0), test) == "train"


def test_hash_split_fractions_and_pinned_values() -> None:
    keys = [f"lakh/{i:05d}.mid" for i in range(4000)]
    splits = [hash_split(k, 0.1, 0.2) for k in keys]
    fractions = {s: splits.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(fractions["test"] - 0.2) < 0.03 and abs(fractions["val"] - 0.1) < 0.03
    # Pinned: the split must not depend on the process (Python's salted hash()) or change between
    # releases, or a re-run would leak test pieces into training.
    assert {s: splits.count(s) for s in ("train", "val", "test")} == {"train": 2776, "val": 445, "test": 779}
    assert splits[:10] == [
        "train",
        "test",
        "test",
        "test",
        "train",
        "test",
        "train",
        "train",
        "train",
        "test",
    ]
    assert hash_split("JSB_Chorales/test/0001", 0.1, 0.2) == "val"
    assert hash_split("bach/bwv1.6.mxl", 0.1, 0.2) == "train"


def test_adding_files_never_moves_old_pieces_between_splits(tmp_path: Path) -> None:
    root = write_midi_folder(tmp_path / "midi", n_good=24, bad=False)

    def splits() -> dict[str, str]:
        dm = MusicDataModule(
            FolderSource(str(root)),
            PianoRollRepresentation(),
            cache_dir=str(tmp_path / "cache"),
            window=16,
            val_fraction=0.25,
            test_fraction=0.25,
            min_steps=1,
            n_jobs=1,
        )
        dm.setup()
        assert all(dm.split_keys[s] for s in ("train", "val", "test"))  # no borrowed pieces
        return {key: split for split, keys in dm.split_keys.items() for key in keys}

    old = splits()
    assert len(old) == 24
    write_midi_folder(root / "new", n_good=12, seed=1, bad=False)
    new = splits()
    assert len(new) == 36 and len(list((tmp_path / "cache").iterdir())) == 2
    assert {key: new[key] for key in old} == old


# ------------------------------------------------------------------------------------------ windows
def rolls_of(lengths: list[int], seed: int = 0, pitches: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((n, 2, pitches)) < 0.2 for n in lengths]


def test_windows_mask_and_padding() -> None:
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=60, pitch_high=71)
    arrays = rolls_of([5, 16, 37])
    ds = WindowDataset(arrays, rep, window=16, stride=8)
    assert ds.index == [(0, 0), (1, 0), (2, 0), (2, 8), (2, 16), (2, 21)]  # the tail window ends at 37
    for i, (piece, start) in enumerate(ds.index):
        example = ds[i]
        x, mask = example["x"], example["mask"]
        assert x.shape == (16, 2, 12) and x.dtype == torch.float32
        assert mask.shape == (16,) and mask.dtype == torch.bool
        real = min(16, len(arrays[piece]) - start)
        assert mask.tolist() == [True] * real + [False] * (16 - real)
        assert np.array_equal(x[:real].numpy().astype(bool), arrays[piece][start : start + real])
        assert not x[real:].any()
    whole = WindowDataset(arrays, rep, window=None)
    batch = pad_collate([whole[i] for i in range(len(whole))])
    assert batch["x"].shape == (3, 37, 2, 12)
    assert batch["mask"].sum(dim=1).tolist() == [5, 16, 37]
    assert not batch["x"][0, 5:].any()
    assert np.array_equal(batch["x"][1, :16].numpy().astype(bool), arrays[1])


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=5), window=st.integers(1, 24), data=st.data()
)
def test_windows_cover_every_step(lengths: list[int], window: int, data: st.DataObject) -> None:
    # Coverage is promised for a stride up to the window (a longer hop skips steps on purpose).
    stride = data.draw(st.integers(1, window))
    rep = MelodyRepresentation()
    arrays = [np.arange(2, n + 2, dtype=np.int16) % rep.vocab_size for n in lengths]
    ds = WindowDataset(arrays, rep, window=window, stride=stride)
    covered = [np.zeros(n, dtype=bool) for n in lengths]
    for i, (piece, start) in enumerate(ds.index):
        example = ds[i]
        assert example["x"].shape == (window,) and example["x"].dtype == torch.int64
        real = int(example["mask"].sum())
        assert real == min(window, lengths[piece])  # only pieces shorter than the window pad
        assert example["x"][:real].tolist() == arrays[piece][start : start + real].tolist()
        covered[piece][start : start + real] = True
    assert all(c.all() for c in covered)


@SETTINGS
@given(
    low=st.integers(0, 11),
    span=st.integers(0, 11),
    seed=st.integers(0, 2**16),
    max_shift=st.integers(1, 12),
)
def test_transposition_augmentation_stays_in_range(low: int, span: int, seed: int, max_shift: int) -> None:
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=60, pitch_high=71)
    high = min(low + span, 11)
    rng = np.random.default_rng(seed)
    roll = np.zeros((24, 2, 12), dtype=bool)
    roll[rng.integers(0, 24, 30), rng.integers(0, 2, 30), rng.integers(low, high + 1, 30)] = True
    roll[0, 0, low] = roll[1, 1, high] = True
    ds = WindowDataset([roll], rep, window=24, transpose=max_shift, seed=seed)
    shifts = set()
    assert np.array_equal(ds[0]["x"].numpy().astype(bool), roll)  # a plain index: no augmentation
    for epoch in range(12):
        x = ds[(0, epoch)]["x"].numpy().astype(bool)
        assert x.sum() == roll.sum()  # no note pushed off either edge
        shift = rep.pitch_extent(x)[0] - low
        assert -max_shift <= shift <= max_shift
        assert low + shift >= 0 and high + shift <= 11
        assert np.array_equal(x, rep.transpose(roll, shift))
        shifts.add(shift)
    room = min(max_shift, low) + min(max_shift, 11 - high)
    if room >= 2:  # augmentation actually happens when there is room (12 draws)
        assert len(shifts) > 1


def test_melody_transposition_stays_in_the_vocabulary() -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72)
    tokens = np.array([2, 0, 1, 26, 0, 14, 1, 0] * 4, dtype=np.int16)  # pitches 48, 72, 60
    ds = WindowDataset([tokens], rep, window=16, stride=16, transpose=6, seed=3)
    for i in range(len(ds)):
        for epoch in range(10):
            x = ds[(i, epoch)]["x"].numpy()
            assert x.min() >= 0 and x.max() < rep.vocab_size
            # 48 and 72 are the range's edges: no room to move either way.
            assert np.array_equal(x, tokens[16 * i : 16 * i + 16])
    middle = np.array([8, 0, 1, 20, 0, 1], dtype=np.int16)  # pitches 54 and 66: room of 6 both ways
    ds = WindowDataset([middle], rep, window=6, transpose=6, seed=0)
    seen = {int(ds[(0, epoch)]["x"][0]) - 8 for epoch in range(40)}
    assert seen <= set(range(-6, 7)) and len(seen) > 3


def test_datamodule_batches_from_real_midi(midi_folder: Path, tmp_path: Path) -> None:
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=36, pitch_high=84)
    dm = MusicDataModule(
        FolderSource(str(midi_folder)),
        rep,
        cache_dir=str(tmp_path / "cache"),
        window=16,
        batch_size=4,
        transpose=4,
        n_jobs=1,
    )
    dm.prepare_data()
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert batch["x"].shape[1:] == (16, 2, rep.n_pitches) and batch["x"].dtype == torch.float32
        assert batch["mask"].shape == batch["x"].shape[:2]
        assert set(batch["x"].unique().tolist()) <= {0.0, 1.0}
        assert batch["x"].sum() > 0
    # The cache the datamodule built is the one `build_cache` finds again.
    assert dm.cache_directory() == build_cache(
        FolderSource(str(midi_folder)), rep, tmp_path / "cache", n_jobs=1, min_steps=8, progress=False
    )


# ---------------------------------------------------------------------------------- compact pieces
@SETTINGS
@given(
    notes=st.lists(
        st.tuples(st.integers(0, 60), st.integers(1, 20), st.integers(0, 1), st.integers(0, 11)),
        max_size=40,
    ),
    start=st.integers(0, 90),
    length=st.integers(0, 40),
)
@example(notes=[(0, 2, 0, 0)], start=1, length=0)  # an empty window inside a note (found by CI)
def test_a_window_drawn_from_notes_equals_the_slice_of_the_whole_roll(
    notes: list[tuple[int, int, int, int]], start: int, length: int
) -> None:
    # Overlapping notes, notes that straddle the window's edges and windows past the end included.
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=60, pitch_high=71)
    compact = np.array(
        [(onset, onset + duration, track * 12 + pitch) for onset, duration, track, pitch in notes],
        dtype=np.int32,
    ).reshape(-1, 3)
    whole = rep.expand(compact)
    window = rep.expand_window(compact, start, length)
    assert window.dtype == whole.dtype and window.shape[1:] == whole.shape[1:]
    assert np.array_equal(window, whole[start : start + length])
    # A representation without a compact form stores its encoded arrays (`compact_codec`).
    tokens = compact_codec(MelodyRepresentation())
    melody = np.arange(30, dtype=np.int16) % MelodyRepresentation().vocab_size
    assert np.array_equal(tokens.expand_window(melody, start, length), melody[start : start + length])


def test_the_datamodule_keeps_pieces_compact_and_serves_the_same_windows(
    midi_folder: Path, tmp_path: Path
) -> None:
    from datamodules.pieces import CompactPieces

    rep = PianoRollRepresentation(n_tracks=2, pitch_low=36, pitch_high=84)
    dm = MusicDataModule(
        FolderSource(str(midi_folder)), rep, cache_dir=str(tmp_path / "cache"), window=16, n_jobs=1
    )
    dm.setup()
    for split, pieces in dm.split_arrays.items():
        assert isinstance(pieces, CompactPieces) and len(pieces) == len(dm.split_keys[split])
        dense = [pieces[i] for i in range(len(pieces))]
        assert list(pieces.steps) == [len(a) for a in dense]
        assert pieces.nbytes < sum(a.nbytes for a in dense)
        # The windows drawn from notes are the windows sliced from the dense rolls.
        from_notes = dm.datasets[split]
        from_rolls = WindowDataset(dense, rep, window=16, stride=dm.stride if split == "train" else 16)
        assert from_rolls.index == from_notes.index
        for i in range(len(from_notes)):
            a, b = from_notes[i], from_rolls[i]
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["mask"], b["mask"])
    # Every piece is in exactly one split (the tiny-corpus borrowing aside) and expands to its encoding.
    source = FolderSource(str(midi_folder))
    items = {item.key: item for item in source.items()}
    for key, roll in zip(dm.split_keys["train"], dm.split_arrays["train"]):
        assert np.array_equal(roll, rep.encode(LOADERS["midi"](items[key])))


def _shifts(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    """The transposition of every example: where its one note landed (it starts at index 6)."""
    return [int(x.reshape(len(x), -1).any(0).nonzero()[0]) - 6 for b in batches for x in b["x"]]


def test_every_worker_draws_its_own_transpositions_and_a_resume_draws_the_same() -> None:
    from torch.utils.data import DataLoader

    from datamodules.music_datamodule import EpochSampler, pad_collate

    rep = PianoRollRepresentation(n_tracks=1, pitch_low=60, pitch_high=71)
    roll = np.zeros((4, 1, 12), dtype=bool)
    roll[:, 0, 6] = True  # one held note in the middle of the range: room to move 6 down, 5 up
    ds = WindowDataset([roll] * 64, rep, window=4, transpose=5, seed=11)

    def epoch_shifts(workers: int, epoch: int) -> list[int]:
        sampler = EpochSampler(ds, num_replicas=1, rank=0, shuffle=False, seed=11)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=pad_collate)
        return _shifts(list(loader))

    one, two = epoch_shifts(0, 0), epoch_shifts(2, 0)
    assert one == two  # the same draws with any number of workers...
    per_batch = [tuple(two[i : i + 8]) for i in range(0, 64, 8)]
    assert len(set(per_batch)) == len(per_batch)  # ...and no two workers' batches draw alike
    assert len(set(one)) > 5
    assert epoch_shifts(0, 1) != one  # another epoch, other draws; the same epoch again, the same
    assert epoch_shifts(2, 1) == epoch_shifts(0, 1)
