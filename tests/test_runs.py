"""Runs that protect themselves: resume in place with the same curve, last.ckpt at every validation,
a stop with a message on NaN, unique run directories, refused changes on resume, denormals flushed,
and tracks kept apart as the user's files have them."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import lightning as L
import muspy
import numpy as np
import pytest
import torch

from callbacks.training_guards import LastAndBestCheckpoint
from datamodules import MusicDataModule
from datamodules.sources import FolderSource
from lightning_modules.base import load_model
from lightning_modules.pianoroll_rnn import PianoRollRNN
from muselab.train import train
from tests.helpers import CONF_DIR, compose_train, small_train_overrides

ROOT = Path(CONF_DIR).parent


def cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "muselab.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def quiet(tmp_path: Path, cache_dir: Path, *extra: str) -> list[str]:
    return small_train_overrides(
        tmp_path, cache_dir, "n_samples=0", "test=false", "callbacks.sample_music=null", *extra
    )


# ------------------------------------------------------------------------------------ resume
def test_a_resumed_run_continues_its_directory_and_its_wandb_run(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    first = cli(*quiet(tmp_path, cache_dir, "logger=wandb"), f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    # Resume from the checkpoint alone: no run directory given.
    second = cli(*quiet(tmp_path, cache_dir, "logger=wandb", "trainer.max_epochs=2"), f"ckpt_path={last}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert torch.load(last, weights_only=False)["epoch"] == 1
    assert [p.name for p in (run / ".hydra").iterdir() if p.name.startswith("resumed-")]
    assert (run / ".hydra" / "config.yaml").is_file()  # the run's own config stays where it was
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # one W&B run id


def test_resumed_training_matches_an_uninterrupted_run(tmp_path: Path, cache_dir: Path) -> None:
    """Data order, transpositions and dropout continue as if the run had never stopped."""
    common = ["logger=none", "data.transpose=5", "model.dropout=0.3", "trainer.limit_val_batches=1"]
    whole = train(
        compose_train(quiet(tmp_path, cache_dir, *common, "trainer.max_epochs=3"), tmp_path / "whole")
    )
    half = train(
        compose_train(quiet(tmp_path, cache_dir, *common, "trainer.max_epochs=1"), tmp_path / "half")
    )
    resumed = train(
        compose_train(
            quiet(tmp_path, cache_dir, *common, "trainer.max_epochs=3", f"ckpt_path={half['last_ckpt']}"),
            tmp_path / "resumed",
        )
    )
    a = torch.load(whole["last_ckpt"], weights_only=False)["state_dict"]
    b = torch.load(resumed["last_ckpt"], weights_only=False)["state_dict"]
    for name in a:
        torch.testing.assert_close(
            b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert resumed["metrics"]["train/loss_epoch"] == pytest.approx(
        whole["metrics"]["train/loss_epoch"], rel=1e-5
    )


def test_resume_refuses_a_changed_setting_and_a_broken_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    assert cli(*quiet(tmp_path, cache_dir, "logger=none"), f"hydra.run.dir={run}").returncode == 0
    last = run / "checkpoints" / "last.ckpt"
    changed = cli(*quiet(tmp_path, cache_dir, "logger=none", "model.optimizer.lr=1e6"), f"ckpt_path={last}")
    assert changed.returncode == 2
    assert "model.optimizer.lr: 0.005 -> 1000000.0" in changed.stderr and "Traceback" not in changed.stderr
    # A checkpoint moved out of its run directory is checked against the settings it records.
    moved = tmp_path / "moved.ckpt"
    shutil.copy(last, moved)
    changed = cli(*quiet(tmp_path, cache_dir, "logger=none", "model.optimizer.lr=1e6"), f"ckpt_path={moved}")
    assert changed.returncode == 2 and "differ from the settings recorded in it" in changed.stderr
    assert "model.optimizer.lr: 0.005 -> 1000000.0" in changed.stderr
    longer = [
        a if a != "trainer.max_epochs=1" else "trainer.max_epochs=2" for a in quiet(tmp_path, cache_dir)
    ]
    same = cli(
        *longer,
        "logger=none",
        f"ckpt_path={moved}",
        f"hydra.run.dir={tmp_path / 'run-moved'}",
    )
    assert same.returncode == 0, same.stderr[-2000:]
    resumed = torch.load(tmp_path / "run-moved" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["muselab_run_settings"]["model"]["optimizer"]["lr"] == 0.005
    cut = last.read_bytes()[: last.stat().st_size // 2]
    noise = random.Random(0).randbytes(300)
    for name, content in (("empty.ckpt", b""), ("noise.ckpt", noise), ("cut.ckpt", cut)):
        bad = tmp_path / name
        bad.write_bytes(content)
        result = cli(
            *quiet(tmp_path, cache_dir, "logger=none"),
            f"ckpt_path={bad}",
            f"hydra.run.dir={tmp_path / ('run-' + name)}",
        )
        assert result.returncode == 2 and f"{bad}: not a readable checkpoint" in result.stderr


def test_sample_names_a_corrupt_checkpoint_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    for name, content, why in (
        ("empty.ckpt", b"", "the file is empty"),
        ("noise.ckpt", b"\x80\x02junk", "not the zip archive that torch.save writes"),
        ("other.zip", None, "RuntimeError"),
    ):
        bad = tmp_path / name
        if content is None:
            with zipfile.ZipFile(bad, "w") as archive:
                archive.writestr("archive/notes.txt", "a zip, but not a checkpoint")
        else:
            bad.write_bytes(content)
        result = subprocess.run(
            [sys.executable, "-m", "muselab.sample", f"ckpt={bad}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"muselab.sample: error: {bad}: not a readable checkpoint") and why in line


def test_a_checkpoint_of_another_layout_says_which_it_needs(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    assert cli(*quiet(tmp_path, cache_dir, "logger=none"), f"hydra.run.dir={run}").returncode == 0
    # Moved out of its run directory, the checkpoint alone says what it was trained on: first by the
    # run settings it records, and, in a checkpoint that records none, by its representation.
    moved = tmp_path / "moved.ckpt"
    (run / "checkpoints" / "last.ckpt").rename(moved)

    def resume() -> subprocess.CompletedProcess:
        return cli(
            *quiet(tmp_path, cache_dir, "logger=none", "layout.pitch_low=40"),
            f"ckpt_path={moved}",
            "hydra.run.dir=" + str(tmp_path / "x"),
        )

    other = resume()
    assert other.returncode == 2 and "data.representation.pitch_low: 36 -> 40" in other.stderr
    checkpoint = torch.load(moved, weights_only=False)
    del checkpoint["muselab_run_settings"]
    torch.save(checkpoint, moved)
    other = resume()
    assert other.returncode == 2
    assert "trained on another data layout (pitch_low: 36 (checkpoint) vs 40 (now))" in other.stderr


# ------------------------------------------------------------------------------------ guards
class RisingLoss(PianoRollRNN):
    """Validation loss that gets worse every epoch: only the first epoch improves."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch), batch_size=len(batch["x"]))


def test_last_ckpt_holds_the_latest_epoch_after_a_non_improving_one(tmp_path: Path, bach_datamodule) -> None:
    checkpoint = LastAndBestCheckpoint(
        dirpath=str(tmp_path), monitor="val/loss", save_top_k=1, save_last=True, enable_version_counter=False
    )
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=1, limit_val_batches=1, logger=False, callbacks=[checkpoint],
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(
        RisingLoss(bach_datamodule.representation, hidden_size=8, num_layers=1), datamodule=bach_datamodule
    )
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(checkpoint.best_model_path, weights_only=False)["epoch"] == 0


def test_a_diverging_run_stops_with_a_message_and_leaves_a_usable_checkpoint(
    tmp_path: Path, cache_dir: Path
) -> None:
    run = tmp_path / "nan"
    result = cli(
        *quiet(tmp_path, cache_dir, "logger=none", "model.optimizer.lr=1e30", "model.gradient_clip_val=null"),
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if "error:" in x]
    assert "train/loss is nan at step" in line and "the run diverged and was stopped" in line
    assert "the last good checkpoint is" in line
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    [music] = model.sample(1, length=16)
    music.validate()


class DenormalProbe(L.Callback):
    """Records whether a denormal float survives arithmetic during a training step."""

    flushed: ClassVar[list[bool]] = []  # shared with the test, which reads it after the run

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal (1.2e-38)
        DenormalProbe.flushed.append(bool((tiny * 1.0).item() == 0.0))


def test_denormals_are_flushed_during_cpu_training_and_the_setting_turns_it_off(
    tmp_path: Path, cache_dir: Path
) -> None:
    probe = [
        "+callbacks.probe._target_=tests.test_runs.DenormalProbe",
        "logger=none",
        "trainer.fast_dev_run=true",
    ]
    try:
        DenormalProbe.flushed = []
        train(compose_train(quiet(tmp_path, cache_dir, *probe), tmp_path / "on"))
        assert DenormalProbe.flushed and all(DenormalProbe.flushed)
        DenormalProbe.flushed = []
        torch.set_flush_denormal(False)
        train(compose_train(quiet(tmp_path, cache_dir, *probe, "flush_denormal=false"), tmp_path / "off"))
        assert DenormalProbe.flushed and not any(DenormalProbe.flushed)
    finally:
        torch.set_flush_denormal(False)


def test_two_runs_started_together_get_two_directories(tmp_path: Path, cache_dir: Path) -> None:
    args = [*quiet(tmp_path, cache_dir, "logger=none", "trainer.fast_dev_run=true"), "n_samples=0"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "muselab.train", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2
    # Each directory ends with its own process id, whatever second the two runs started in.
    assert sorted(int(r.name.rsplit("-", 1)[1]) for r in runs) == sorted(p.pid for p in procs)
    assert all((r / ".hydra" / "config.yaml").is_file() for r in runs)


def test_bad_numeric_run_settings_are_named(tmp_path: Path, cache_dir: Path) -> None:
    for override, message in (
        ("n_samples=-1", "n_samples=-1: must be a count >= 0"),
        ("sample_length=0", "sample_length=0: must be null or > 0"),
        ("data.window=-5", "data.window=-5: must be a positive number of steps"),
    ):
        result = cli(
            *quiet(tmp_path, cache_dir, "logger=none"), override, f"hydra.run.dir={tmp_path / 'bad'}"
        )
        assert result.returncode == 2 and message in result.stderr, (override, result.stderr[-1500:])


# ------------------------------------------------------------------------------------ tracks kept apart
def write_band(root: Path, n_songs: int = 6, program: int = 0) -> Path:
    """Songs of three named tracks that share one program (like POP909's melody, bridge and piano)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for song in range(n_songs):
        music = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 120.0)])
        for name, low in (("MELODY", 67), ("BRIDGE", 55), ("PIANO", 43)):
            notes = [muspy.Note(4 * i, int(low + rng.integers(0, 12)), 4, 80) for i in range(32)]
            music.tracks.append(muspy.Track(program=program, name=name, notes=notes))
        muspy.write_midi(root / f"song{song}.mid", music)
    return root


def test_a_folder_whose_tracks_share_one_program_keeps_them_apart(
    tmp_path: Path, cache_dir: Path, caplog
) -> None:
    from datamodules.representations import PianoRollRepresentation
    from muselab.music.evaluation import MusicReference

    folder = write_band(tmp_path / "band")
    cfg = compose_train(
        [f"paths.cache_dir={cache_dir}", "data=folder", f"data.source.root={folder}"], tmp_path
    )
    from muselab.utils import instantiate_checked

    dm: MusicDataModule = instantiate_checked(cfg.data)
    assert isinstance(dm.source, FolderSource) and isinstance(dm.representation, PianoRollRepresentation)
    assert dm.representation.track_mode == "auto"
    dm.prepare_data()
    with caplog.at_level("INFO"):
        dm.setup()
    piece = dm.split_arrays["train"][0]
    assert [bool(piece[:, t].any()) for t in range(4)] == [True, True, True, False]
    summary = dm.data_summary()
    assert summary["data/routing_notes_track0"] == summary["data/routing_notes_track1"] == 6 * 32
    assert "MELODY (program 0) -> track0" in caplog.text and "PIANO (program 0) -> track2" in caplog.text
    real = MusicReference(dm.split_arrays["val"], None, dm.representation, bars=4).windows
    assert sum(1 for t in real[0].tracks if t.notes) == 3
    # Programs that do tell the tracks apart still route by program group.
    routed = dm.representation.route(
        [
            type("T", (), {"is_drum": False, "program": p, "notes": np.ones((1, 4)), "name": ""})()
            for p in (40, 0)
        ]
    )
    assert routed == [2, 0]


def test_routing_warns_when_every_note_lands_in_one_track(tmp_path: Path, caplog) -> None:
    from datamodules.representations import PianoRollRepresentation

    folder = write_band(tmp_path / "band", n_songs=3)
    rep = PianoRollRepresentation(
        n_tracks=3, track_mode="program", program_groups=[[0, 7], [8, 15], [16, 127]]
    )
    dm = MusicDataModule(FolderSource(str(folder)), rep, cache_dir=str(tmp_path / "c"), window=16, n_jobs=1)
    dm.prepare_data()
    with caplog.at_level("INFO"):
        dm.setup()
    manifest = json.loads(next((tmp_path / "c").glob("*/manifest.json")).read_text())
    assert manifest["routing"]["notes_per_track"] == {"track0": 3 * 3 * 32}
    assert "every note went to track0 of the 3 tracks" in caplog.text
