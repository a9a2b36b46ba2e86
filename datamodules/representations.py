"""Representations: how a score becomes an array a model reads, and back.

A representation is a codec. Its required contract is four methods:

- ``encode(music) -> np.ndarray`` (``music`` is a ``muspy.Music`` or a `NoteTable`; time axis first);
- ``decode(array) -> muspy.Music``;
- ``describe() -> RepresentationInfo``: what a model needs to size itself and what a sample is
  (kind, output type, length unit, default sample length, vocabulary and pad id, tracks);
- ``to_config()``: a Hydra-instantiable dict, saved in checkpoints so a model can be rebuilt.

Everything else is an optional capability that a representation has or lacks:

- `Transposable`: ``transpose(array, semitones)`` and ``pitch_extent(array)`` for transposition
  augmentation (never moving a drum track);
- `CompactStorage`: a smaller form for the cache (`compact_codec` gives every representation one,
  the encoded array itself when it has none);
- `StepGrid`: a fixed time grid (steps per beat), with ``new_music`` and ``quantize`` helpers;
- `ConditioningPrefix`: every encoded piece starts with conditioning tokens (its instruments, its
  genre) that every training window starts with too;
- `ReportsDecoding`: figures about decoding generated arrays (tokens it had to skip).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import muspy
import numpy as np

from datamodules.melody import major_key, melody_notes, shift_to_c, skyline
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
DEFAULT_BARS = 16  # default sample length of step-grid representations, in 4/4 bars
TRACK_MODES = ("auto", "index", "name", "program", "merge")


@dataclass(frozen=True)
class TrackSpec:
    """One output track of a representation: its name, General MIDI program and drum flag."""

    name: str
    program: int = 0
    is_drum: bool = False


@dataclass(frozen=True)
class RepresentationInfo:
    """What a representation's arrays are (`Representation.describe`).

    Attributes:
        kind: ``"pianoroll"`` (multi-hot frames) or ``"tokens"`` (integer events), or another kind a
            new representation introduces; models check it.
        output: what ``decode`` gives: ``"music"`` (``muspy.Music``) or, for audio models, ``"audio"``.
        length_unit: what one step along the time axis is: ``"steps"`` (a grid) or ``"tokens"``.
        default_length: sample length (in ``length_unit``) when none is asked for.
        tracks: the output tracks.
        shape_per_step: shape of one step of an encoded array (``()`` for one token per step).
        steps_per_beat: grid resolution, for grid representations.
        vocab_size: number of token values, for token representations.
        pad_id: the token that pads a batch, where the representation reserves one (else None:
            padding is masked out by the batch's ``mask``).
    """

    kind: str
    output: str
    length_unit: str
    default_length: int
    tracks: tuple[TrackSpec, ...] = ()
    shape_per_step: tuple[int, ...] = ()
    steps_per_beat: int | None = None
    vocab_size: int | None = None
    pad_id: int | None = None

    @property
    def n_tracks(self) -> int:
        return len(self.tracks)


class Representation(ABC):
    """A codec between scores and arrays (see the module docstring for the contract)."""

    @abstractmethod
    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray: ...

    @abstractmethod
    def decode(self, array: np.ndarray) -> muspy.Music: ...

    @abstractmethod
    def describe(self) -> RepresentationInfo: ...

    @abstractmethod
    def to_config(self) -> dict[str, Any]: ...

    @property
    def kind(self) -> str:
        return self.describe().kind


# ------------------------------------------------------------------------------------ capabilities
class StepGrid:
    """Capability: a fixed time grid of ``steps_per_beat`` steps per quarter note, 4/4 bars."""

    steps_per_beat: int = 4

    def steps_per_bar(self, beats_per_bar: int = 4) -> int:
        return self.steps_per_beat * beats_per_bar

    def new_music(self, n_steps: int) -> muspy.Music:
        """Empty 4/4 music at this grid's resolution, ``n_steps`` long.

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


class Transposable(ABC):
    """Capability: move every pitched note of an encoded array by semitones (drums never move).

    ``pitch_extent`` gives the lowest and highest pitch index used (0 .. ``n_pitches - 1``), so
    `transpose_room` knows how far a piece can move without losing a note.
    """

    @property
    @abstractmethod
    def n_pitches(self) -> int: ...

    @abstractmethod
    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray: ...

    @abstractmethod
    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        """Lowest and highest pitch index of the pitched notes in ``array`` (None: none)."""

    def transpose_room(self, array: np.ndarray) -> tuple[int, int] | None:
        """Semitones ``array`` can move down and up with every note staying in range (None: silent)."""
        extent = self.pitch_extent(array)
        return None if extent is None else (extent[0], self.n_pitches - 1 - extent[1])


class ConditioningPrefix(ABC):
    """Capability: an encoded piece starts with conditioning tokens that describe all of it (its
    instruments, its genre), as MuseNet's sequences do.

    `WindowDataset` starts every window with the piece's prefix, wherever the window is cut, so a
    model always reads what it is conditioned on.
    """

    @abstractmethod
    def prefix_length(self, array: np.ndarray) -> int:
        """How many leading entries of ``array`` (a piece, or its beginning) are its conditioning prefix."""


class ReportsDecoding(ABC):
    """Capability: figures about decoding generated arrays, e.g. the tokens of an order no piece has
    that ``decode`` skipped. `GenerativeModule.sample` keeps them in ``last_sample_figures``, and the
    `SampleMusic` callback and ``make evaluate`` log them as ``sample/<name>``."""

    @abstractmethod
    def decode_report(self, arrays: Sequence[np.ndarray]) -> dict[str, float]: ...


class CompactStorage(ABC):
    """Capability: a form for the cache that is smaller, and cheaper to make, than the encoded array.

    ``expand(encode_compact(music))`` equals ``encode(music)``; ``expand_window`` draws one window
    without expanding the whole piece.
    """

    @abstractmethod
    def encode_compact(self, music: muspy.Music | NoteTable) -> np.ndarray: ...

    @abstractmethod
    def expand(self, compact: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def compact_steps(self, compact: np.ndarray) -> int:
        """Time steps of ``expand(compact)``, without expanding it."""

    def expand_window(self, compact: np.ndarray, start: int, length: int) -> np.ndarray:
        """``expand(compact)[start : start + length]``."""
        return self.expand(compact)[start : start + length]

    def compact_is_silent(self, compact: np.ndarray) -> bool:
        """Whether ``expand(compact)`` has no notes."""
        return not np.asarray(compact).any()


class _ArrayStorage(CompactStorage):
    """The compact form of a representation without one: its encoded array."""

    def __init__(self, representation: Representation) -> None:
        self.representation = representation

    def encode_compact(self, music: muspy.Music | NoteTable) -> np.ndarray:
        return self.representation.encode(music)

    def expand(self, compact: np.ndarray) -> np.ndarray:
        return compact

    def compact_steps(self, compact: np.ndarray) -> int:
        return len(compact)


def compact_codec(representation: Representation) -> CompactStorage:
    """The representation itself if it has a compact form, else one that stores encoded arrays."""
    return representation if isinstance(representation, CompactStorage) else _ArrayStorage(representation)


# ------------------------------------------------------------------------------------ piano-roll
class PianoRollRepresentation(Representation, StepGrid, Transposable, CompactStorage):
    """Multi-track, multi-hot piano-roll of shape (steps, tracks, pitches).

    Args:
        n_tracks: number of output tracks (channels).
        track_mode: how a file's pitched tracks map to output tracks: ``"index"`` (the i-th pitched
            track), ``"name"`` (first entry of ``track_names`` that the lower-cased track name starts
            with), ``"program"`` (General MIDI groups ``program_groups``), ``"merge"`` (all into one),
            or ``"auto"``: by program group when the file's pitched tracks fall in distinct groups,
            else by name when every one of them matches a distinct track, else by order.
        track_names: per output track, a list of name prefixes (``"name"`` and ``"auto"`` modes).
        program_groups: per pitched output track, an inclusive ``[low, high]`` program range.
        steps_per_beat: time steps per quarter note.
        pitch_low, pitch_high: inclusive MIDI pitch range kept; notes outside are dropped.
        programs: General MIDI program of each decoded track (default: acoustic grand piano).
        drum_track: the output track drum tracks go to (None: drums are dropped). It never takes
            pitched tracks, is decoded as a drum track and is never transposed.
    """

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
        drum_track: int | None = None,
    ) -> None:
        if track_mode not in TRACK_MODES:
            raise ValueError(f"track_mode must be one of {', '.join(TRACK_MODES)}, not {track_mode!r}")
        if not 0 <= pitch_low <= pitch_high <= 127:
            raise ValueError(f"need 0 <= pitch_low <= pitch_high <= 127, got {pitch_low}..{pitch_high}")
        if track_mode == "merge":
            n_tracks = 1 if drum_track is None else 2
        if drum_track is not None and not 0 <= drum_track < n_tracks:
            raise ValueError(f"drum_track must be one of the {n_tracks} tracks, got {drum_track}")
        if track_mode == "name" and (track_names is None or len(track_names) != n_tracks):
            raise ValueError("track_mode='name' needs one list of name prefixes per track in track_names")
        self.n_tracks = int(n_tracks)
        self.drum_track = None if drum_track is None else int(drum_track)
        self.pitched_tracks = [c for c in range(self.n_tracks) if c != self.drum_track]
        groups = [list(g) for g in (program_groups or DEFAULT_PROGRAM_GROUPS)]
        if track_mode in ("program", "auto") and len(groups) != len(self.pitched_tracks):
            raise ValueError(
                f"track_mode={track_mode!r} needs one program group per pitched track "
                f"({len(self.pitched_tracks)}) in program_groups, got {len(groups)}"
            )
        self.track_mode = track_mode
        self.track_names = [[str(p).lower() for p in names] for names in track_names] if track_names else None
        self.program_groups = groups
        self.steps_per_beat = int(steps_per_beat)
        self.pitch_low = int(pitch_low)
        self.pitch_high = int(pitch_high)
        self.programs = [int(p) for p in programs] if programs else self._default_programs()
        if len(self.programs) != self.n_tracks:
            raise ValueError(f"programs needs {self.n_tracks} entries, got {len(self.programs)}")

    @property
    def n_pitches(self) -> int:
        return self.pitch_high - self.pitch_low + 1

    def _default_programs(self) -> list[int]:
        programs = [0] * self.n_tracks
        if self.track_mode in ("program", "auto") and len(self.program_groups) == len(self.pitched_tracks):
            # The first program of each group that no earlier group claims, so decode -> encode
            # routes every decoded track back to where it came from.
            claimed: set[int] = set()
            for channel, (low, high) in zip(self.pitched_tracks, self.program_groups):
                programs[channel] = next((p for p in range(low, high + 1) if p not in claimed), low)
                claimed.update(range(low, high + 1))
        return programs

    def track_name(self, channel: int) -> str:
        """Name of a decoded track (the first name prefix, so decode -> encode round-trips by name)."""
        if channel == self.drum_track:
            return "drums"
        return self.track_names[channel][0] if self.track_names else f"track{channel}"

    # ------------------------------------------------------------------ routing
    def _group(self, program: int) -> int:
        for group, (low, high) in enumerate(self.program_groups):
            if low <= program <= high:
                return group
        return len(self.program_groups) - 1

    def _by_name(self, track: TrackNotes) -> int | None:
        name = track.name.strip().lower()
        for channel, prefixes in enumerate(self.track_names or []):
            if channel != self.drum_track and any(name.startswith(p) for p in prefixes):
                return channel
        return None

    def route_mode(self, tracks: Sequence[TrackNotes]) -> str:
        """The mode a file's tracks are routed by: ``track_mode``, or what ``"auto"`` chose for them."""
        if self.track_mode != "auto":
            return self.track_mode
        pitched = [t for t in tracks if not t.is_drum and len(t.notes)]
        if len({self._group(t.program) for t in pitched}) == len(pitched):
            return "program"
        if self.track_names:
            channels = [self._by_name(t) for t in pitched]
            if None not in channels and len(set(channels)) == len(channels):
                return "name"
        return "index"

    def route(self, tracks: Sequence[TrackNotes]) -> list[int | None]:
        """Output track of every source track (None: dropped). In ``"index"`` mode every pitched
        track takes its turn, empty or not, so a decoded piece routes back to where it came from."""
        mode = self.route_mode(tracks)
        out: list[int | None] = []
        pitched_index = 0
        for track in tracks:
            if track.is_drum:
                out.append(self.drum_track)
            elif mode == "merge":
                out.append(self.pitched_tracks[0])
            elif mode == "name":
                out.append(self._by_name(track))
            elif mode == "program":
                out.append(self.pitched_tracks[self._group(track.program)])
            else:
                out.append(
                    self.pitched_tracks[pitched_index] if pitched_index < len(self.pitched_tracks) else None
                )
                pitched_index += 1
        return out

    def routing_report(self, music: muspy.Music | NoteTable) -> list[tuple[str, int | None, int]]:
        """``(source track, output track or None, notes)`` for every source track with notes.

        The source track is described as ``"<name> (program P)"`` or ``"<name> (drums)"``.
        """
        table = as_note_table(music)
        rows = []
        for track, channel in zip(table.tracks, self.route(table.tracks)):
            if len(track.notes):
                what = "drums" if track.is_drum else f"program {track.program}"
                rows.append((f"{track.name or 'unnamed'} ({what})", channel, len(track.notes)))
        return rows

    # ------------------------------------------------------------------ codec
    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        return self.expand(self.encode_compact(music))

    def encode_compact(self, music: muspy.Music | NoteTable) -> np.ndarray:
        """The roll as its notes: (n, 3) int32 rows ``(onset step, end step, track * n_pitches + pitch)``.

        Quantised, routed to tracks and cut to the pitch range, but not drawn: about 40x smaller than
        the roll itself and a third of the work of drawing it (`expand` draws it).
        """
        table = as_note_table(music)
        routed = [
            (channel, track.notes)
            for track, channel in zip(table.tracks, self.route(table.tracks))
            if channel is not None and len(track.notes)
        ]
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
                muspy.Track(
                    program=self.programs[channel],
                    is_drum=channel == self.drum_track,
                    name=self.track_name(channel),
                    notes=notes,
                )
            )
        return music

    def describe(self) -> RepresentationInfo:
        return RepresentationInfo(
            kind="pianoroll",
            output="music",
            length_unit="steps",
            default_length=DEFAULT_BARS * self.steps_per_bar(),
            tracks=tuple(
                TrackSpec(self.track_name(c), self.programs[c], c == self.drum_track)
                for c in range(self.n_tracks)
            ),
            shape_per_step=(self.n_tracks, self.n_pitches),
            steps_per_beat=self.steps_per_beat,
        )

    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray:
        if semitones == 0:
            return array
        out = np.zeros_like(array)
        channels = self.pitched_tracks
        if semitones > 0:
            out[..., channels, semitones:] = array[..., channels, :-semitones]
        else:
            out[..., channels, :semitones] = array[..., channels, -semitones:]
        if self.drum_track is not None:
            out[..., self.drum_track, :] = array[..., self.drum_track, :]
        return out

    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        pitched = np.asarray(array)[..., self.pitched_tracks, :]
        used = np.flatnonzero(pitched.reshape(-1, self.n_pitches).any(axis=0))
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
            "drum_track": self.drum_track,
        }


# ------------------------------------------------------------------------------------ melody
class MelodyRepresentation(Representation, StepGrid, Transposable):
    """Monophonic melody events, Magenta style: one token per time step.

    Token 0 is "no event" (hold the current note or rest), 1 is "note off", and
    ``2 + pitch - pitch_low`` is "note on". Notes outside the range are moved by octaves into it.
    The melody is read from any score (see `datamodules.melody`): the track ``track`` picks, made
    monophonic by keeping the highest note at each onset (a note ends at the next onset).

    Args:
        pitch_low, pitch_high: inclusive MIDI pitch range of the vocabulary.
        steps_per_beat: time steps per quarter note.
        track: ``"auto"`` (the track whose name or program says it is the melody, else the only
            pitched track, else the highest voice over all tracks), an index among the pitched
            tracks, or ``-1`` / ``"skyline"`` (the highest voice over all pitched tracks).
        transpose_to_c: move each melody to C major / A minor (its `major_key`, the shortest way) before
            encoding, as Magenta's ``transpose_to_key`` does.
        program: General MIDI program of the decoded melody.
    """

    NO_EVENT = 0
    NOTE_OFF = 1
    FIRST_NOTE_ON = 2

    def __init__(
        self,
        pitch_low: int = 48,
        pitch_high: int = 84,
        steps_per_beat: int = 4,
        track: int | str = "auto",
        transpose_to_c: bool = False,
        program: int = 0,
    ) -> None:
        if pitch_high - pitch_low < 11:
            raise ValueError("the melody pitch range must span at least one octave")
        if isinstance(track, str) and track not in ("auto", "skyline"):
            track = int(track)  # "0" from a command line
        self.pitch_low = int(pitch_low)
        self.pitch_high = int(pitch_high)
        self.steps_per_beat = int(steps_per_beat)
        self.track = track
        self.transpose_to_c = bool(transpose_to_c)
        self.program = int(program)

    def for_files(self) -> MelodyRepresentation:
        """This representation for a user's file (a primer, a piece to interpolate): its melody is
        found by track name or program, else the only pitched track, else the skyline
        (``track="auto"``), whatever track the training data was read from (``track: 0`` for the
        one-track Essen tunes would take a multi-track file's first track, often not the melody)."""
        found = copy.copy(self)
        found.track = "auto"
        return found

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

    def _melody_notes(self, music: muspy.Music | NoteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The melody track's notes as ``(onset step, end step, pitch)``, before key and range."""
        table = as_note_table(music)
        notes = melody_notes(table.tracks, self.track)
        onset = self.quantize(notes[:, ONSET], table.resolution)
        end = np.maximum(self.quantize(notes[:, ONSET] + notes[:, DURATION], table.resolution), onset + 1)
        return onset, end, notes[:, PITCH]

    def _key_shift(self, onset: np.ndarray, end: np.ndarray, pitch: np.ndarray) -> int:
        if not self.transpose_to_c or not len(pitch):
            return 0
        return shift_to_c(major_key(pitch, end - onset))

    def key_shift(self, music: muspy.Music | NoteTable) -> int:
        """Semitones `melody` moves ``music`` by to reach C (0 without ``transpose_to_c``), before
        folding into range; a model that continues a primer moves its output back by this."""
        return self._key_shift(*self._melody_notes(music))

    def melody(self, music: muspy.Music | NoteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The melody as monophonic ``(onset step, end step, pitch)`` arrays, in range and key."""
        onset, end, pitch = self._melody_notes(music)
        pitch = pitch + self._key_shift(onset, end, pitch)
        return skyline(onset, end, self._fold(pitch))

    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        onset, end, pitch = self.melody(music)
        if not len(onset):
            return np.zeros(0, dtype=np.int16)
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
        music.tracks.append(muspy.Track(program=self.program, name="melody", notes=notes))
        return music

    def describe(self) -> RepresentationInfo:
        return RepresentationInfo(
            kind="tokens",
            output="music",
            length_unit="steps",
            default_length=DEFAULT_BARS * self.steps_per_bar(),
            tracks=(TrackSpec("melody", self.program),),
            steps_per_beat=self.steps_per_beat,
            vocab_size=self.vocab_size,
        )

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
            "transpose_to_c": self.transpose_to_c,
            "program": self.program,
        }


def build_representation(config: Representation | dict[str, Any]) -> Representation:
    """Return ``config`` if it is already a representation, else instantiate it from its dict.

    A constructor's own error (a saved vocabulary this release cannot rebuild) comes out as itself,
    not wrapped in Hydra's ``InstantiationException``, so `load_model` reports it as a bad checkpoint.
    """
    if isinstance(config, Representation):
        return config
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(dict(config), _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ValueError | TypeError):
            raise exc.__cause__ from None
        raise
