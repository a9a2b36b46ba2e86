"""Representations on random real `muspy.Music`: round trips, range edges, chords, MIDI agreement.

Properties are checked with hypothesis. The piano-roll is also checked against a plain per-note
reference encoder, so the vectorised `PianoRollRepresentation.encode` keeps the meaning of the
simple loop it replaced.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import muspy
import numpy as np
import pytest
import symusic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.notes import DURATION, ONSET, PITCH, NoteTable, TrackNotes
from datamodules.representations import DEFAULT_PROGRAM_GROUPS, MelodyRepresentation, PianoRollRepresentation

# The autouse W&B fixture only sets environment variables, so reusing it across examples is safe.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NAME_POOL = ["Soprano", "alto", "Tenor 1", "BASS", "s.", "piano", "Guitar", "", "violin"]
NAME_PREFIXES = [["soprano", "s."], ["alto"], ["tenor"], ["bass"]]


def piano_rolls() -> dict[str, PianoRollRepresentation]:
    """One piano-roll per track mode, with ranges small enough that random notes fall outside."""
    return {
        "index": PianoRollRepresentation(n_tracks=3, track_mode="index", pitch_low=40, pitch_high=80),
        "name": PianoRollRepresentation(
            n_tracks=4, track_mode="name", track_names=NAME_PREFIXES, pitch_low=36, pitch_high=84
        ),
        "program": PianoRollRepresentation(
            n_tracks=len(DEFAULT_PROGRAM_GROUPS), track_mode="program", pitch_low=24, pitch_high=96
        ),
        "merge": PianoRollRepresentation(track_mode="merge", pitch_low=21, pitch_high=108, steps_per_beat=2),
        "drums": PianoRollRepresentation(n_tracks=3, track_mode="index", drum_track=2),
    }


# ----------------------------------------------------------------------------------------- strategies
@st.composite
def musics(draw: st.DrawFn, max_tracks: int = 5, drums: bool = True) -> muspy.Music:
    """Random valid polyphonic music: any resolution, off-grid onsets, any pitch, drums, names."""
    resolution = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 24, 96, 480]))
    music = muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)])
    for _ in range(draw(st.integers(0, max_tracks))):
        notes = draw(
            st.lists(
                st.tuples(
                    st.integers(0, 16 * resolution),  # onset (ticks)
                    st.integers(0, 127),  # pitch
                    st.integers(1, 4 * resolution),  # duration (ticks)
                ),
                max_size=25,
            )
        )
        music.tracks.append(
            muspy.Track(
                program=draw(st.integers(0, 127)),
                is_drum=drums and draw(st.integers(0, 4)) == 0,
                name=draw(st.sampled_from(NAME_POOL)),
                notes=[muspy.Note(t, p, d, 80) for t, p, d in notes],
            )
        )
    return music


def without_same_pitch_contact(notes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Drop notes that overlap or touch an earlier kept note of the same pitch.

    A piano-roll (and a MIDI channel) cannot tell two such notes from one long note.
    """
    kept: list[tuple[int, int, int]] = []
    last_end: dict[int, int] = {}
    for time, pitch, duration in sorted(notes):
        if time > last_end.get(pitch, -1):
            kept.append((time, pitch, duration))
            last_end[pitch] = time + duration
    return kept


@st.composite
def chord_tracks(draw: st.DrawFn, low: int, high: int) -> list[tuple[int, int, int]]:
    """Chords of any shape (clusters, spreads, mixed durations, overlapping chords) on the step grid."""
    notes: list[tuple[int, int, int]] = []
    for _ in range(draw(st.integers(1, 8))):
        onset = draw(st.integers(0, 40))
        pitches = draw(st.sets(st.integers(low, high), min_size=1, max_size=8))
        same = draw(st.booleans())
        length = draw(st.integers(1, 6))
        for pitch in pitches:
            notes.append((onset, pitch, length if same else draw(st.integers(1, 6))))
    return without_same_pitch_contact(notes)


def reference_encode(rep: PianoRollRepresentation, music: muspy.Music) -> np.ndarray:
    """The straightforward piano-roll: one slice assignment per note (what encode must equal)."""
    table = NoteTable.from_music(music)
    cells = []
    for track, channel in zip(table.tracks, rep.route(table.tracks)):
        if channel is None:
            continue
        scale = rep.steps_per_beat / table.resolution  # the same float as encode, so ties round alike
        for onset, duration, pitch, _ in track.notes:
            start = int(np.rint(onset * scale))
            end = max(int(np.rint((onset + duration) * scale)), start + 1)
            if rep.pitch_low <= pitch <= rep.pitch_high:
                cells.append((start, end, channel, pitch - rep.pitch_low))
    roll = np.zeros((max((c[1] for c in cells), default=0), rep.n_tracks, rep.n_pitches), dtype=bool)
    for start, end, channel, pitch in cells:
        roll[start:end, channel, pitch] = True
    return roll


def note_set(track: muspy.Track) -> list[tuple[int, int, int]]:
    return sorted((n.time, n.pitch, n.duration) for n in track.notes)


# ----------------------------------------------------------------------------------------- piano-roll
@pytest.mark.parametrize("mode", ["index", "name", "program", "merge", "drums"])
@SETTINGS
@given(music=musics())
def test_pianoroll_round_trip_is_a_fixed_point(mode: str, music: muspy.Music) -> None:
    rep = piano_rolls()[mode]
    roll = rep.encode(music)
    assert roll.dtype == bool and roll.shape[1:] == (rep.n_tracks, rep.n_pitches)
    assert np.array_equal(roll, reference_encode(rep, music))
    decoded = rep.decode(roll)
    decoded.validate()
    assert decoded.resolution == rep.steps_per_beat
    assert len(decoded.tracks) == rep.n_tracks
    again = rep.encode(decoded)
    assert again.shape == roll.shape
    assert np.array_equal(again, roll)
    # A NoteTable encodes exactly like the Music it came from.
    assert np.array_equal(rep.encode(NoteTable.from_music(music)), roll)


def test_pianoroll_routes_tracks_by_mode() -> None:
    def track(name: str, program: int, pitch: int, is_drum: bool = False) -> muspy.Track:
        return muspy.Track(program=program, is_drum=is_drum, name=name, notes=[muspy.Note(0, pitch, 4, 80)])

    music = muspy.Music(
        resolution=4,
        tracks=[
            track("Bass", 34, 40),  # name -> bass (3); program -> basses (2)
            track("drums", 0, 41, is_drum=True),  # always dropped (no drum_track)
            track("S. 1", 41, 70),  # name -> soprano (0); program -> strings (3)
            track("harp", 46, 60),  # name -> none; program -> strings (3)
            track("Alto", 2, 65),  # name -> alto (1); program -> pianos (0)
        ],
    )
    rolls = piano_rolls()
    by_name = rolls["name"].encode(music)
    assert {(c, p + 36) for c, p in zip(*np.nonzero(by_name[0]))} == {(3, 40), (0, 70), (1, 65)}
    by_program = rolls["program"].encode(music)
    assert {(c, p + 24) for c, p in zip(*np.nonzero(by_program[0]))} == {(2, 40), (3, 70), (3, 60), (0, 65)}
    by_index = rolls["index"].encode(music)  # 4 non-drum tracks, 3 channels: the 4th is dropped
    assert {(c, p + 40) for c, p in zip(*np.nonzero(by_index[0]))} == {(0, 40), (1, 70), (2, 60)}
    merged = rolls["merge"].encode(music)
    assert sorted(p + 21 for p in np.nonzero(merged[0, 0])[0]) == [40, 60, 65, 70]


@SETTINGS
@given(tracks=st.lists(chord_tracks(36, 84), min_size=1, max_size=4))
def test_pianoroll_chords_survive_the_round_trip(tracks: list[list[tuple[int, int, int]]]) -> None:
    rep = PianoRollRepresentation(n_tracks=4, track_mode="index", pitch_low=36, pitch_high=84)
    music = muspy.Music(resolution=rep.steps_per_beat)
    for notes in tracks:
        music.tracks.append(muspy.Track(notes=[muspy.Note(t, p, d, 80) for t, p, d in notes]))
    decoded = rep.decode(rep.encode(music))
    for channel, notes in enumerate(tracks):
        assert note_set(decoded.tracks[channel]) == sorted(notes)
    for channel in range(len(tracks), rep.n_tracks):
        assert decoded.tracks[channel].notes == []


def test_pianoroll_drops_notes_outside_the_pitch_range() -> None:
    rep = PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=48, pitch_high=72)
    notes = [
        muspy.Note(0, 47, 2, 80),  # one below: dropped
        muspy.Note(0, 48, 2, 80),  # lowest kept
        muspy.Note(2, 72, 2, 80),  # highest kept
        muspy.Note(4, 73, 8, 80),  # one above, and the last to end: dropped, so the roll ends at 4
        muspy.Note(1, 0, 20, 80),
        muspy.Note(1, 127, 20, 80),
    ]
    roll = rep.encode(muspy.Music(resolution=4, tracks=[muspy.Track(notes=notes)]))
    assert roll.shape == (4, 1, 25)
    assert np.argwhere(roll[:, 0]).tolist() == [[0, 0], [1, 0], [2, 24], [3, 24]]
    assert rep.pitch_extent(roll) == (0, 24)
    only_outside = muspy.Music(resolution=4, tracks=[muspy.Track(notes=[notes[0], notes[3]])])
    assert rep.encode(only_outside).shape == (0, 1, 25)


def test_pianoroll_merges_notes_that_touch_and_quantises_to_the_nearest_step() -> None:
    rep = PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=60, pitch_high=71)
    # Resolution 8 at 4 steps per beat: 2 ticks a step. A 1-tick note still sounds for one step.
    music = muspy.Music(
        resolution=8,
        tracks=[
            muspy.Track(notes=[muspy.Note(0, 60, 4, 80), muspy.Note(4, 60, 4, 80), muspy.Note(9, 62, 1, 80)])
        ],
    )
    roll = rep.encode(music)
    assert roll.shape == (5, 1, 12)
    assert roll[:, 0, 0].tolist() == [True, True, True, True, False]
    assert roll[:, 0, 2].tolist() == [False, False, False, False, True]
    assert note_set(rep.decode(roll).tracks[0]) == [(0, 60, 4), (4, 62, 1)]


def test_pianoroll_many_long_overlapping_notes() -> None:
    # More sounding cells than the roll has (the encoder switches to a difference array here).
    rep = PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=60, pitch_high=61)
    notes = [muspy.Note(i, 60 + i % 2, 400, 80) for i in range(300)]
    music = muspy.Music(resolution=4, tracks=[muspy.Track(notes=notes)])
    roll = rep.encode(music)
    assert np.array_equal(roll, reference_encode(rep, music))
    # Pitch 60 sounds from step 0 (notes at even steps) to 697, pitch 61 from 1 to 698.
    assert roll.shape == (699, 1, 2) and roll[1:698].all()
    assert roll[0, 0].tolist() == [True, False] and roll[698, 0].tolist() == [False, True]


@pytest.mark.parametrize("mode", ["index", "name", "program", "merge"])
def test_pianoroll_decode_of_silence_is_valid_empty_music(mode: str, tmp_path: Path) -> None:
    rep = piano_rolls()[mode]
    for steps in (0, 16):
        music = rep.decode(np.zeros((steps, rep.n_tracks, rep.n_pitches), dtype=bool))
        music.validate()
        assert len(music.tracks) == rep.n_tracks
        assert sum(len(t.notes) for t in music.tracks) == 0
        path = tmp_path / f"silent-{mode}-{steps}.mid"
        muspy.write_midi(path, music)
        assert symusic.Score(str(path)).note_num() == 0
        assert rep.encode(music).shape == (0, rep.n_tracks, rep.n_pitches)


@SETTINGS
@given(data=st.data())
def test_pianoroll_transpose_and_extent_at_the_range_edges(data: st.DataObject) -> None:
    rep = PianoRollRepresentation(n_tracks=2, track_mode="index", pitch_low=60, pitch_high=71)
    steps = data.draw(st.integers(1, 12))
    roll = data.draw(
        st.lists(st.booleans(), min_size=steps * 24, max_size=steps * 24).map(
            lambda bits: np.array(bits, dtype=bool).reshape(steps, 2, 12)
        )
    )
    extent = rep.pitch_extent(roll)
    used = np.flatnonzero(roll.any(axis=(0, 1)))
    if not len(used):
        assert extent is None
        return
    assert extent == (used[0], used[-1])
    low, high = extent
    # Every shift that keeps the notes in range moves the extent and loses nothing.
    shift = data.draw(st.integers(-low, rep.n_pitches - 1 - high))
    moved = rep.transpose(roll, shift)
    assert moved.shape == roll.shape and moved.dtype == roll.dtype
    assert rep.pitch_extent(moved) == (low + shift, high + shift)
    assert moved.sum() == roll.sum()
    assert np.array_equal(rep.transpose(moved, -shift), roll)
    # One step past an edge drops exactly the notes at that edge.
    up = rep.transpose(roll, rep.n_pitches - high)
    assert up.sum() == roll.sum() - roll[..., high].sum()
    down = rep.transpose(roll, -low - 1)
    assert down.sum() == roll.sum() - roll[..., low].sum()


def test_pianoroll_to_config_rebuilds_the_same_representation() -> None:
    from datamodules.representations import build_representation

    for rep in piano_rolls().values():
        rebuilt = build_representation(rep.to_config())
        assert rebuilt.to_config() == rep.to_config()
        assert rebuilt.describe() == rep.describe()


# -------------------------------------------------------------------------------------------- melody
@st.composite
def monophonic_melodies(draw: st.DrawFn, low: int, high: int) -> list[tuple[int, int, int]]:
    """A melody on the step grid: notes one after another, with rests, repeated pitches allowed."""
    notes, time = [], draw(st.integers(0, 4))
    for _ in range(draw(st.integers(1, 20))):
        duration = draw(st.integers(1, 6))
        notes.append((time, draw(st.integers(low, high)), duration))
        time += duration + draw(st.sampled_from([0, 0, 0, 1, 3]))
    return notes


@pytest.mark.parametrize("track", [0, -1])
@SETTINGS
@given(music=musics(max_tracks=3))
def test_melody_one_encode_reaches_a_fixed_point(track: int, music: muspy.Music) -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72, track=track)
    tokens = rep.encode(music)
    assert tokens.dtype == np.int16 and tokens.ndim == 1
    assert ((tokens >= 0) & (tokens < rep.vocab_size)).all()
    decoded = rep.decode(tokens)
    decoded.validate()
    notes = decoded.tracks[0].notes
    # Monophonic: no two decoded notes overlap, and all lie in the vocabulary's range.
    assert all(a.time + a.duration <= b.time for a, b in itertools.pairwise(notes))
    assert all(rep.pitch_low <= n.pitch <= rep.pitch_high for n in notes)
    again = rep.encode(decoded)
    assert np.array_equal(again, tokens)
    assert np.array_equal(rep.encode(rep.decode(again)), again)


@SETTINGS
@given(melody=monophonic_melodies(48, 72))
def test_melody_round_trips_a_monophonic_melody_exactly(melody: list[tuple[int, int, int]]) -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72)
    music = muspy.Music(
        resolution=4, tracks=[muspy.Track(notes=[muspy.Note(t, p, d, 80) for t, p, d in melody])]
    )
    tokens = rep.encode(music)
    assert len(tokens) == melody[-1][0] + melody[-1][2]
    assert note_set(rep.decode(tokens).tracks[0]) == sorted(melody)


def test_melody_skyline_keeps_the_highest_note_and_cuts_at_the_next_onset() -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72, track=-1)
    music = muspy.Music(
        resolution=4,
        tracks=[
            muspy.Track(notes=[muspy.Note(0, 60, 8, 80), muspy.Note(4, 55, 2, 80)]),
            muspy.Track(notes=[muspy.Note(0, 64, 2, 80)]),
            muspy.Track(is_drum=True, notes=[muspy.Note(0, 70, 4, 80)]),  # drums never count
        ],
    )
    decoded = rep.decode(rep.encode(music))
    assert note_set(decoded.tracks[0]) == [(0, 64, 2), (4, 55, 2)]


def test_melody_folds_notes_outside_the_range_by_octaves() -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72)
    pitches = [0, 47, 48, 72, 73, 127]
    music = muspy.Music(
        resolution=1, tracks=[muspy.Track(notes=[muspy.Note(i, p, 1, 80) for i, p in enumerate(pitches)])]
    )
    tokens = rep.encode(music)
    decoded = [n.pitch for n in rep.decode(tokens).tracks[0].notes]
    assert decoded == [48, 59, 48, 72, 61, 67]
    assert all(d % 12 == p % 12 for d, p in zip(decoded, pitches))


def test_melody_decode_of_silence_is_valid_empty_music(tmp_path: Path) -> None:
    rep = MelodyRepresentation()
    for tokens in (np.zeros(0, dtype=np.int16), np.zeros(16, dtype=np.int16), np.ones(16, dtype=np.int16)):
        music = rep.decode(tokens)
        music.validate()
        assert music.tracks[0].notes == []
        path = tmp_path / f"silent-{len(tokens)}-{int(tokens.sum())}.mid"
        muspy.write_midi(path, music)
        assert symusic.Score(str(path)).note_num() == 0
    assert rep.encode(muspy.Music(resolution=4)).shape == (0,)


@SETTINGS
@given(melody=monophonic_melodies(48, 72), data=st.data())
def test_melody_transpose_and_extent_at_the_range_edges(
    melody: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    rep = MelodyRepresentation(pitch_low=48, pitch_high=72)
    music = muspy.Music(
        resolution=4, tracks=[muspy.Track(notes=[muspy.Note(t, p, d, 80) for t, p, d in melody])]
    )
    tokens = rep.encode(music)
    low, high = rep.pitch_extent(tokens)
    assert (low, high) == (min(p for _, p, _ in melody) - 48, max(p for _, p, _ in melody) - 48)
    shift = data.draw(st.integers(-low, rep.n_pitches - 1 - high))
    moved = rep.transpose(tokens, shift)
    assert rep.pitch_extent(moved) == (low + shift, high + shift)
    assert moved.max() < rep.vocab_size and moved.dtype == tokens.dtype
    # Only note-ons move: no-event and note-off tokens stay where they were.
    events = tokens < rep.FIRST_NOTE_ON
    assert np.array_equal(moved[events], tokens[events])
    assert note_set(rep.decode(moved).tracks[0]) == sorted((t, p + shift, d) for t, p, d in melody)
    assert np.array_equal(rep.transpose(moved, -shift), tokens)
    assert rep.pitch_extent(np.zeros(8, dtype=np.int16)) is None


def test_melody_needs_an_octave() -> None:
    with pytest.raises(ValueError, match="octave"):
        MelodyRepresentation(pitch_low=60, pitch_high=70)
    assert MelodyRepresentation(pitch_low=60, pitch_high=71).n_pitches == 12


# ----------------------------------------------------------------------------------------- NoteTable
def sorted_notes(notes: np.ndarray) -> list[tuple[int, ...]]:
    return sorted(tuple(int(v) for v in row) for row in notes)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(music=musics(max_tracks=4))
def test_note_table_readers_agree_on_a_midi_file_written_by_muspy(music: muspy.Music) -> None:
    # MIDI cannot hold two sounding notes of one pitch on one channel: keep such notes apart.
    for track in music.tracks:
        kept = without_same_pitch_contact([(n.time, n.pitch, n.duration) for n in track.notes])
        track.notes = [muspy.Note(t, p, d, int(60 + p % 50)) for t, p, d in kept]
    original = NoteTable.from_music(music)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "piece.mid"
        muspy.write_midi(path, music)
        by_symusic = NoteTable.read_midi(path)
        by_muspy = NoteTable.from_music(muspy.read_midi(path))
    assert by_symusic.resolution == by_muspy.resolution == music.resolution
    assert by_symusic.n_notes == by_muspy.n_notes == original.n_notes
    # Readers may drop empty tracks; the tracks with notes must match one to one, in order.
    tracks = [[t for t in table.tracks if len(t.notes)] for table in (original, by_symusic, by_muspy)]
    assert len(tracks[0]) == len(tracks[1]) == len(tracks[2])
    for ours, sym, mus in zip(*tracks):
        assert sorted_notes(sym.notes) == sorted_notes(ours.notes) == sorted_notes(mus.notes)
        assert (sym.program, sym.is_drum) == (mus.program, mus.is_drum) == (ours.program, ours.is_drum)
        assert sym.name == mus.name == ours.name
    # ...so every representation sees the same score whichever reader produced it.
    rep = piano_rolls()["program"]
    assert np.array_equal(rep.encode(by_symusic), rep.encode(original))


@SETTINGS
@given(music=musics())
def test_note_table_to_music_and_back(music: muspy.Music) -> None:
    table = NoteTable.from_music(music)
    rebuilt = NoteTable.from_music(table.to_music())
    assert rebuilt.resolution == table.resolution
    assert len(rebuilt.tracks) == len(table.tracks)
    for a, b in zip(table.tracks, rebuilt.tracks):
        assert (a.program, a.is_drum, a.name) == (b.program, b.is_drum, b.name)
        assert sorted_notes(a.notes) == sorted_notes(b.notes)
    assert table.n_notes == sum(len(t.notes) for t in music.tracks)
    ends = [n.time + n.duration for t in music.tracks for n in t.notes]
    assert table.end_tick == max(ends, default=0)


def test_note_table_columns() -> None:
    track = TrackNotes([[5, 3, 60, 90], [0, 2, 64, 70]])
    assert track.notes.dtype == np.int64 and track.notes.shape == (2, 4)
    assert track.notes[:, ONSET].tolist() == [5, 0]
    assert track.notes[:, DURATION].tolist() == [3, 2]
    assert track.notes[:, PITCH].tolist() == [60, 64]
    assert TrackNotes(np.zeros(0)).notes.shape == (0, 4)
