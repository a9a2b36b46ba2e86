"""Shared fixtures: offline W&B, a small real Bach datamodule, and folders of real MIDI files."""

from __future__ import annotations

import os
from pathlib import Path

import muspy
import numpy as np
import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

BACH_TRACKS = [["soprano"], ["alto"], ["tenor"], ["bass"]]


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    # A W&B run in this process leaves its service's address in WANDB_SERVICE; a child process that
    # inherits it attaches to that service, which outlives the child, so a second child resuming the
    # same run id is refused ("run ID ... is in use"). Each child starts its own service, as in real use.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessing cache per test session (per xdist worker)."""
    return tmp_path_factory.mktemp("muselab-cache")


def bach_representation(**overrides):
    from datamodules.representations import PianoRollRepresentation

    kwargs = {
        "n_tracks": 4,
        "track_mode": "name",
        "track_names": BACH_TRACKS,
        "pitch_low": 36,
        "pitch_high": 84,
    }
    kwargs.update(overrides)
    return PianoRollRepresentation(**kwargs)


@pytest.fixture
def bach_datamodule(cache_dir: Path):
    """A real `MusicDataModule` over the first 24 Bach chorales of the music21 corpus."""
    from datamodules import MusicDataModule
    from datamodules.sources import Music21CorpusSource

    return MusicDataModule(
        Music21CorpusSource("bach", limit=24),
        bach_representation(),
        cache_dir=str(cache_dir),
        window=32,
        batch_size=8,
    )


def random_music(
    rng: np.random.Generator, n_tracks: int = 2, n_notes: int = 40, resolution: int = 24
) -> muspy.Music:
    """Random polyphonic music with chords (several notes on one onset) on ``n_tracks`` tracks."""
    music = muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)])
    for t in range(n_tracks):
        notes = []
        for _ in range(n_notes):
            onset = int(rng.integers(0, 64)) * resolution // 4
            notes.append(
                muspy.Note(onset, int(rng.integers(40, 80)), int(rng.integers(1, 8)) * resolution // 4, 90)
            )
        music.tracks.append(muspy.Track(program=[0, 33, 40, 24][t % 4], name=f"part{t}", notes=notes))
    return music


def write_midi_folder(root: Path, n_good: int = 6, seed: int = 0, bad: bool = True) -> Path:
    """Write ``n_good`` real random MIDI files, plus (if ``bad``) a corrupt, an empty and a zero-note file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        muspy.write_midi(sub / f"piece{i}.mid", random_music(rng))
    if bad:
        (root / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage-not-midi" * 3)
        (root / "empty.mid").write_bytes(b"")
        silent = muspy.Music(resolution=24, tempos=[muspy.Tempo(0, 120.0)], tracks=[muspy.Track(program=0)])
        muspy.write_midi(root / "silent.mid", silent)
    return root


@pytest.fixture
def midi_folder(tmp_path: Path) -> Path:
    return write_midi_folder(tmp_path / "midi")
