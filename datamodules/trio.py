"""Trio: melody + bass + drums, one token per part and step (MusicVAE's trio, Magenta style).

An encoded piece is a ``(steps, 3)`` integer array on a 16th-note grid:

- column 0, **melody**, and column 1, **bass**: melody events as `MelodyRepresentation` writes them
  (0 hold, 1 note off, ``2 + pitch - pitch_low`` note on), over one pitch range for both;
- column 2, **drums**: which of Magenta's 9 drum classes are hit at that step, as a 9-bit number
  (0 = nothing hit, 511 = all nine). Drums are onsets only.

Which tracks are which (Magenta's TrioConverter uses programs alone; names are MuseLab's addition):

- drums: every drum track, merged; drum pitches outside the 9 classes are dropped;
- bass: the pitched tracks whose program is a General MIDI bass (32-39) or whose name starts with
  "bass"; the **lowest** note wins at each onset;
- melody: read from the other pitched tracks by `datamodules.melody` (``melody_track``: a track named
  or programmed as the melody, else the only one, else the highest voice over all of them).

A piece that lacks one of the three parts is skipped (``require_all``), as Magenta skips it.
"""

from __future__ import annotations

from typing import Any

import muspy
import numpy as np

from datamodules.melody import melody_tracks, skyline
from datamodules.notes import DURATION, ONSET, PITCH, NoteTable, TrackNotes, as_note_table
from datamodules.representations import (
    DEFAULT_BARS,
    MelodyRepresentation,
    Representation,
    RepresentationInfo,
    StepGrid,
    TrackSpec,
    Transposable,
)
from datamodules.sources import UnusableItem

# Magenta's reduced drum map (note_seq's DEFAULT_DRUM_TYPE_PITCHES): class -> General MIDI drum
# pitches; the first pitch of a class is the one decoding writes.
DRUM_CLASSES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("kick", (36, 35)),
    ("snare", (38, 27, 28, 31, 32, 33, 34, 37, 39, 40, 56, 65, 66, 75, 85)),
    ("closed hi-hat", (42, 44, 54, 68, 69, 70, 71, 73, 78, 80, 22)),
    ("open hi-hat", (46, 67, 72, 74, 79, 81, 26)),
    ("low tom", (45, 29, 41, 43, 61, 64, 84)),
    ("mid tom", (48, 47, 60, 63, 77, 86, 87)),
    ("high tom", (50, 30, 62, 76, 83)),
    ("crash", (49, 52, 55, 57, 58)),
    ("ride", (51, 53, 59, 82)),
)
N_DRUM_CLASSES = len(DRUM_CLASSES)
DRUM_VOCAB = 2**N_DRUM_CLASSES  # every subset of the 9 classes: 512 drum events
_DRUM_CLASS_OF_PITCH = np.full(128, -1, dtype=np.int64)
for _index, (_, _pitches) in enumerate(DRUM_CLASSES):
    _DRUM_CLASS_OF_PITCH[list(_pitches)] = _index
BASS_PROGRAMS = range(32, 40)
BASS_NAMES = ("bass",)


def drum_classes(pitch: np.ndarray) -> np.ndarray:
    """Magenta's drum class (0..8) of each General MIDI drum pitch; -1 for a pitch in no class."""
    pitch = np.asarray(pitch, dtype=np.int64)
    out = np.full(pitch.shape, -1, dtype=np.int64)
    valid = (pitch >= 0) & (pitch < 128)
    out[valid] = _DRUM_CLASS_OF_PITCH[pitch[valid]]
    return out


def is_bass(track: TrackNotes) -> bool:
    """A pitched track that plays the bass: a General MIDI bass program or a name starting "bass"."""
    return not track.is_drum and (
        track.program in BASS_PROGRAMS or track.name.strip().lower().startswith(BASS_NAMES)
    )


def lowest_line(tracks: list[TrackNotes]) -> TrackNotes:
    """One monophonic track from ``tracks``: the lowest note wins at each onset (ticks)."""
    notes = np.concatenate([t.notes for t in tracks]) if tracks else np.zeros((0, 4), dtype=np.int64)
    if not len(notes):
        return TrackNotes(notes)
    onset, end = notes[:, ONSET], notes[:, ONSET] + notes[:, DURATION]
    # `skyline` keeps the highest pitch: negated pitches make it keep the lowest.
    onset, end, negative = skyline(onset, end, -notes[:, PITCH])
    return TrackNotes(np.stack([onset, end - onset, -negative, np.full(len(onset), 80)], axis=1))


class TrioRepresentation(Representation, StepGrid, Transposable):
    """Melody, bass and drums as three tokens per 16th-note step (see the module docstring).

    Args:
        pitch_low, pitch_high: inclusive MIDI range of the melody and bass events (Magenta: 21..108,
            90 classes each); notes outside are moved by octaves into it.
        steps_per_beat: time steps per quarter note.
        melody_track: which of the non-bass pitched tracks is the melody (``auto``, an index, or
            ``skyline``; see `datamodules.melody.melody_tracks`).
        require_all: skip a piece without a melody, a bass or drums (its encoding raises
            `UnusableItem`, which the cache reports as the reason).
        melody_program, bass_program: General MIDI programs of the decoded melody and bass.
    """

    MELODY, BASS, DRUMS = 0, 1, 2
    PART_NAMES = ("melody", "bass", "drums")

    def __init__(
        self,
        pitch_low: int = 21,
        pitch_high: int = 108,
        steps_per_beat: int = 4,
        melody_track: int | str = "auto",
        require_all: bool = True,
        melody_program: int = 0,
        bass_program: int = 33,
    ) -> None:
        if isinstance(melody_track, str) and melody_track not in ("auto", "skyline"):
            melody_track = int(melody_track)
        self.melody_track = melody_track
        self.require_all = bool(require_all)
        self.steps_per_beat = int(steps_per_beat)
        # Both pitched parts are melody events: the melody codec writes and reads them.
        self.melody = MelodyRepresentation(
            pitch_low, pitch_high, steps_per_beat, track="skyline", program=melody_program
        )
        self.bass = MelodyRepresentation(
            pitch_low, pitch_high, steps_per_beat, track="skyline", program=bass_program
        )

    @property
    def pitch_low(self) -> int:
        return self.melody.pitch_low

    @property
    def pitch_high(self) -> int:
        return self.melody.pitch_high

    @property
    def n_pitches(self) -> int:
        return self.melody.n_pitches

    @property
    def part_sizes(self) -> tuple[int, int, int]:
        """Number of token values of each column: melody, bass, drums."""
        return (self.melody.vocab_size, self.bass.vocab_size, DRUM_VOCAB)

    # ------------------------------------------------------------------ codec
    def parts(
        self, music: muspy.Music | NoteTable
    ) -> tuple[list[TrackNotes], list[TrackNotes], list[TrackNotes]]:
        """The source tracks the melody, the bass and the drums are read from."""
        table = as_note_table(music)
        tracks = [t for t in table.tracks if len(t.notes)]
        drums = [t for t in tracks if t.is_drum]
        bass = [t for t in tracks if is_bass(t)]
        others = [t for t in tracks if not t.is_drum and not is_bass(t)]
        return melody_tracks(others, self.melody_track), bass, drums

    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        table = as_note_table(music)
        melody, bass, drums = self.parts(table)
        if self.require_all:
            missing = [name for name, part in zip(self.PART_NAMES, (melody, bass, drums)) if not part]
            if missing:
                raise UnusableItem(f"trio: no {' and no '.join(missing)} track")
        columns = [
            self.melody.encode(NoteTable(table.resolution, melody)),
            self.bass.encode(NoteTable(table.resolution, [lowest_line(bass)])),
            self.encode_drums(drums, table.resolution),
        ]
        out = np.zeros((max(len(c) for c in columns), 3), dtype=np.int16)
        for index, column in enumerate(columns):
            out[: len(column), index] = column
        return out

    def encode_drums(self, tracks: list[TrackNotes], resolution: int) -> np.ndarray:
        """Per step, the 9-bit set of drum classes hit (onsets only)."""
        notes = np.concatenate([t.notes for t in tracks]) if tracks else np.zeros((0, 4), dtype=np.int64)
        classes = drum_classes(notes[:, PITCH])
        steps = self.quantize(notes[classes >= 0, ONSET], resolution)
        if not len(steps):
            return np.zeros(0, dtype=np.int16)
        events = np.zeros(int(steps.max()) + 1, dtype=np.int64)
        np.bitwise_or.at(events, steps, 1 << classes[classes >= 0])
        return events.astype(np.int16)

    def decode(self, array: np.ndarray) -> muspy.Music:
        array = np.asarray(array).astype(np.int64).reshape(-1, 3)
        music = self.new_music(len(array))
        for column, codec, name in ((0, self.melody, "melody"), (1, self.bass, "bass")):
            track = codec.decode(array[:, column]).tracks[0]
            track.name = name
            music.tracks.append(track)
        notes = [
            muspy.Note(int(step), DRUM_CLASSES[c][1][0], 1, 80)
            for step, event in enumerate(array[:, 2])
            for c in range(N_DRUM_CLASSES)
            if event >> c & 1
        ]
        music.tracks.append(muspy.Track(program=0, is_drum=True, name="drums", notes=notes))
        return music

    def describe(self) -> RepresentationInfo:
        return RepresentationInfo(
            kind="trio",
            output="music",
            length_unit="steps",
            default_length=DEFAULT_BARS * self.steps_per_bar(),
            tracks=(
                TrackSpec("melody", self.melody.program),
                TrackSpec("bass", self.bass.program),
                TrackSpec("drums", 0, is_drum=True),
            ),
            shape_per_step=(3,),
            steps_per_beat=self.steps_per_beat,
        )

    # ------------------------------------------------------------------ transposition (drums stay)
    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray:
        out = np.array(array, copy=True)
        pitched = out[..., :2]
        pitched[pitched >= MelodyRepresentation.FIRST_NOTE_ON] += semitones
        return out

    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        pitched = np.asarray(array)[..., :2]
        on = pitched[pitched >= MelodyRepresentation.FIRST_NOTE_ON] - MelodyRepresentation.FIRST_NOTE_ON
        return (int(on.min()), int(on.max())) if len(on) else None

    def to_config(self) -> dict[str, Any]:
        return {
            "_target_": f"{__name__}.TrioRepresentation",
            "pitch_low": self.pitch_low,
            "pitch_high": self.pitch_high,
            "steps_per_beat": self.steps_per_beat,
            "melody_track": self.melody_track,
            "require_all": self.require_all,
            "melody_program": self.melody.program,
            "bass_program": self.bass.program,
        }
