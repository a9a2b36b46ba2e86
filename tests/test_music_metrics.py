"""Music metrics, distribution overlap and memorisation, on hand-made music with known answers."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import muspy
import numpy as np
import pytest
import torch
from scipy import stats

from datamodules.representations import MelodyRepresentation, PianoRollRepresentation
from muselab.music.evaluation import decode_pieces, music_window, music_windows
from muselab.music.memorization import EVAL_STEPS_PER_BEAT, Memorization, MemorizationIndex, evaluation_roll
from muselab.music.metrics import (
    METRIC_NAMES,
    METRIC_RESOLUTION,
    MusicMetrics,
    distribution_overlap,
    music_metrics,
    overlap_area,
    tonal_distances,
)
from tests.conftest import bach_representation, random_music

RES = 4  # ticks per beat of the hand-made pieces


def piece(*tracks: list[tuple[float, int, float]], resolution: int = RES) -> muspy.Music:
    """Music from tracks of (onset beat, pitch, duration in beats) notes."""
    music = muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)])
    for i, notes in enumerate(tracks):
        music.tracks.append(
            muspy.Track(
                program=0,
                name=f"t{i}",
                notes=[muspy.Note(round(o * resolution), p, round(d * resolution), 64) for o, p, d in notes],
            )
        )
    return music


def assert_finite(values: dict[str, float]) -> None:
    assert set(values) <= set(METRIC_NAMES)
    assert all(math.isfinite(v) for v in values.values()), values


C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


# ------------------------------------------------------------------------------------ per-piece metrics
def test_c_major_scale() -> None:
    with_octave = music_metrics(piece([(i, p, 1) for i, p in enumerate([*C_MAJOR, 72])]))
    assert with_octave["scale_consistency"] == 1.0
    assert with_octave["n_pitches_used"] == 8
    assert with_octave["pitch_range"] == 12
    assert with_octave["polyphony"] == 1.0
    assert with_octave["empty_beat_rate"] == 0.0
    # C twice, six others once: -(1/4 log2 1/4 + 6/8 log2 1/8) = 0.5 + 2.25.
    assert with_octave["pitch_class_entropy"] == pytest.approx(2.75)
    # Bar 1 holds C D E F, bar 2 G A B C: 4 pitch classes in each single-track bar.
    assert with_octave["pitch_classes_per_bar"] == 4.0
    plain = music_metrics(piece([(i, p, 1) for i, p in enumerate(C_MAJOR)]))
    assert plain["n_pitches_used"] == 7
    assert plain["pitch_class_entropy"] == pytest.approx(math.log2(7))
    # One chromatic note out of eight breaks the scale: best scale holds 7/8.
    off = music_metrics(piece([(i, p, 1) for i, p in enumerate([*C_MAJOR, 61])]))
    assert off["scale_consistency"] == pytest.approx(7 / 8)


def test_pitch_class_entropy_extremes() -> None:
    chromatic = music_metrics(piece([(i / 4, 60 + i, 0.25) for i in range(12)]))
    assert chromatic["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert chromatic["pitch_classes_per_bar"] == 12
    cluster = music_metrics(piece([(0, 60 + i, 4) for i in range(12)]))
    assert cluster["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert cluster["polyphony"] == 12.0
    repeated = music_metrics(piece([(i, 67, 1) for i in range(8)]))
    assert repeated["pitch_class_entropy"] == 0.0
    assert math.copysign(1.0, repeated["pitch_class_entropy"]) == 1.0  # not -0.0


def test_polyphony_of_a_held_chord() -> None:
    chord = music_metrics(piece([(0, 60, 4), (0, 64, 4), (0, 67, 4)]))
    assert chord["polyphony"] == 3.0
    assert chord["n_pitches_used"] == 3
    # A triad for 2 beats then a single note for 2 beats: (3*2 + 1*2) / 4 sounding beats.
    mixed = music_metrics(piece([(0, 60, 2), (0, 64, 2), (0, 67, 2), (2, 72, 2)]))
    assert mixed["polyphony"] == pytest.approx(2.0)


def test_empty_beats_and_bars() -> None:
    # Beats 0 and 2 sound, beat 1 is silent. (muspy 0.5.0 says 0.0 here: it marks beat 1 as sounding
    # because the first note ends on its first tick.)
    assert music_metrics(piece([(0, 60, 1), (2, 62, 1)]))["empty_beat_rate"] == pytest.approx(1 / 3)
    # 8 beats, notes on beats 0, 3 and 7 only.
    sparse = music_metrics(piece([(0, 60, 1), (3, 60, 1), (7, 60, 1)]))
    assert sparse["empty_beat_rate"] == pytest.approx(5 / 8)
    # Trailing silence counts when something marks the end (here a bar line after 2 bars).
    marked = piece([(0, 60, 1)])
    assert music_metrics(marked)["empty_beat_rate"] == 0.0
    marked.barlines.append(muspy.Barline(time=8 * RES))
    assert music_metrics(marked)["empty_beat_rate"] == pytest.approx(7 / 8)
    assert music_metrics(marked)["empty_bar_rate"] == pytest.approx(1 / 2)
    # Track 0 plays all 4 bars, track 1 only bar 0: empty-bar rates 0 and 3/4, mean 3/8.
    two = music_metrics(piece([(b * 4, 60, 4) for b in range(4)], [(0, 48, 4)]))
    assert two["empty_bar_rate"] == pytest.approx(3 / 8)
    assert two["empty_beat_rate"] == 0.0
    # In 2-beat bars, each of two tracks plays one bar of four.
    assert music_metrics(piece([(0, 60, 2)], [(6, 60, 2)]), beats_per_bar=2)["empty_bar_rate"] == 0.75


def test_groove_consistency() -> None:
    same = piece([(b, 60, 1) for b in range(16)])
    assert music_metrics(same)["groove_consistency"] == 1.0  # muspy 0.5.0: 0.9375 (a phantom 5th bar)
    # Bars alternate 4 onsets / 1 onset: 3 differing positions between neighbours, 3 neighbour pairs.
    onsets = [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]  # beats of bars 0 and 2 (all four), 1 and 3 (first)
    alternating = music_metrics(piece([(o, 60, 1) for o in onsets]))
    steps_per_bar = 4 * METRIC_RESOLUTION
    assert alternating["groove_consistency"] == pytest.approx(1 - 9 / (3 * steps_per_bar))
    assert "groove_consistency" not in music_metrics(piece([(0, 60, 4)]))  # a single bar


def test_qualified_note_rate_and_resolution_invariance() -> None:
    # At 48 ticks per beat a 2-tick note is 1 step at 24 per beat: shorter than a 32nd note.
    music = piece([(0, 60, 2 / 48), (1, 62, 1), (2, 64, 3 / 48), (3, 65, 6 / 48)], resolution=48)
    assert music_metrics(music)["qualified_note_rate"] == pytest.approx(2 / 4)
    # The same music at 4 ticks per beat and at 10080 (music21's resolution) measures the same.
    low = random_music(np.random.default_rng(3), n_tracks=3, resolution=RES)
    high = low.deepcopy().adjust_resolution(10080)
    assert music_metrics(high) == pytest.approx(music_metrics(low))


def test_tonal_distance() -> None:
    # A voice an octave above another has the same chroma: distance 0.
    octave = music_metrics(
        piece([(i, p, 1) for i, p in enumerate(C_MAJOR)], [(i, p - 12, 1) for i, p in enumerate(C_MAJOR)])
    )
    assert octave["tonal_distance"] == pytest.approx(0.0, abs=1e-12)

    # C against G for one beat: Harte's tonal centroids of pitch classes 0 and 7, by hand.
    def centroid(pc: int) -> np.ndarray:
        angles = [(1.0, 7 / 6), (1.0, 3 / 2), (0.5, 2 / 3)]
        return np.array([f(pc * a * math.pi) * r for r, a in angles for f in (math.sin, math.cos)])

    expected = float(np.linalg.norm(centroid(0) - centroid(7)))
    fifth = music_metrics(piece([(0, 60, 1)], [(0, 67, 1)]))
    assert fifth["tonal_distance"] == pytest.approx(expected)
    # Three voices C, G, C: pairs (C,G), (C,C), (G,C) average to 2/3 of the C-G distance.
    three = music_metrics(piece([(0, 60, 1)], [(0, 67, 1)], [(0, 48, 1)]))
    assert three["tonal_distance"] == pytest.approx(2 * expected / 3)
    # Beats where only one voice sounds do not count; a single sounding voice has no distance.
    roll_a = np.zeros((8, 128), bool)
    roll_b = np.zeros((8, 128), bool)
    roll_a[:, 60] = True
    roll_b[4:, 67] = True
    assert np.allclose(tonal_distances(roll_a, roll_b, 4), [expected])
    assert "tonal_distance" not in music_metrics(piece([(0, 60, 4)], []))


def test_silence_and_a_held_note_are_nan_free() -> None:
    silent_values = {
        "pitch_class_entropy": 0.0,
        "pitch_range": 0.0,
        "n_pitches_used": 0.0,
        "empty_beat_rate": 1.0,
        "empty_bar_rate": 1.0,
    }
    for silent in (muspy.Music(resolution=RES), piece([], []), piece([], resolution=10080)):
        assert music_metrics(silent) == silent_values
    drums_only = piece([(0, 36, 1)])
    drums_only.tracks[0].is_drum = True
    drummed = music_metrics(drums_only)
    assert drummed["pitch_range"] == 0.0 and drummed["empty_beat_rate"] == 0.0  # muspy says -127
    assert_finite(drummed)
    held = music_metrics(piece([(0, 60, 8)]))  # two bars
    assert_finite(held)
    assert held["pitch_class_entropy"] == 0.0
    assert held["scale_consistency"] == 1.0
    assert held["polyphony"] == 1.0
    assert held["empty_beat_rate"] == 0.0
    assert held["groove_consistency"] == pytest.approx(1 - 1 / (4 * METRIC_RESOLUTION))
    assert "tonal_distance" not in held
    # Untrained-model noise: dense, every metric defined and finite.
    noisy = music_metrics(random_music(np.random.default_rng(0), n_tracks=4, n_notes=200))
    assert set(noisy) == set(METRIC_NAMES)
    assert_finite(noisy)


# ------------------------------------------------------------------------------------ MusicMetrics
def _pieces() -> list[muspy.Music]:
    rng = np.random.default_rng(1)
    return [
        random_music(rng, n_tracks=2),
        piece([(i, p, 1) for i, p in enumerate(C_MAJOR)]),  # one track: no tonal distance
        muspy.Music(resolution=RES),  # silence: several metrics skipped
        random_music(rng, n_tracks=3, n_notes=20),
        piece([(0, 60, 4), (0, 64, 4), (0, 67, 4)]),
    ]


def test_music_metrics_metric_is_the_mean_over_pieces() -> None:
    pieces = _pieces()
    per_piece = [music_metrics(m) for m in pieces]
    metric = MusicMetrics()
    metric.update(pieces[:2])
    metric.update(pieces[2:])
    result = metric.compute()
    assert set(result) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        defined = [p[name] for p in per_piece if name in p]
        assert result[name].item() == pytest.approx(np.mean(defined), rel=1e-6), name
    values = metric.values()
    assert len(values["pitch_class_entropy"]) == 5  # defined on silence
    assert len(values["tonal_distance"]) == 2  # only the two multi-track random pieces
    assert values["polyphony"].tolist() == pytest.approx(
        [p["polyphony"] for p in per_piece if "polyphony" in p]
    )
    metric.reset()
    metric.update([muspy.Music(resolution=RES)])
    assert set(metric.compute()) == {
        "pitch_class_entropy",
        "pitch_range",
        "n_pitches_used",
        "empty_beat_rate",
        "empty_bar_rate",
    }
    with pytest.raises(ValueError, match="unknown music metrics"):
        MusicMetrics(names=["polyphony", "nonsense"])
    only = MusicMetrics(names=["polyphony"], beats_per_bar=3)
    only.update(pieces)
    assert set(only.compute()) == {"polyphony"}


# ------------------------------------------------------------------------------------ overlap
def test_overlap_area() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=300)
    assert overlap_area(a, a) == pytest.approx(1.0, abs=1e-6)
    assert overlap_area(a, a + 50) == pytest.approx(0.0, abs=1e-6)
    # Two unit normals one standard deviation apart overlap by 2 * Phi(-1/2) ~ 0.617.
    x, y = rng.normal(0, 1, 4000), rng.normal(1, 1, 4000)
    assert overlap_area(x, y) == pytest.approx(2 * stats.norm.cdf(-0.5), abs=0.03)
    assert overlap_area(torch.from_numpy(x), y) == pytest.approx(overlap_area(y, x), abs=1e-6)
    # Degenerate samples: equal constants overlap fully, different ones not at all.
    assert overlap_area([3.0, 3.0], [3.0]) == 1.0
    assert overlap_area([3.0], [4.0]) == 0.0
    assert overlap_area([1.0, 2.0], [1.0, 2.0]) == pytest.approx(1.0)
    # A point inside a spread sample overlaps partly; far outside it does not.
    inside, outside = overlap_area([0.0], a), overlap_area([100.0], a)
    assert 0.2 < inside < 0.8 and outside == pytest.approx(0.0, abs=1e-6)
    assert overlap_area([], a) == 0.0
    assert 0.0 <= overlap_area([np.nan, 1.0, 2.0], [1.5, np.inf, 2.5]) <= 1.0


def test_distribution_overlap_between_generated_and_real() -> None:
    rng = np.random.default_rng(2)
    real, generated, silent = MusicMetrics(), MusicMetrics(), MusicMetrics()
    real.update([random_music(rng, n_tracks=2) for _ in range(6)])
    generated.update([random_music(rng, n_tracks=2) for _ in range(6)])
    silent.update([muspy.Music(resolution=RES)] * 6)
    same = distribution_overlap(generated.values(), real.values())
    assert set(same) == set(METRIC_NAMES)
    assert all(0.0 <= v <= 1.0 for v in same.values())
    # Silence shares nothing with random music (and has no polyphony etc. to compare).
    apart = distribution_overlap(silent.values(), real.values())
    assert set(apart) == {
        "pitch_class_entropy",
        "pitch_range",
        "n_pitches_used",
        "empty_beat_rate",
        "empty_bar_rate",
    }
    assert apart["n_pitches_used"] < 0.01 and apart["empty_beat_rate"] < 0.01
    assert same["n_pitches_used"] > apart["n_pitches_used"] + 0.3
    assert distribution_overlap({"x": torch.ones(3)}, {"y": torch.ones(3)}) == {}


# ------------------------------------------------------------------------------------ memorisation
@pytest.fixture(scope="module")
def bach(tmp_path_factory: pytest.TempPathFactory):
    from datamodules import MusicDataModule
    from datamodules.sources import Music21CorpusSource

    dm = MusicDataModule(
        Music21CorpusSource("bach", limit=12),
        bach_representation(),
        cache_dir=str(tmp_path_factory.mktemp("memo-cache")),
        window=32,
        n_jobs=1,
    )
    dm.prepare_data()
    dm.setup()
    return dm


def brute_force_counts(train: list[muspy.Music], generated: list[muspy.Music], window: int, hop: int):
    """Exact window bytes of the evaluation rolls in a Python set: the reference the hashed index
    must agree with."""
    rolls = [evaluation_roll(m) for m in train]
    seen = {a[s : s + window].tobytes() for a in rolls for s in range(len(a) - window + 1)}
    matched = total = 0
    for g in map(evaluation_roll, generated):
        for s in range(0, len(g) - window + 1, hop):
            chunk = g[s : s + window]
            if chunk[:, :128].any():
                total += 1
                matched += chunk.tobytes() in seen
    return matched, total


def concatenated(a: muspy.Music, b: muspy.Music) -> muspy.Music:
    """``b`` after ``a`` (same resolution), on one track per pair of tracks."""
    out = muspy.Music(resolution=a.resolution, tempos=[muspy.Tempo(0, 120.0)])
    shift = a.get_end_time()
    notes = [muspy.Note(n.time, n.pitch, n.duration, 64) for t in a.tracks for n in t.notes]
    notes += [muspy.Note(n.time + shift, n.pitch, n.duration, 64) for t in b.tracks for n in t.notes]
    out.tracks.append(muspy.Track(notes=notes))
    return out


def test_memorization_of_real_chorales(bach) -> None:
    rep = bach.representation
    train = decode_pieces(bach.split_arrays["train"], rep)
    index = MemorizationIndex(train)
    window = 4 * 4 * EVAL_STEPS_PER_BEAT
    assert index.window == window == 192
    assert len(index) > 1000
    # Training pieces fed back are copies, however they are held.
    assert index.score(train) == 1.0
    assert index.score([m.deepcopy().adjust_resolution(24) for m in train[:2]]) == 1.0
    # Random music and silence are not.
    rng = np.random.default_rng(0)
    noise = [random_music(rng, n_tracks=4, n_notes=60, resolution=4) for _ in range(4)]
    assert index.score(noise) == 0.0
    assert index.score([rep.decode(np.zeros((128, 4, rep.n_pitches), bool))]) == 0.0
    assert index.score([music_window(train[0], 0, 10)]) == 0.0  # shorter than a window
    # Two excerpts and two noise pieces, one 4-bar window each: exactly half. (Excerpts start at the
    # pieces' start: cutting a piece elsewhere would turn the notes it cuts into new onsets.)
    bar = 16  # ticks per bar at the chorales' 4 steps per beat
    excerpts = [music_window(train[0], 0, 5 * bar), music_window(train[1], 0, 4 * bar + 3)]
    bar_hop = MemorizationIndex(train, hop_steps=window)
    assert bar_hop.score(excerpts + [music_window(n, 0, 4 * bar) for n in noise[:2]]) == 0.5
    # 4 copied bars then noise: only the first window is a copy.
    spliced = concatenated(music_window(train[2], 0, 4 * bar), music_window(noise[0], 0, 4 * bar))
    matched, total = index.counts([spliced])
    assert matched == 1 and total > 100
    # A copy transposed up a semitone is not verbatim.
    assert index.score([train[0].deepcopy().transpose(1)]) < 0.2
    # The hashed index agrees with exact comparison of window bytes.
    mixed = [spliced, train[3], noise[1], train[4].deepcopy().transpose(-2)]
    assert index.counts(mixed) == brute_force_counts(train, mixed, window, 1)


def test_token_and_pianoroll_codings_of_one_piece_measure_the_same() -> None:
    """Evaluation runs on decoded music: the same melody, coded as melody tokens or as a piano-roll,
    gets the same metrics and the same memorisation."""
    melody = MelodyRepresentation(pitch_low=48, pitch_high=84)
    roll = PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=48, pitch_high=84)
    rng = np.random.default_rng(3)
    onsets = np.cumsum(rng.integers(1, 5, 40))
    # Neighbours never share a pitch: a piano-roll cannot tell two touching notes of one pitch from one.
    pitches = 55 + np.cumsum(rng.integers(1, 6, 40)) % 25
    durations = np.diff(onsets, append=onsets[-1] + 2)
    notes = [muspy.Note(int(t), int(p), int(d), 80) for t, p, d in zip(onsets, pitches, durations)]
    music = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 120.0)], tracks=[muspy.Track(notes=notes)])
    by_tokens = melody.decode(melody.encode(music))
    by_roll = roll.decode(roll.encode(music))
    assert music_metrics(by_tokens) == music_metrics(by_roll)
    assert np.array_equal(evaluation_roll(by_tokens), evaluation_roll(by_roll))
    windows = music_windows([by_tokens], bars=4)
    assert MemorizationIndex([by_roll]).score(windows) == 1.0
    assert MemorizationIndex([by_tokens]).score(music_windows([by_roll], bars=4)) == 1.0


def test_memorization_metric() -> None:
    rng = np.random.default_rng(0)
    train = [random_music(rng, n_tracks=2, n_notes=30, resolution=4) for _ in range(3)]
    index = MemorizationIndex(train, n_bars=1, hop_steps=EVAL_STEPS_PER_BEAT * 4)
    metric = Memorization(index)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().item() == 0.0  # nothing seen yet
    metric.update(train[:1])
    assert metric.compute().item() == 1.0
    new = random_music(rng, n_tracks=2, n_notes=30, resolution=4)
    copies, windows = index.counts([new])
    assert copies == 0 and windows > 0
    metric.update([new])
    assert int(metric.matched) == int(metric.total) - windows
    with pytest.raises(ValueError, match="positive"):
        MemorizationIndex(train, hop_steps=0)


# ------------------------------------------------------------------------------------ DDP
def _ddp_pieces() -> tuple[list[muspy.Music], list[muspy.Music], list[muspy.Music]]:
    """Pieces for the DDP test (rebuilt identically in every process from fixed seeds)."""
    rng = np.random.default_rng(7)
    musics = [random_music(rng, n_tracks=1 + i % 3, n_notes=15 + 5 * i) for i in range(4)]
    musics.append(muspy.Music(resolution=RES))  # rank 1's silent piece: empty states for some metrics
    rolls = [(rng.random((96, 2, 12)) < 0.2) for _ in range(3)]
    generated = [
        rolls[0],
        rolls[1][:40],
        rng.random((80, 2, 12)) < 0.2,
        np.concatenate([rolls[2][:32], rolls[0][:32]]),
    ]
    rep = _ddp_representation()
    return musics, [rep.decode(r) for r in rolls], [rep.decode(g) for g in generated]


def _ddp_representation() -> PianoRollRepresentation:
    return PianoRollRepresentation(n_tracks=2, pitch_low=60, pitch_high=71)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        musics, train, generated = _ddp_pieces()
        metric = MusicMetrics()
        metric.update(musics[:3] if rank == 0 else musics[3:])
        rank0_only = MusicMetrics(names=["polyphony", "tonal_distance"])
        if rank == 0:  # rank 1 never updates: its list states stay empty
            rank0_only.update(musics)
        memo = Memorization(MemorizationIndex(train, n_bars=1, beats_per_bar=4))
        memo.update(generated[:1] if rank == 0 else generated[1:])
        result = {
            "compute": metric.compute(),
            "values": metric.values(),
            "rank0_only": rank0_only.compute(),
            "memo": memo.compute(),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_agree_between_one_and_two_ddp_processes(tmp_path: Path) -> None:
    musics, train, generated = _ddp_pieces()
    single = MusicMetrics()
    single.update(musics)
    rank0_only = MusicMetrics(names=["polyphony", "tonal_distance"])
    rank0_only.update(musics)
    memo = Memorization(MemorizationIndex(train, n_bars=1))
    memo.update(generated)
    expected_memo = memo.compute()
    assert 0.0 < expected_memo.item() < 1.0  # a mix of copies and new material

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)

    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["compute"], single.compute())
        torch.testing.assert_close(got["values"], single.values())
        torch.testing.assert_close(got["rank0_only"], rank0_only.compute())
        torch.testing.assert_close(got["memo"], expected_memo)
