"""Distributed training on a CPU: DDP over two processes trains and validates as one process does, the
multi-node trainer config reads its launcher, and a SLURM job that is preempted resumes its own run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import CONF_DIR, compose_train, resolved, small_train_overrides

REPO = Path(CONF_DIR).parent
# Two processes of batch 4 and one of batch 8 see the same examples in every step (the sampler deals
# each rank every other index of one shuffled order) and average the same gradients, so they agree up
# to float summation order: on this machine val/loss came out identical and test/loss 1.4e-7 apart
# (relative); the bound leaves room for other BLAS builds.
DDP_RTOL = 1e-4


def _cli(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "muselab.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _epoch_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Every epoch's val/loss and the test/loss from the CSV logger."""
    out: dict[str, list[float]] = {"val/loss": [], "test/loss": []}
    with next(run_dir.glob("csv/**/metrics.csv")).open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key in out:
                if row.get(key):
                    out[key].append(float(row[key]))
    return out


@pytest.mark.slow
def test_ddp_cpu_gives_the_validation_metrics_of_one_process(tmp_path: Path, cache_dir: Path) -> None:
    common = [
        *small_train_overrides(
            tmp_path, cache_dir, "logger=csv", "n_samples=0", "callbacks.sample_music=null"
        ),
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=null",  # every validation window: the sampler must not repeat any
        "model.dropout=0.0",  # the same computation on every rank: no random masks to differ
        "model.input_dropout=0.0",
        "data.transpose=0",
    ]
    one = _cli(tmp_path / "one", *common, "data.batch_size=8")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(tmp_path / "ddp", *common, "trainer=ddp_cpu", "data.batch_size=4")
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = _epoch_metrics(tmp_path / "one"), _epoch_metrics(tmp_path / "ddp")
    assert len(single["val/loss"]) == len(ddp["val/loss"]) == 2 and len(ddp["test/loss"]) == 1
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=DDP_RTOL)
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=DDP_RTOL)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 8  # 4 steps per epoch on each rank, together
    # Rank 0 alone wrote the run's summary and samples.
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["best/val/loss"] == pytest.approx(min(single["val/loss"]), rel=DDP_RTOL)


def test_multinode_trainer_reads_slurm_and_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import muselab.train  # noqa: F401 - registers the launcher resolvers

    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    trainer = resolved(compose_train(["trainer=multinode"], output_dir=tmp_path))["trainer"]
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == ("auto", 1, "ddp")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x4)")
    monkeypatch.setenv("SLURM_NNODES", "4")
    trainer = resolved(compose_train(["trainer=multinode", "precision=16-mixed"], output_dir=tmp_path))[
        "trainer"
    ]
    assert (trainer["devices"], trainer["num_nodes"], trainer["precision"]) == (8, 4, "16-mixed")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.delenv("SLURM_NNODES")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    trainer = resolved(compose_train(["trainer=multinode"], output_dir=tmp_path))["trainer"]
    assert (trainer["devices"], trainer["num_nodes"]) == (4, 4)


def test_bf16_mixed_trains_on_the_cpu(tmp_path: Path, cache_dir: Path) -> None:
    from muselab.train import train

    overrides = small_train_overrides(
        tmp_path, cache_dir, "precision=bf16-mixed", "logger=none", "n_samples=0", "test=false"
    )
    cfg = compose_train(
        [*overrides, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.sample_music=null"],
        output_dir=tmp_path,
    )
    assert cfg.trainer.precision == "bf16-mixed"
    out = train(cfg)
    assert torch.isfinite(torch.tensor(out["metrics"]["val/loss"]))


def _slurm_env(tmp_path: Path, job_id: str) -> dict[str, str]:
    """What SLURM sets for one task of a one-node, one-task job (Lightning reads these), and a
    `scontrol` on PATH that records the requeue and then ends the job, as SLURM does, instead of
    talking to a cluster this machine lacks. The job must run in a process group of its own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        f"#!{sys.executable}\nimport os, signal, sys\n"
        f"with open({str(tmp_path / 'scontrol.log')!r}, 'a') as log:\n    print(*sys.argv[1:], file=log)\n"
        "os.killpg(os.getpgid(0), signal.SIGKILL)\n"
    )
    scontrol.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "muselab",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_SUBMIT_DIR": str(REPO),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29533",
        "PYTHON": sys.executable,
        "SRUN": "",  # one task: the template's command runs without srun
        "WANDB_MODE": "offline",
    }


@pytest.mark.slow
def test_a_preempted_slurm_job_is_requeued_and_resumes_its_run(tmp_path: Path, cache_dir: Path) -> None:
    """scripts/slurm/train.sbatch under SLURM's environment: at SIGUSR1 Lightning saves an hpc
    checkpoint and requeues the job; the requeued job (same id) resumes the same run directory and
    W&B run from it, and finishes."""
    run_dir = tmp_path / "run"
    env = {**_slurm_env(tmp_path, "4242"), "RUN_DIR": str(run_dir)}
    args = [
        *small_train_overrides(tmp_path, cache_dir, "logger=wandb", "n_samples=0", "test=false"),
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "callbacks.sample_music=null",
        "trainer.max_epochs=1000",
        "trainer.limit_train_batches=50",
    ]
    script = str(REPO / "scripts" / "slurm" / "train.sbatch")
    first = subprocess.Popen(
        ["bash", script, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a job of its own, so its W&B service process ends with it
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not last.is_file():
            time.sleep(0.5)
        assert last.is_file(), "no checkpoint before the preemption"
        first.send_signal(
            signal.SIGUSR1
        )  # what `sbatch --signal=SIGUSR1@120` sends; exec made python the pid
        # the fake scontrol ends the job (its W&B service included) right after the requeue, so no
        # later last.ckpt races the hpc checkpoint
        output = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            output = first.communicate()[0]
    [hpc] = run_dir.glob("hpc_ckpt_*.ckpt")
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], output[-3000:]
    preempted = torch.load(hpc, weights_only=False)
    wandb_before = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}

    resumed_args = [
        a if not a.startswith("trainer.max_epochs") else f"trainer.max_epochs={preempted['epoch'] + 2}"
        for a in args
    ]
    second = subprocess.run(
        ["bash", script, *resumed_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {run_dir} from {hpc}" in second.stdout
    final = torch.load(last, weights_only=False)
    assert final["global_step"] > preempted["global_step"] and final["epoch"] == preempted["epoch"] + 1
    wandb_after = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert wandb_after == wandb_before and len(wandb_after) == 1  # the same W&B run, continued
    assert len(list((run_dir / ".hydra").glob("resumed-*"))) == 1 and json.loads(
        (run_dir / "summary.json").read_text()
    )
