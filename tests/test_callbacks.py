"""SampleMusic, rendering, `muselab.evaluate` and `muselab.sample`: real fits, real files, real W&B runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import muspy
import numpy as np
import pytest
import torch
from matplotlib.image import imread
from omegaconf import OmegaConf
from scipy.io import wavfile

from callbacks.sample_music import SampleMusic
from lightning_modules.pianoroll_rnn import PianoRollRNN
from muselab.music import rendering
from muselab.music.evaluation import loss_gap, music_windows
from muselab.music.metrics import METRIC_NAMES
from muselab.music.rendering import pianoroll_image, pitch_name, render_audio, resolve_backend
from muselab.wandb_offline import read_run
from tests.conftest import bach_representation
from tests.helpers import CONF_DIR, compose_train, small_train_overrides

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def _fresh_backend():
    """Each test chooses the audio backend (and may warn) afresh."""
    from callbacks import sample_music

    rendering.reset_backend()
    sample_music._warned_no_soundfile = False
    yield
    rendering.reset_backend()


def one_note(pitch: int = 69, beats: int = 4, resolution: int = 4) -> muspy.Music:
    track = muspy.Track(program=0, name="solo", notes=[muspy.Note(0, pitch, beats * resolution, 100)])
    return muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)], tracks=[track])


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    rate, audio = wavfile.read(path)
    assert audio.dtype == np.int16 and audio.ndim == 1, (audio.dtype, audio.shape)
    return rate, audio.astype(np.float64) / 32768.0


def assert_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return image


def tiny_model(datamodule) -> PianoRollRNN:
    return PianoRollRNN(datamodule.representation, hidden_size=16, num_layers=1, dropout=0.0)


def fit(tmp_path: Path, datamodule, model, callbacks, logger, epochs: int = 2) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=str(tmp_path),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def wandb_history(run_dir: Path) -> list[dict]:
    """Every ``history`` row of an offline run, keys joined with ``/`` (media keys are nested)."""
    return read_run(run_dir).history


class SilentRNN(PianoRollRNN):
    """A model that trains normally but only ever generates silence."""

    @torch.no_grad()
    def generate(self, n, length, temperature=1.0, prompt=None):
        return torch.zeros(n, length, self.n_tracks, self.n_pitches)


# ------------------------------------------------------------------------------ rendering
def test_pitch_names() -> None:
    assert [pitch_name(p) for p in (21, 59, 60, 69, 108)] == ["A0", "B3", "C4", "A4", "C8"]


def dominant_frequency(audio: np.ndarray, rate: int, seconds: float = 2.0) -> float:
    """Frequency (Hz) of the strongest partial between 100 Hz and 2 kHz in the first ``seconds``."""
    sounding = audio[: int(seconds * rate)]
    spectrum = np.abs(np.fft.rfft(sounding * np.hanning(len(sounding))))
    freqs = np.fft.rfftfreq(len(sounding), 1.0 / rate)
    band = (freqs > 100) & (freqs < 2000)
    return float(freqs[band][np.argmax(spectrum[band])])


@pytest.mark.parametrize("backend", ["fluidsynth", "numpy"])
def test_render_audio_sounds_the_right_pitch_for_as_long_as_the_note(tmp_path: Path, backend: str) -> None:
    wav = tmp_path / f"{backend}.wav"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = render_audio(one_note(69, beats=4), wav, sample_rate=22050, backend=backend)
    if backend == "fluidsynth" and not rendering.fluidsynth_available():
        # The fallback path: a missing fluidsynth warns once and still renders.
        assert used == "numpy" and len(caught) == 1 and "fluidsynth" in str(caught[0].message)
    else:
        assert used == backend and not caught
    rate, audio = read_wav(wav)
    assert rate == 22050
    # Four beats at 120 qpm: 2 s of note, plus at most a few seconds of release tail.
    assert 2.0 <= len(audio) / rate < 6.0
    assert 0.85 < np.abs(audio).max() <= 0.91  # peak-normalised
    assert np.sqrt(np.mean(audio[: 2 * rate] ** 2)) > 0.01
    assert abs(dominant_frequency(audio, rate) - 440.0) < 3.0  # A4
    for pitch in (48, 60, 72):  # and other notes of the piano, across octaves
        render_audio(one_note(pitch, beats=4), wav, backend=backend)
        expected = 440.0 * 2 ** ((pitch - 69) / 12)
        found = dominant_frequency(read_wav(wav)[1], rate)
        assert min(abs(found - expected), abs(found - 2 * expected)) < 0.02 * expected, (pitch, found)


def test_symusic_backend_renders_offline_but_out_of_tune(tmp_path: Path) -> None:
    """Why ``auto`` never picks symusic: its 0.5.9 synthesizer misses the pitch (A4 comes out at 784 Hz)."""
    used = render_audio(one_note(69, beats=4), tmp_path / "s.wav", backend="symusic")
    assert used == "symusic"
    rate, audio = read_wav(tmp_path / "s.wav")
    assert 2.0 <= len(audio) / rate < 6.0 and np.abs(audio).max() > 0.85
    found = dominant_frequency(audio, rate)
    assert min(abs(found - 440.0), abs(found - 880.0)) > 20.0, found


def test_missing_fluidsynth_falls_back_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no fluidsynth binary to find
    assert not rendering.fluidsynth_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = render_audio(one_note(), tmp_path / "a.wav")
        second = render_audio(one_note(60), tmp_path / "b.wav")
        forced = render_audio(one_note(), tmp_path / "c.wav", backend="fluidsynth")
    assert first == second == forced == "numpy"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "fluidsynth" in messages[0], messages
    for name in ("a", "b", "c"):
        _, audio = read_wav(tmp_path / f"{name}.wav")
        assert np.abs(audio).max() > 0.5


def test_auto_prefers_fluidsynth_when_installed() -> None:
    if rendering.fluidsynth_available():
        assert resolve_backend("auto") == "fluidsynth"
    else:
        with pytest.warns(UserWarning, match="fluidsynth"):
            assert resolve_backend("auto") == "numpy"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("timidity")


@pytest.mark.parametrize("backend", ["auto", "symusic", "numpy"])
def test_silence_gives_a_valid_silent_wav(tmp_path: Path, backend: str) -> None:
    silent = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 120.0)], tracks=[muspy.Track(program=0)])
    for i, music in enumerate([silent, muspy.Music(resolution=4)]):
        render_audio(music, tmp_path / f"{i}.wav", backend=backend)
        rate, audio = read_wav(tmp_path / f"{i}.wav")
        assert len(audio) == rate and not audio.any()  # one second of digital silence


def test_render_audio_reads_midi_files(tmp_path: Path) -> None:
    midi = tmp_path / "x.mid"
    muspy.write_midi(midi, one_note(57))
    render_audio(midi, tmp_path / "x.wav", sample_rate=16000, backend="numpy")
    rate, audio = read_wav(tmp_path / "x.wav")
    assert rate == 16000 and np.abs(audio).max() > 0.5


def test_pianoroll_image_is_resolution_independent_and_leaves_music_alone(tmp_path: Path) -> None:
    low = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 100.0)])
    for t, pitches in enumerate([(60, 64, 67), (48, 55)]):
        notes = [muspy.Note(4 * i, p, 4, 80) for i in range(8) for p in pitches]
        low.tracks.append(muspy.Track(program=0, name=f"t{t}", notes=notes))
    high = muspy.Music(resolution=10080, tempos=[muspy.Tempo(0, 100.0)])
    for track in low.tracks:
        notes = [muspy.Note(n.time * 2520, n.pitch, n.duration * 2520, n.velocity) for n in track.notes]
        high.tracks.append(muspy.Track(program=0, name=track.name, notes=notes))
    a = assert_png(pianoroll_image(low, tmp_path / "low.png", title="x"))
    b = assert_png(pianoroll_image(high, tmp_path / "high.png", title="x"))
    assert (
        high.resolution == 10080
        and high.tracks[0].notes[1].time == 0
        and high.tracks[0].notes[3].time == 10080
    )
    assert a.shape == b.shape and np.array_equal(a, b)
    # One row per track: a two-track image is taller than a one-track one.
    one = assert_png(pianoroll_image(one_note(), tmp_path / "one.png"))
    assert a.shape[0] > one.shape[0]
    # Notes are drawn: the image is not a blank grid.
    blank = assert_png(
        pianoroll_image(muspy.Music(resolution=4, tracks=[muspy.Track(), muspy.Track()]), tmp_path / "b.png")
    )
    assert blank.shape == a.shape and not np.array_equal(blank, a)


def test_pianoroll_image_of_silence_and_of_a_single_held_note(tmp_path: Path) -> None:
    for name, music in {
        "no_tracks": muspy.Music(resolution=4),
        "silent_track": muspy.Music(resolution=4, tracks=[muspy.Track(program=0)]),
        "held": one_note(60, beats=64),
        "zero_length": muspy.Music(resolution=480, tracks=[muspy.Track(notes=[muspy.Note(10, 127, 0, 1)])]),
    }.items():
        assert_png(pianoroll_image(music, tmp_path / f"{name}.png", title=name))


# ------------------------------------------------------------------------------ pure helpers
def test_loss_gap_and_music_windows() -> None:
    gap = loss_gap({"val/loss": torch.tensor(3.0), "train/loss_epoch": torch.tensor(2.0), "train/loss": 9.0})
    assert gap == {"overfit/loss_gap": 1.0, "overfit/loss_ratio": 1.5}
    assert loss_gap({"val/loss": 1.0}) == {} and loss_gap({"val/loss": math.nan, "train/loss": 1.0}) == {}
    representation = bach_representation()
    # 100 and 300 steps at 4 steps per beat: 6.25 and 18.75 bars.
    pieces = [representation.decode(np.ones((n, 4, 49), dtype=bool)) for n in (100, 300)]
    windows = music_windows(pieces, bars=4, max_windows=4)
    assert len(windows) == 4 and all(m.get_end_time() == 64 for m in windows)
    assert all(max(n.time + n.duration for t in m.tracks for n in t.notes) == 64 for m in windows)
    # Too few whole windows (1 + 4): they hop by a quarter window instead (3 + 15).
    assert len(music_windows(pieces, bars=4, max_windows=100)) == 3 + 15
    assert len(music_windows([representation.decode(np.ones((10, 4, 49), dtype=bool))], bars=4)) == 1


# ------------------------------------------------------------------------------ the callback in fit
def test_sample_music_in_fit_logs_media_and_metrics_to_offline_wandb(tmp_path: Path, bach_datamodule) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="muselab-test")
    callback = SampleMusic(n_samples=2, length=64, n_audio=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, bach_datamodule, tiny_model(bach_datamodule), [callback], logger)
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    # wandb.Audio needs the soundfile package: without it audio stays on disk, with one warning.
    has_soundfile = importlib.util.find_spec("soundfile") is not None
    soundfile_warnings = [w for w in caught if "soundfile" in str(w.message)]
    assert len(soundfile_warnings) == (0 if has_soundfile else 1)

    # Files on disk: every epoch's samples, one rendered, and one real validation window once.
    for epoch in (0, 1):
        folder = tmp_path / "samples" / f"epoch_{epoch:03d}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "sample_00.mid", "sample_00.png", "sample_00.wav", "sample_01.mid", "sample_01.png",
        ]  # fmt: skip
        for midi in folder.glob("*.mid"):
            assert sum(len(t.notes) for t in muspy.read_midi(midi).tracks) > 0
    assert sorted(p.name for p in (tmp_path / "samples" / "data").iterdir()) == [
        "real_00.mid", "real_00.png", "real_00.wav",
    ]  # fmt: skip

    # The logged gap is the epoch's val loss minus its train loss, both as Lightning reported them.
    final = trainer.callback_metrics
    expected_gap = float(final["val/loss"]) - float(final["train/loss_epoch"])
    assert callback.last_metrics["overfit/loss_gap"] == pytest.approx(expected_gap, rel=1e-5)
    assert 0.0 < callback.last_metrics["sample/callback_seconds"] < 60.0

    # The offline run holds the media files and every metric key.
    media = run_dir / "files" / "media"
    assert len(list((media / "images" / "samples").glob("*.png"))) == 4
    assert len(list((media / "images" / "data").glob("*.png"))) == 1
    assert len(list((media / "audio" / "samples").glob("*.wav"))) == (2 if has_soundfile else 0)
    assert len(list((media / "audio" / "data").glob("*.wav"))) == (1 if has_soundfile else 0)
    for png in (media / "images").rglob("*.png"):
        assert_png(png)
    assert (run_dir / "files" / "samples" / "epoch_001" / "sample_01.mid").exists()
    rows = wandb_history(run_dir)
    keys = {k for row in rows for k in row}
    expected = {
        "samples/pianoroll/_type", "data/pianoroll/_type",
        "overfit/loss_gap", "overfit/loss_ratio", "overfit/memorization", "sample/callback_seconds",
        "sample/n_notes", "val/loss",
        *(f"sample/{m}" for m in METRIC_NAMES), *(f"data/{m}" for m in METRIC_NAMES),
    }  # fmt: skip
    assert expected <= keys, expected - keys
    assert {k for k in keys if k.startswith("overfit/overlap_")}
    scalars = [(k, v) for row in rows for k, v in row.items() if isinstance(v, int | float)]
    assert all(math.isfinite(v) for _, v in scalars)
    assert sum(1 for row in rows if "samples/pianoroll/_type" in row) == 2  # once per epoch
    assert sum(1 for row in rows if "data/pitch_range" in row) == 1  # real-data metrics once
    if not has_soundfile:
        assert not {k for k in keys if "/audio/" in k}
        return
    # Audio renders in the background and is logged later, at the step of the samples it belongs to.
    assert {"samples/audio/_type", "data/audio/_type"} <= keys
    image_steps = [row["trainer/global_step"] for row in rows if "samples/pianoroll/_type" in row]
    audio_steps = [row["trainer/global_step"] for row in rows if "samples/audio/_type" in row]
    assert image_steps == audio_steps == [2, 4]
    audio = next(row for row in rows if "samples/audio/_type" in row)
    assert audio["samples/audio/sampleRates"] == [22050] and audio["samples/audio/count"] == 1
    logged = {p.read_bytes() for p in (media / "audio" / "samples").glob("*.wav")}
    assert (tmp_path / "samples" / "epoch_001" / "sample_00.wav").read_bytes() in logged


def test_tensorboard_csv_and_no_logger_and_every_n_epochs(tmp_path: Path, bach_datamodule) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = [TensorBoardLogger(str(tmp_path / "tb"), name=""), CSVLogger(str(tmp_path / "csv"), name="")]
    fit(
        tmp_path / "a",
        bach_datamodule,
        tiny_model(bach_datamodule),
        [SampleMusic(2, 32, n_audio=1)],
        loggers,
        1,
    )
    events = EventAccumulator(loggers[0].log_dir, size_guidance={"images": 0, "audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"samples/pianoroll_0", "samples/pianoroll_1", "data/pianoroll_0"} <= set(tags["images"])
    assert {"samples/audio_0", "data/audio_0"} <= set(tags["audio"])
    assert {"sample/callback_seconds", "overfit/loss_gap", "overfit/memorization", "data/pitch_range"} <= set(
        tags["scalars"]
    )
    [image] = events.Images("samples/pianoroll_0")
    assert image.width > 50 and image.height > 50
    header = next(Path(loggers[1].log_dir).glob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"sample/callback_seconds", "overfit/loss_gap", "sample/pitch_range", "data/pitch_range"} <= set(
        header
    )
    assert len(list((tmp_path / "a" / "samples" / "epoch_000").glob("*.png"))) == 2

    # No logger, every second epoch: files only, for epochs 1 and 3 (0-based).
    callback = SampleMusic(1, 32, every_n_epochs=2, n_audio=0)
    fit(tmp_path / "b", bach_datamodule, tiny_model(bach_datamodule), [callback], False, 4)
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == [
        "data",
        "epoch_001",
        "epoch_003",
    ]
    assert sorted(p.name for p in (tmp_path / "b" / "samples" / "epoch_003").iterdir()) == [
        "sample_00.mid",
        "sample_00.png",
    ]
    assert "overfit/memorization" in callback.last_metrics


def test_sampling_does_not_change_training(tmp_path: Path, bach_datamodule) -> None:
    """The callback samples under a forked RNG: the same seed trains the same weights with or without it."""
    weights = []
    for name, callbacks in (("with", [SampleMusic(2, 32, n_audio=0, images=False)]), ("without", [])):
        L.seed_everything(7, verbose=False)
        model = PianoRollRNN(bach_datamodule.representation, hidden_size=16, num_layers=1, dropout=0.5)
        fit(tmp_path / name, bach_datamodule, model, callbacks, False, 2)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (tmp_path / "with" / "samples" / "epoch_001").is_dir()
    assert torch.equal(weights[0], weights[1])


def test_silent_model_still_gives_valid_files_and_finite_metrics(tmp_path: Path, bach_datamodule) -> None:
    callback = SampleMusic(n_samples=2, length=64, n_audio=2, background_audio=False)
    model = SilentRNN(bach_datamodule.representation, hidden_size=16, num_layers=1)
    fit(tmp_path, bach_datamodule, model, [callback], False, 1)
    folder = tmp_path / "samples" / "epoch_000"
    for i in range(2):
        assert sum(len(t.notes) for t in muspy.read_midi(folder / f"sample_{i:02d}.mid").tracks) == 0
        assert_png(folder / f"sample_{i:02d}.png")
        rate, audio = read_wav(folder / f"sample_{i:02d}.wav")
        assert len(audio) == rate and not audio.any()
    metrics = callback.last_metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["sample/n_notes"] == 0 and metrics["overfit/memorization"] == 0.0
    assert metrics["sample/empty_bar_rate"] == 1.0 and metrics["data/empty_bar_rate"] < 0.5


def test_trainer_validate_runs_the_callback_too(tmp_path: Path, bach_datamodule) -> None:
    from lightning.pytorch.loggers import CSVLogger

    callback = SampleMusic(n_samples=1, length=32, n_audio=1)
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = L.Trainer(
        default_root_dir=str(tmp_path), logger=logger, callbacks=[callback], limit_val_batches=1,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.validate(tiny_model(bach_datamodule), datamodule=bach_datamodule)
    names = sorted(p.name for p in (tmp_path / "samples" / "epoch_000").iterdir())
    assert names == ["sample_00.mid", "sample_00.png", "sample_00.wav"]  # background audio waited for
    assert (
        "sample/pitch_range" in trainer.callback_metrics
        and "overfit/loss_gap" not in trainer.callback_metrics
    )
    logger.save()
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "sample/callback_seconds" in header and "data/pitch_range" in header


# ------------------------------------------------------------------------------ evaluate and sample CLIs
def make_run(tmp_path: Path, cache_dir: Path) -> Path:
    """Train a tiny run in-process and save its config the way a Hydra app does (``.hydra/``)."""
    from muselab.train import train

    run = tmp_path / "run"
    cfg = compose_train(
        small_train_overrides(
            tmp_path, cache_dir, "logger=none", "n_samples=0", "callbacks.sample_music=null"
        ),
        output_dir=run,
    )
    out = train(cfg)
    (run / ".hydra").mkdir(parents=True)
    # Hydra writes the task config unresolved without its `hydra` node, and that node beside it.
    OmegaConf.save(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run / ".hydra" / "config.yaml"
    )
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), run / ".hydra" / "hydra.yaml")
    assert Path(out["last_ckpt"]).is_file()
    return run


def test_evaluate_cli_writes_json_and_markdown_for_a_moved_run(tmp_path: Path, cache_dir: Path) -> None:
    from muselab.evaluate import load_run_config, main

    run = make_run(tmp_path, cache_dir)
    moved = tmp_path / "moved" / "run"
    shutil.move(str(run), str(moved))  # the run dir in hydra.yaml no longer exists
    cfg = load_run_config(moved)
    assert cfg.data_name == "bach" and cfg.paths.output_dir == str(moved.resolve())
    main([f"ckpt={moved / 'checkpoints' / 'last.ckpt'}", "n=2", "length=64", "n_real=8", "n_audio=1"])

    out = moved / "evaluation"
    report = json.loads((out / "evaluation.json").read_text())
    metrics = report["metrics"]
    assert metrics["test/loss"] > 0 and metrics["test/bits_per_step"] == pytest.approx(
        metrics["test/loss"] / math.log(2)
    )
    for key in ("overfit/memorization", "data/memorization", "sample/pitch_range", "data/pitch_range"):
        assert math.isfinite(metrics[key]), key
    assert any(k.startswith("overfit/overlap_") for k in metrics)
    assert all(v is None or math.isfinite(v) for v in metrics.values())
    assert report["n_samples"] == 2 and report["length"] == 64 and report["n_real"] == 8
    markdown = (out / "evaluation.md").read_text()
    assert "| test/loss" in markdown and "| pitch_range |" in markdown
    images = [line[line.index("(") + 1 : -1] for line in markdown.splitlines() if line.startswith("![")]
    assert len(images) == 2 + 2  # every sample and two real windows
    for image in images:
        assert_png(out / image)
    assert (out / report["samples"][0]["wav"]).is_file() and report["samples"][1]["wav"] is None


def test_sample_cli_writes_png_and_wav_beside_each_midi(tmp_path: Path, cache_dir: Path) -> None:
    from muselab.sample import main

    run = make_run(tmp_path, cache_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    main([f"ckpt={ckpt}", "n=2", f"out={tmp_path / 's'}", "length=32", "audio_backend=numpy"])
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == [f"sample_{i:02d}.{ext}" for i in range(2) for ext in ("mid", "png", "wav")]
    assert_png(tmp_path / "s" / "sample_01.png")
    main([f"ckpt={ckpt}", "n=1", f"out={tmp_path / 'plain'}", "length=32", "render=false"])
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["sample_00.mid"]


@pytest.mark.slow
def test_train_then_evaluate_through_the_real_clis(tmp_path: Path, cache_dir: Path) -> None:
    """`python -m muselab.train` (default callbacks, SampleMusic included) then `python -m muselab.evaluate`."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    run = tmp_path / "cli"
    overrides = small_train_overrides(tmp_path, cache_dir, "logger=csv", "trainer.max_epochs=2")
    subprocess.run(
        [sys.executable, "-m", "muselab.train", *overrides, f"hydra.run.dir={run}", "callbacks.sample_music.n_samples=2"],
        check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert sorted(p.name for p in (run / "samples").iterdir() if p.is_dir()) == [
        "data",
        "epoch_000",
        "epoch_001",
    ]
    header = next((run / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "sample/callback_seconds" in header and "overfit/loss_gap" in header
    subprocess.run(
        [sys.executable, "-m", "muselab.evaluate", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "n=2", "length=64"],
        check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert report["data"] == "bach" and math.isfinite(report["metrics"]["test/loss"])
    assert Path(CONF_DIR, "callbacks", "default.yaml").read_text().count("SampleMusic") == 1
