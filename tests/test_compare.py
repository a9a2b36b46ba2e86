"""`make compare` on two short real runs (one logging to offline W&B, one to CSV): the run summary
each leaves, the page with both, and the page in a real headless browser (Chromium, where installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muselab.compare import compare, read_run_dir
from muselab.wandb_offline import read_run
from tests.helpers import CONF_DIR, small_train_overrides

pytestmark = pytest.mark.slow  # two real training runs (about a minute on 2 busy cores)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real training runs through the CLI, side by side: W&B (offline) and CSV logs."""
    root = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.mktemp("cache")
    common = [
        *small_train_overrides(root, cache, "n_samples=0", "test=true"),
        "model.head=bernoulli",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "callbacks.sample_music.n_samples=2",
        "callbacks.sample_music.length=16",
        "+callbacks.sample_music.n_real=4",
        "callbacks.sample_music.audio_backend=numpy",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root)}
    # The cache is built once, by the first run, before the second starts.
    jobs = [("a-wandb", ["logger=wandb"]), ("b-csv", ["logger=csv", "model.hidden_size=16"])]
    for name, extra in jobs:
        result = subprocess.run(
            [sys.executable, "-m", "muselab.train", *common, *extra, f"hydra.run.dir={root / name}"],
            cwd=Path(CONF_DIR).parent,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_run_summary_holds_best_metric_final_figures_params_and_wall_time(two_runs: Path) -> None:
    summary = json.loads((two_runs / "a-wandb" / "summary.json").read_text())
    assert summary["best/val/loss"] <= summary["val/loss"] + 1e-6
    assert summary["model/params"] > 1000 and isinstance(summary["model/params"], int)
    assert summary["run/wall_seconds"] > 0 and summary["run/epochs"] == 2
    assert any(k.startswith("sample/") for k in summary) and "overfit/loss_gap" in summary
    assert "test/loss" in summary and (two_runs / "a-wandb" / summary["best/checkpoint"]).is_file()
    small = json.loads((two_runs / "b-csv" / "summary.json").read_text())
    assert small["model/params"] < summary["model/params"]  # hidden_size 16 against 32
    # The same figures reach the W&B run's summary, with its name, group and tags for dashboards.
    [wandb_dir] = (two_runs / "a-wandb" / "wandb").glob("offline-run-*")
    run = read_run(wandb_dir)
    for key in ("best/val/loss", "model/params", "run/wall_seconds", "overfit/loss_gap"):
        assert run.summary[key] == pytest.approx(summary[key]), key
    assert run.group == "pianoroll_rnn" and run.name.startswith("pianoroll_rnn-bach-")
    assert set(run.tags) == {"data:bach", "representation:pianoroll", "strategy:cpu"}
    assert run.config["model"]["hidden_size"] == 32 and run.config["data_name"] == "bach"


def test_compare_reads_both_runs_from_their_logs(two_runs: Path) -> None:
    wandb_run, csv_run = read_run_dir(two_runs / "a-wandb"), read_run_dir(two_runs / "b-csv")
    assert (wandb_run.logs, csv_run.logs) == ("wandb", "csv")
    for record in (wandb_run, csv_run):
        assert (record.model, record.data, record.representation, record.trainer) == (
            "pianoroll_rnn",
            "bach",
            "pianoroll",
            "cpu",
        )
        assert len(record.curves["val/loss"]) == 2  # one point per epoch
        assert [label for label, _ in record.images] == ["sample_00", "sample_01", "data real_00"]
        assert record.epoch_dir == "epoch_001" and record.audio and record.audio[0][1].suffix == ".wav"
    # A run without summary.json (killed) still gets its best val/loss from its curve.
    (two_runs / "b-csv" / "summary.json").rename(two_runs / "b-csv" / "summary.json.bak")
    try:
        partial = read_run_dir(two_runs / "b-csv")
        assert partial.summary["best/val/loss"] == min(v for _, v in csv_run.curves["val/loss"])
    finally:
        (two_runs / "b-csv" / "summary.json.bak").rename(two_runs / "b-csv" / "summary.json")


def test_compare_page_has_both_runs_curves_images_and_players(two_runs: Path, tmp_path: Path) -> None:
    index = compare([two_runs], tmp_path / "page")
    page = index.read_text()
    assert page.count("<tr>") == 3 and "a-wandb" in page and "b-csv" in page
    for header in ("best/val/loss", "test/loss", "params", "wall time", "overfit/loss_gap"):
        assert f">{header}</th>" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert sum(s.endswith(".svg") for s in sources) == 2  # train and val loss, both runs overlaid
    assert sum(s.endswith(".png") for s in sources) == 6 and sum(s.endswith(".wav") for s in sources) >= 2
    assert all((index.parent / s).is_file() for s in sources)


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compare_page_in_a_headless_browser(two_runs: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make install-browser): the page is not checked in a browser")
    index = compare([two_runs], tmp_path / "page")
    url = index.resolve().as_uri() + "#sort=-best/val/loss"
    dom = _chromium("--dump-dom", url, cwd=tmp_path)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert dom.returncode == 0 and not console, console
    assert 'data-ready="true"' in dom.stdout  # the script ran
    assert 'data-sorted-by="-best/val/loss"' in dom.stdout
    # Sorted descending by best val/loss: the smaller (worse) model first.
    rows = re.findall(r"<tr>.*?</tr>", dom.stdout.split("<tbody>")[1], flags=re.S)
    assert "b-csv" in rows[0] and "a-wandb" in rows[1]
    shot = tmp_path / "page.png"
    result = _chromium("--window-size=1400,1600", f"--screenshot={shot}", url, cwd=tmp_path)
    assert result.returncode == 0 and shot.stat().st_size > 50_000


def test_a_run_that_logged_to_tensorboard_is_read_from_its_event_files(tmp_path: Path) -> None:
    """`logger=tensorboard` (conf/logger/tensorboard.yaml) writes event files under the run's
    ``tensorboard/``; `make compare` reads its curves and last values from them."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from muselab.compare import read_logs

    run_dir = tmp_path / "run"
    logger = TensorBoardLogger(save_dir=str(run_dir / "tensorboard"), name=None, default_hp_metric=False)
    for step, (train, val) in enumerate([(3.0, 3.5), (2.0, 2.75), (1.5, 2.5)]):
        logger.log_metrics({"train/loss": train, "val/loss": val}, step=step)
    logger.finalize("success")
    assert read_logs(tmp_path / "empty") == ("-", {}, {})
    source, curves, last = read_logs(run_dir)
    assert source == "tensorboard"
    assert curves["val/loss"] == [(0.0, 3.5), (1.0, 2.75), (2.0, 2.5)]
    assert last == {"train/loss": 1.5, "val/loss": 2.5}
