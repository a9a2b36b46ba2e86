"""Representations: how a score becomes an array a model reads, and back.

Every representation has the same small contract:

- ``encode(music) -> np.ndarray`` (``music`` is a ``muspy.Music`` or a `NoteTable`);
- ``decode(array) -> muspy.Music``;
- ``describe()``: what a model needs to size itself (kind, shape per step, vocabulary, tracks);
- ``transpose(array, semitones)`` and ``pitch_extent(array)`` for transposition augmentation;
- ``to_config()``: a Hydra-instantiable dict, saved in checkpoints so a model can be rebuilt.

The time axis is always first, so windowing and batching never need to know the layout.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import muspy
import numpy as np

from datamodules.notes import DURATION, ONSET, PITCH, NoteTable, TrackNotes, as_note_table

# General MIDI program groups used by ``track_mode="program"`` (MuseGAN-style families);
# a program that fits no group goes to the last one.
DEFAULT_PROGRAM_GROUPS: list[list[int]] = [
    [0, 7],  # pianos
    [24, 31],  # guitars
    [32, 39],  # basses
    [40, 55],  # strings and ensembles
    [0, 127],  # everything else
]


class Representation(ABC):
    """Base class of all representations (see the module docstring for the contract)."""

    kind: str = ""
    steps_per_beat: int = 4

    @abstractmethod
    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray: ...

    @abstractmethod
    def decode(self, array: np.ndarray) -> muspy.Music: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    @abstractmethod
    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray: ...

    @abstractmethod
    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        """Lowest and highest pitch index used in ``array`` (None if silent)."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]: ...

    # The cache stores each piece in a "compact" form and expands it when a run loads the cache. By
    # default the compact form is the encoded array itself; a representation whose arrays are large
    # and mostly empty (the piano-roll) stores something smaller that is also cheaper to compute.
    def encode_compact(self, music: muspy.Music | NoteTable) -> np.ndarray:
        """What the cache stores for ``music``: ``expand(encode_compact(music))`` equals ``encode(music)``."""
        return self.encode(music)

    def expand(self, compact: np.ndarray) -> np.ndarray:
        """The encoded array of a compact form made by `encode_compact`."""
        return compact

    def compact_steps(self, compact: np.ndarray) -> int:
        """Time steps of ``expand(compact)``, without expanding it."""
        return len(compact)

    def expand_window(self, compact: np.ndarray, start: int, length: int) -> np.ndarray:
        """``expand(compact)[start : start + length]``; a representation with sparse compact forms
        draws just that window."""
        return self.expand(compact)[start : start + length]

    def compact_is_silent(self, compact: np.ndarray) -> bool:
        """Whether ``expand(compact)`` has no notes."""
        return not np.asarray(compact).any()

    def steps_per_bar(self, beats_per_bar: int = 4) -> int:
        return self.steps_per_beat * beats_per_bar

    def new_music(self, n_steps: int) -> muspy.Music:
        """Empty 4/4 music at this representation's resolution, ``n_steps`` long.

        Bar lines up to ``n_steps`` keep trailing silence part of the piece, so that metrics such as
        empty-bar rate see a generated piece's full length, not just up to its last note.
        """
        bar = self.steps_per_bar()
        return muspy.Music(
            resolution=self.steps_per_beat,
            tempos=[muspy.Tempo(0, 100.0)],
            time_signatures=[muspy.TimeSignature(0, 4, 4)],
            barlines=[muspy.Barline(t) for t in [*range(0, n_steps, bar), n_steps] if n_steps > 0],
        )

    def quantize(self, ticks: np.ndarray, resolution: int) -> np.ndarray:
        """Ticks to steps, rounding to the nearest step."""
        return np.rint(ticks * (self.steps_per_beat / resolution)).astype(np.int64)


class PianoRollRepresentation(Representation):
    """Multi-track, multi-hot piano-roll of shape (steps, tracks, pitches).

    Args:
        n_tracks: number of output tracks (channels).
        track_mode: how source tracks map to output tracks: ``"index"`` (i-th non-drum track),
            ``"name"`` (first entry of ``track_names`` that the lower-cased track name starts with),
            ``"program"`` (General MIDI groups ``program_groups``) or ``"merge"`` (all into one).
        track_names: per output track, a list of name prefixes (``"name"`` mode).
        program_groups: per output track, an inclusive ``[low, high]`` program range.
        steps_per_beat: time steps per quarter note.
        pitch_low, pitch_high: inclusive MIDI pitch range kept; notes outside are dropped.
        programs: General MIDI program of each decoded track (default: acoustic grand piano).
        include_drums: keep drum tracks (they are dropped by default).
    """

    kind = "pianoroll"

    def __init__(
        self,
        n_tracks: int = 4,
        track_mode: str = "index",
        track_names: Sequence[Sequence[str]] | None = None,
        program_groups: Sequence[Sequence[int]] | None = None,
        steps_per_beat: int = 4,
        pitch_low: int = 36,
        pitch_high: int = 84,
        programs: Sequence[int] | None = None,
        include_drums: bool = False,
    ) -> None:
        if track_mode not in {"index", "name", "program", "merge"}:
            raise ValueError(f"track_mode must be index, name, program or merge, not {track_mode!r}")
        if not 0 <= pitch_low <= pitch_high <= 127:
            raise ValueError(f"need 0 <= pitch_low <= pitch_high <= 127, got {pitch_low}..{pitch_high}")
        if track_mode == "merge":
            n_tracks = 1
        if track_mode == "name" and (track_names is None or len(track_names) != n_tracks):
            raise ValueError("track_mode='name' needs one list of name prefixes per track in track_names")
        groups = [list(g) for g in (program_groups or DEFAULT_PROGRAM_GROUPS)]
        if track_mode == "program" and len(groups) != n_tracks:
            raise ValueError(f"track_mode='program' needs {n_tracks} program_groups, got {len(groups)}")
        self.n_tracks = int(n_tracks)
        self.track_mode = track_mode
        self.track_names = [[str(p).lower() for p in names] for names in track_names] if track_names else None
        self.program_groups = groups
        self.steps_per_beat = int(steps_per_beat)
        self.pitch_low = int(pitch_low)
        self.pitch_high = int(pitch_high)
        self.programs = [int(p) for p in programs] if programs else self._default_programs()
        if len(self.programs) != self.n_tracks:
            raise ValueError(f"programs needs {self.n_tracks} entries, got {len(self.programs)}")
        self.include_drums = include_drums

    @property
    def n_pitches(self) -> int:
        return self.pitch_high - self.pitch_low + 1

    def _default_programs(self) -> list[int]:
        if self.track_mode != "program":
            return [0] * self.n_tracks
        # The first program of each group that no earlier group claims, so decode -> encode round-trips.
        programs, claimed = [], set()
        for low, high in self.program_groups:
            programs.append(next((p for p in range(low, high + 1) if p not in claimed), low))
            claimed.update(range(low, high + 1))
        return programs

    def track_name(self, channel: int) -> str:
        """Name of a decoded track (in ``"name"`` mode, the first prefix, so decode -> encode round-trips)."""
        return self.track_names[channel][0] if self.track_names else f"track{channel}"

    def _channel(self, index: int, track: TrackNotes) -> int | None:
        """Output channel of the ``index``-th kept source track, or None to drop it."""
        if self.track_mode == "merge":
            return 0
        if self.track_mode == "index":
            return index if index < self.n_tracks else None
        if self.track_mode == "name":
            name = track.name.lower()
            for channel, prefixes in enumerate(self.track_names or []):
                if any(name.startswith(p) for p in prefixes):
                    return channel
            return None
        for channel, (low, high) in enumerate(self.program_groups):
            if low <= track.program <= high:
                return channel
        return len(self.program_groups) - 1

    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        return self.expand(self.encode_compact(music))

    def encode_compact(self, music: muspy.Music | NoteTable) -> np.ndarray:
        """The roll as its notes: (n, 3) int32 rows ``(onset step, end step, track * n_pitches + pitch)``.

        Quantised, routed to tracks and cut to the pitch range, but not drawn: about 40x smaller than
        the roll itself and a third of the work of drawing it (`expand` draws it).
        """
        table = as_note_table(music)
        kept = [t for t in table.tracks if self.include_drums or not t.is_drum]
        routed = [(self._channel(index, track), track.notes) for index, track in enumerate(kept)]
        routed = [(channel, notes) for channel, notes in routed if channel is not None and len(notes)]
        if not routed:
            return np.zeros((0, 3), dtype=np.int32)
        # All routed notes in one array, so quantising is a few vectorised passes per piece (a Python
        # loop per note cost ten times the MIDI parse itself), and as few passes as possible: this is
        # most of the preprocessing work after the parse.
        notes = np.concatenate([n for _, n in routed]) if len(routed) > 1 else routed[0][1]
        offsets = np.array([c * self.n_pitches - self.pitch_low for c, _ in routed])
        pitch = notes[:, PITCH]
        column = np.repeat(offsets, [len(n) for _, n in routed]) + pitch
        onset, end = notes[:, ONSET], notes[:, ONSET] + notes[:, DURATION]
        in_range = (pitch >= self.pitch_low) & (pitch <= self.pitch_high)
        if not in_range.all():
            onset, end, column = onset[in_range], end[in_range], column[in_range]
        scale = self.steps_per_beat / table.resolution
        onset = np.maximum(np.rint(onset * scale), 0)
        end = np.maximum(np.rint(end * scale), onset + 1)
        compact = np.empty((len(column), 3), dtype=np.int32)
        compact[:, 0], compact[:, 1], compact[:, 2] = onset, end, column
        return compact

    def expand(self, compact: np.ndarray) -> np.ndarray:
        if len(compact) == 0:
            return np.zeros((0, self.n_tracks, self.n_pitches), dtype=bool)
        compact = np.asarray(compact, dtype=np.int64)  # flat cell indices outgrow int32 on long pieces
        return self._fill_roll(compact[:, 0], compact[:, 1], compact[:, 2])

    def compact_steps(self, compact: np.ndarray) -> int:
        return int(compact[:, 1].max()) if len(compact) else 0

    def expand_window(self, compact: np.ndarray, start: int, length: int) -> np.ndarray:
        length = max(0, min(length, self.compact_steps(compact) - start))
        onset, end = compact[:, 0].astype(np.int64), compact[:, 1].astype(np.int64)
        inside = (onset < start + length) & (end > start)
        if length == 0 or not inside.any():  # an empty window would clip a note to zero steps
            return np.zeros((length, self.n_tracks, self.n_pitches), dtype=bool)
        return self._fill_roll(
            np.maximum(onset[inside] - start, 0),
            np.minimum(end[inside] - start, length),
            compact[inside, 2].astype(np.int64),
            length,
        )

    def compact_is_silent(self, compact: np.ndarray) -> bool:
        return len(compact) == 0

    def _fill_roll(
        self, onset: np.ndarray, end: np.ndarray, column: np.ndarray, length: int | None = None
    ) -> np.ndarray:
        """A (steps, tracks, pitches) roll with ``[onset, end)`` set in flat (track, pitch) ``column``;
        ``length`` steps long (default: up to the last end)."""
        length = int(end.max()) if length is None else int(length)
        width = self.n_tracks * self.n_pitches
        duration = end - onset
        cells = int(duration.sum())
        if cells <= length * width:
            # Usual case: set exactly the cells that sound. Their flat indices step by ``width``
            # within a note and jump at each note's first cell, so one cumsum over the jumps lists them.
            first = onset * width + column
            last = first + (duration - 1) * width
            step = np.full(cells, width, dtype=np.int64)
            starts = np.cumsum(duration) - duration
            step[0] = first[0]
            step[starts[1:]] = first[1:] - last[:-1]
            roll = np.zeros(length * width, dtype=bool)
            roll[np.cumsum(step)] = True
            return roll.reshape(length, self.n_tracks, self.n_pitches)
        # Many long overlapping notes: a difference array summed along time is bounded by the roll size.
        diff = np.zeros((width, length + 1), dtype=np.int32)
        np.add.at(diff, (column, onset), 1)
        np.add.at(diff, (column, end), -1)
        on = np.cumsum(diff[:, :length], axis=1) > 0
        return np.ascontiguousarray(on.T).reshape(length, self.n_tracks, self.n_pitches)

    def decode(self, array: np.ndarray) -> muspy.Music:
        roll = np.asarray(array).astype(bool).reshape(len(array), self.n_tracks, self.n_pitches)
        music = self.new_music(len(roll))
        # Pad with silence on both ends so that every run of "on" has a rising and a falling edge.
        padded = np.pad(roll, ((1, 1), (0, 0), (0, 0))).astype(np.int8)
        edges = np.diff(padded, axis=0)
        for channel in range(self.n_tracks):
            notes = []
            for pitch in range(self.n_pitches):
                starts = np.flatnonzero(edges[:, channel, pitch] == 1)
                ends = np.flatnonzero(edges[:, channel, pitch] == -1)
                notes += [
                    muspy.Note(int(s), pitch + self.pitch_low, int(e - s), 80) for s, e in zip(starts, ends)
                ]
            notes.sort(key=lambda n: (n.time, n.pitch))
            music.tracks.append(
                muspy.Track(program=self.programs[channel], name=self.track_name(channel), notes=notes)
            )
        return music

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_tracks": self.n_tracks,
            "n_pitches": self.n_pitches,
            "pitch_low": self.pitch_low,
            "steps_per_beat": self.steps_per_beat,
            "shape_per_step": (self.n_tracks, self.n_pitches),
        }

    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray:
        if semitones == 0:
            return array
        out = np.zeros_like(array)
        if semitones > 0:
            out[..., semitones:] = array[..., :-semitones]
        else:
            out[..., :semitones] = array[..., -semitones:]
        return out

    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        used = np.flatnonzero(np.asarray(array).reshape(-1, self.n_pitches).any(axis=0))
        return (int(used[0]), int(used[-1])) if len(used) else None

    def to_config(self) -> dict[str, Any]:
        return {
            "_target_": f"{__name__}.PianoRollRepresentation",
            "n_tracks": self.n_tracks,
            "track_mode": self.track_mode,
            "track_names": self.track_names,
            "program_groups": self.program_groups,
            "steps_per_beat": self.steps_per_beat,
            "pitch_low": self.pitch_low,
            "pitch_high": self.pitch_high,
            "programs": self.programs,
            "include_drums": self.include_drums,
        }


class MelodyRepresentation(Representation):
    """Monophonic melody events, Magenta style: one token per time step.

    Token 0 is "no event" (hold the current note or rest), 1 is "note off", and
    ``2 + pitch - pitch_low`` is "note on". Notes outside the range are moved by octaves into it.

    Args:
        pitch_low, pitch_high: inclusive MIDI pitch range of the vocabulary.
        steps_per_beat: time steps per quarter note.
        track: index of the (non-drum) track the melody is read from; ``-1`` takes the highest
            sounding note over all tracks (skyline).
    """

    kind = "tokens"
    NO_EVENT = 0
    NOTE_OFF = 1
    FIRST_NOTE_ON = 2

    def __init__(self, pitch_low: int = 48, pitch_high: int = 84, steps_per_beat: int = 4, track: int = 0):
        if pitch_high - pitch_low < 11:
            raise ValueError("the melody pitch range must span at least one octave")
        self.pitch_low = int(pitch_low)
        self.pitch_high = int(pitch_high)
        self.steps_per_beat = int(steps_per_beat)
        self.track = int(track)

    @property
    def n_pitches(self) -> int:
        return self.pitch_high - self.pitch_low + 1

    @property
    def vocab_size(self) -> int:
        return self.FIRST_NOTE_ON + self.n_pitches

    def _fold(self, pitch: np.ndarray) -> np.ndarray:
        pitch = pitch.copy()
        while (low := pitch < self.pitch_low).any():
            pitch[low] += 12
        while (high := pitch > self.pitch_high).any():
            pitch[high] -= 12
        return pitch

    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        table = as_note_table(music)
        tracks = [t for t in table.tracks if not t.is_drum and len(t.notes)]
        if self.track >= 0:
            tracks = tracks[self.track : self.track + 1]
        if not tracks:
            return np.zeros(0, dtype=np.int16)
        notes = np.concatenate([t.notes for t in tracks])
        onset = self.quantize(notes[:, ONSET], table.resolution)
        end = np.maximum(self.quantize(notes[:, ONSET] + notes[:, DURATION], table.resolution), onset + 1)
        pitch = self._fold(notes[:, PITCH])
        # Skyline: at each onset step keep the highest note; a note sounds until its end or the next onset.
        order = np.lexsort((-pitch, onset))
        onset, end, pitch = onset[order], end[order], pitch[order]
        first = np.ones(len(onset), dtype=bool)
        first[1:] = onset[1:] != onset[:-1]
        onset, end, pitch = onset[first], end[first], pitch[first]
        next_onset = np.append(onset[1:], np.iinfo(np.int64).max)
        end = np.minimum(end, next_onset)
        tokens = np.full(int(end.max()), self.NO_EVENT, dtype=np.int16)
        tokens[end[end < len(tokens)]] = self.NOTE_OFF
        tokens[onset] = self.FIRST_NOTE_ON + (pitch - self.pitch_low)
        return tokens

    def decode(self, array: np.ndarray) -> muspy.Music:
        tokens = np.asarray(array).astype(np.int64).reshape(-1)
        notes: list[muspy.Note] = []
        current: tuple[int, int] | None = None  # (start step, pitch)
        for step, token in enumerate(tokens):
            if token == self.NO_EVENT:
                continue
            if current is not None:
                notes.append(muspy.Note(current[0], current[1], step - current[0], 80))
                current = None
            if token >= self.FIRST_NOTE_ON:
                current = (step, int(token) - self.FIRST_NOTE_ON + self.pitch_low)
        if current is not None:
            notes.append(muspy.Note(current[0], current[1], len(tokens) - current[0], 80))
        music = self.new_music(len(tokens))
        music.tracks.append(muspy.Track(program=0, name="melody", notes=notes))
        return music

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "n_tracks": 1,
            "n_pitches": self.n_pitches,
            "pitch_low": self.pitch_low,
            "steps_per_beat": self.steps_per_beat,
            "shape_per_step": (),
        }

    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray:
        out = np.array(array, copy=True)
        on = out >= self.FIRST_NOTE_ON
        out[on] += semitones
        return out

    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        on = np.asarray(array)[np.asarray(array) >= self.FIRST_NOTE_ON] - self.FIRST_NOTE_ON
        return (int(on.min()), int(on.max())) if len(on) else None

    def to_config(self) -> dict[str, Any]:
        return {
            "_target_": f"{__name__}.MelodyRepresentation",
            "pitch_low": self.pitch_low,
            "pitch_high": self.pitch_high,
            "steps_per_beat": self.steps_per_beat,
            "track": self.track,
        }


def build_representation(config: Representation | dict[str, Any]) -> Representation:
    """Return ``config`` if it is already a representation, else instantiate it from its dict."""
    if isinstance(config, Representation):
        return config
    from hydra.utils import instantiate

    return instantiate(dict(config), _convert_="all")
