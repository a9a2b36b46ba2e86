"""MusPy-backed data: sources, representations, the preprocessing cache and `MusicDataModule`."""

from datamodules.music_datamodule import MusicDataModule, WindowDataset, hash_split
from datamodules.notes import NoteTable, TrackNotes
from datamodules.representations import MelodyRepresentation, PianoRollRepresentation, Representation

__all__ = [
    "MelodyRepresentation",
    "MusicDataModule",
    "NoteTable",
    "PianoRollRepresentation",
    "Representation",
    "TrackNotes",
    "WindowDataset",
    "hash_split",
]
