"""End-to-end training through `muselab.train`: checkpoints, resume, samples, loggers, DDP."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import muspy
import pytest
import torch

from lightning_modules.base import load_model
from muselab.sample import sample
from muselab.train import train
from tests.helpers import CONF_DIR, compose_train, small_train_overrides


def run(tmp_path: Path, cache_dir: Path, *extra: str) -> dict:
    cfg = compose_train(small_train_overrides(tmp_path, cache_dir, *extra), output_dir=tmp_path)
    return train(cfg)


def test_fast_dev_run(tmp_path: Path, cache_dir: Path) -> None:
    out = run(tmp_path, cache_dir, "trainer.fast_dev_run=true", "logger=none")
    assert "train/loss" in out["metrics"] and torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))


def test_train_writes_checkpoints_wandb_run_and_playable_sample(tmp_path: Path, cache_dir: Path) -> None:
    out = run(tmp_path, cache_dir, "logger=wandb")
    assert Path(out["last_ckpt"]).is_file() and Path(out["best_ckpt"]).is_file()
    assert "val/loss" in out["metrics"] and "test/loss" in out["metrics"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    [midi] = out["samples"]
    music = muspy.read_midi(midi)
    assert len(music.tracks) >= 1 and sum(len(t.notes) for t in music.tracks) > 0
    # summary.json holds what the data was (pieces per split, routing) beside the run's figures
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data/pieces_train"] > 0 and "best/val/loss" in summary
    assert any(k.startswith("data/routing") for k in summary)


def test_csv_and_tensorboard_loggers(tmp_path: Path, cache_dir: Path) -> None:
    run(tmp_path, cache_dir, "logger=many", "n_samples=0")
    metrics = next((tmp_path / "csv").rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics.splitlines()[0] and "val/loss" in metrics.splitlines()[0]
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_resume_from_last_ckpt_continues_global_step(tmp_path: Path, cache_dir: Path) -> None:
    first = run(tmp_path / "a", cache_dir, "logger=none", "n_samples=0", "test=false")
    step_a = torch.load(first["last_ckpt"], weights_only=False)["global_step"]
    assert step_a == 4
    second = run(
        tmp_path / "b",
        cache_dir,
        "logger=none",
        "n_samples=0",
        "test=false",
        "trainer.max_epochs=2",
        f"ckpt_path={first['last_ckpt']}",
    )
    ckpt_b = torch.load(second["last_ckpt"], weights_only=False)
    assert ckpt_b["global_step"] == 2 * step_a and ckpt_b["epoch"] == 1


def test_sample_cli_writes_midi_read_back_by_muspy(tmp_path: Path, cache_dir: Path) -> None:
    out = run(tmp_path, cache_dir, "logger=none", "n_samples=0", "test=false")
    model = load_model(out["last_ckpt"])
    assert model.representation.describe().n_tracks == 4
    paths = sample(out["last_ckpt"], n=2, out=str(tmp_path / "s"), length=48)
    assert [p.name for p in paths][:2] == ["sample_00.mid", "sample_01.mid"]
    for path in paths:
        music = muspy.read_midi(path)
        assert len(music.tracks) == 4
        assert max(n.time + n.duration for t in music.tracks for n in t.notes) <= 48 * music.resolution // 4


def _cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "muselab.train", *overrides]


def test_killed_run_resumes_from_last_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    overrides = [
        *small_train_overrides(tmp_path, cache_dir, "logger=none", "n_samples=0", "test=false"),
        "trainer.max_epochs=1000",
    ]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*overrides, f"hydra.run.dir={run_dir}"),
        cwd=Path(CONF_DIR).parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
            last.is_file() and torch.load(last, weights_only=False)["epoch"] >= 1
        ):
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = torch.load(last, weights_only=False)
    resumed_dir = tmp_path / "resumed"
    result = subprocess.run(
        _cli(
            *overrides[:-1],
            f"trainer.max_epochs={killed['epoch'] + 2}",
            f"ckpt_path={last}",
            f"hydra.run.dir={resumed_dir}",
        ),
        cwd=Path(CONF_DIR).parent,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] > killed["global_step"]
    assert resumed["epoch"] == killed["epoch"] + 1


@pytest.mark.slow
def test_ddp_cpu_two_processes(tmp_path: Path, cache_dir: Path) -> None:
    overrides = small_train_overrides(
        tmp_path, cache_dir, "trainer=ddp_cpu", "logger=csv", "trainer.max_epochs=2"
    )
    result = subprocess.run(
        _cli(*overrides, f"hydra.run.dir={tmp_path / 'ddp'}"),
        cwd=Path(CONF_DIR).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    # limit_train_batches counts per rank: 4 steps per epoch on each of the 2 ranks, 2 epochs.
    assert ckpt["global_step"] == 8
    assert list((tmp_path / "ddp" / "samples").glob("*.mid"))


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_auto_torch_threads_leaves_busy_cores_alone() -> None:
    from muselab.utils import auto_torch_threads, busy_cores

    assert 1 <= auto_torch_threads() <= torch.get_num_threads()
    assert auto_torch_threads(processes=10_000) == 1  # never 0 threads, however many processes
    cores = len(os.sched_getaffinity(0))
    spinner = mp.get_context("fork").Process(target=_spin, args=(3.0,))
    spinner.start()
    try:
        time.sleep(0.5)
        # A core kept busy now counts at once (the 1-minute load average would still read ~0).
        assert busy_cores() >= 0.5
        assert auto_torch_threads() <= max(1, cores - 1)
    finally:
        spinner.terminate()
        spinner.join()
