"""A light, array-based score: the currency between sources and representations.

Building one `muspy.Note` object per note costs more than parsing a MIDI file with symusic, so the
data pipeline passes scores around as numpy arrays and only builds `muspy.Music` at the edges
(muspy/music21 sources on the way in, `Representation.decode` on the way out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import muspy
import numpy as np

# Columns of `TrackNotes.notes`.
ONSET, DURATION, PITCH, VELOCITY = range(4)


@dataclass
class TrackNotes:
    """The notes of one track as an (n, 4) int64 array: onset, duration (ticks), pitch, velocity."""

    notes: np.ndarray
    program: int = 0
    is_drum: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.notes = np.asarray(self.notes, dtype=np.int64).reshape(-1, 4)


@dataclass
class NoteTable:
    """A score as note arrays per track, with its time resolution in ticks per quarter note."""

    resolution: int
    tracks: list[TrackNotes] = field(default_factory=list)
    title: str = ""

    @property
    def n_notes(self) -> int:
        return int(sum(len(t.notes) for t in self.tracks))

    @property
    def end_tick(self) -> int:
        ends = [int((t.notes[:, ONSET] + t.notes[:, DURATION]).max()) for t in self.tracks if len(t.notes)]
        return max(ends, default=0)

    @classmethod
    def from_music(cls, music: muspy.Music) -> NoteTable:
        """Convert a `muspy.Music` (any resolution) to a note table."""
        tracks = []
        for track in music.tracks:
            arr = np.array(
                [
                    (n.time, n.duration, n.pitch, n.velocity if n.velocity is not None else 64)
                    for n in track.notes
                ],
                dtype=np.int64,
            ).reshape(-1, 4)
            tracks.append(TrackNotes(arr, int(track.program or 0), bool(track.is_drum), track.name or ""))
        title = music.metadata.title if music.metadata is not None and music.metadata.title else ""
        return cls(int(music.resolution or muspy.DEFAULT_RESOLUTION), tracks, title)

    @classmethod
    def from_symusic(cls, score) -> NoteTable:
        """Convert a `symusic.Score` in tick time, reading note arrays without Python objects per note."""
        tracks = []
        for track in score.tracks:
            columns = track.notes.numpy()
            # Filling the columns of one int64 array copies each once; stack + astype copied twice.
            arr = np.empty((len(columns["time"]), 4), dtype=np.int64)
            arr[:, ONSET] = columns["time"]
            arr[:, DURATION] = columns["duration"]
            arr[:, PITCH] = columns["pitch"]
            arr[:, VELOCITY] = columns["velocity"]
            tracks.append(TrackNotes(arr, int(track.program), bool(track.is_drum), track.name))
        return cls(int(score.ticks_per_quarter), tracks)

    @classmethod
    def read_midi(cls, path: str | Path) -> NoteTable:
        """Read a MIDI file with symusic (about 100x faster than muspy/mido/pretty_midi)."""
        import symusic

        return cls.from_symusic(symusic.Score(str(path)))

    def to_music(self, tempo_qpm: float = 100.0) -> muspy.Music:
        """Build a `muspy.Music` from the table."""
        music = muspy.Music(resolution=self.resolution, tempos=[muspy.Tempo(0, tempo_qpm)])
        if self.title:
            music.metadata = muspy.Metadata(title=self.title)
        for t in self.tracks:
            notes = [muspy.Note(int(o), int(p), int(d), int(v)) for o, d, p, v in t.notes if d > 0]
            music.tracks.append(muspy.Track(program=t.program, is_drum=t.is_drum, name=t.name, notes=notes))
        return music


def as_note_table(music: muspy.Music | NoteTable) -> NoteTable:
    """Accept either a `muspy.Music` or a `NoteTable`."""
    return music if isinstance(music, NoteTable) else NoteTable.from_music(music)
