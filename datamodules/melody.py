"""Melodies from any score: which track is the melody, one note at a time, and its key.

Small pure functions over `NoteTable` note arrays (columns onset, duration, pitch, velocity), shared
by every representation that reads a melody (Melody RNN's events, MusicVAE's melody and trio).

- `melody_tracks` picks the track(s) a melody is read from: the track whose name or program says it
  is the melody, else the only pitched track, else all pitched tracks (then `skyline` keeps the
  highest voice).
- `skyline` makes notes monophonic: at each onset the highest note wins and a note ends at the next
  onset at the latest.
- `major_key` estimates the key a melody is in, as Magenta does before transposing to C.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datamodules.notes import TrackNotes

# Lower-cased prefixes of track names that say "this is the melody" (a lead sheet's melody, a
# chorale's soprano, a pop song's vocal or lead).
MELODY_NAMES: tuple[str, ...] = (
    "melody",
    "melodie",
    "soprano",
    "sopran",
    "s.",
    "lead",
    "vocal",
    "voice",
    "vox",
)
# General MIDI programs that carry a melody: voice oohs, synth voice and the eight lead synths.
MELODY_PROGRAMS: frozenset[int] = frozenset({53, 54, *range(80, 88)})
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def melody_tracks(tracks: Sequence[TrackNotes], track: int | str = "auto") -> list[TrackNotes]:
    """The pitched tracks a melody is read from.

    ``track`` is an index among the pitched (non-drum, non-empty) tracks, ``-1`` or ``"skyline"``
    for all of them, or ``"auto"``: the first track whose name starts with one of `MELODY_NAMES`;
    else the one track whose program is in `MELODY_PROGRAMS`; else the only pitched track; else all
    pitched tracks (so that `skyline` takes the highest voice). An index past the last track gives
    no track.
    """
    pitched = [t for t in tracks if not t.is_drum and len(t.notes)]
    if track == "auto":
        named = [t for t in pitched if t.name.strip().lower().startswith(MELODY_NAMES)]
        if named:
            return named[:1]
        by_program = [t for t in pitched if t.program in MELODY_PROGRAMS]
        if len(by_program) == 1:
            return by_program
        return pitched
    if track in (-1, "skyline"):
        return pitched
    index = int(track)
    return pitched[index : index + 1]


def skyline(
    onset: np.ndarray, end: np.ndarray, pitch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monophonic notes from any notes on one time grid: the highest note at each onset wins, and a
    note is cut at the next onset. Returns ``(onset, end, pitch)`` sorted by onset.

    Edge cases: no notes gives empty arrays; a note that the next onset cuts to nothing cannot
    happen (onsets are distinct after the first step), so every kept note lasts at least one step
    when the input's did.
    """
    order = np.lexsort((-pitch, onset))
    onset, end, pitch = onset[order], end[order], pitch[order]
    first = np.ones(len(onset), dtype=bool)
    first[1:] = onset[1:] != onset[:-1]
    onset, end, pitch = onset[first], end[first], pitch[first]
    next_onset = np.append(onset[1:], np.iinfo(np.int64).max)
    return onset, np.minimum(end, next_onset), pitch


def major_key(pitch: np.ndarray, weight: np.ndarray | None = None) -> int:
    """The major key (0 = C .. 11 = B) whose scale holds the most of the melody's notes.

    score(k) = Σ weight_i · [(pitch_i − k) mod 12 ∈ major scale]; ties go to the key closest to C
    (fewest semitones to transpose), so a melody that fits C equally well stays where it is. A
    relative minor shares its major's scale, so A minor counts as C major, as in Magenta. Silence
    gives 0.
    """
    if len(pitch) == 0:
        return 0
    weight = np.ones(len(pitch)) if weight is None else np.asarray(weight, dtype=float)
    histogram = np.bincount(np.asarray(pitch) % 12, weights=weight, minlength=12)
    in_scale = np.zeros(12)
    in_scale[list(MAJOR_SCALE)] = 1
    scores = np.array([histogram @ np.roll(in_scale, k) for k in range(12)])
    best = np.flatnonzero(np.isclose(scores, scores.max()))
    return int(min(best, key=lambda k: (min(k, 12 - k), k)))


def shift_to_c(key: int) -> int:
    """Semitones that move ``key`` to C by the shortest way: in -6..5."""
    return -key if key <= 6 else 12 - key


def melody_notes(tracks: Sequence[TrackNotes], track: int | str = "auto") -> np.ndarray:
    """The notes (onset, duration, pitch, velocity rows, ticks) of the tracks `melody_tracks` picks."""
    chosen = melody_tracks(tracks, track)
    if not chosen:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate([t.notes for t in chosen])
