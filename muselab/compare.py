"""``make compare [OUT=dir]``: one static HTML page that compares the local runs, with no W&B account.

Every run directory under the roots (``outputs/`` by default: a directory holding
``.hydra/config.yaml``) is read from what it left on disk:

- its names and settings from ``.hydra/config.yaml`` (`muselab.runs.load_run_config`);
- its figures from ``summary.json`` (written at the end of a run: `muselab.utils.run_summary`), or,
  for a run that did not finish, from its logs;
- its curves from the first log it has: the offline W&B run (`muselab.wandb_offline`, every part of
  a resumed run), the CSV logger's ``metrics.csv`` or the TensorBoard event files;
- its latest samples (``samples/epoch_NNN/sample_*.{png,wav}``) and the real-data reference.

The page (``OUT/index.html``, default ``outputs/compare``) has a table of the runs, sortable by any
column (click a header; ``#sort=<column>`` or ``#sort=-<column>`` in the address sorts on load), the
loss curves of every run overlaid, and each run's latest piano-rolls with audio players. Media are
copied next to the page, so the folder can be moved or shared as it is.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muselab.errors import UserError, report_user_errors

log = logging.getLogger("muselab.compare")

STEP_KEYS = ("trainer/global_step", "step", "_step")
# Curves drawn, each from the first of its names a run logged.
CURVES = {
    "train/loss": ("train/loss_step", "train/loss", "train/loss_epoch"),
    "val/loss": ("val/loss",),
}
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)


@dataclass
class RunRecord:
    """What `make compare` knows about one run directory."""

    run_dir: Path
    name: str
    model: str = "?"
    data: str = "?"
    representation: str = "?"
    trainer: str = "?"
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    sweep: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    logs: str = "-"
    images: list[tuple[str, Path]] = field(default_factory=list)
    audio: list[tuple[str, Path]] = field(default_factory=list)
    epoch_dir: str = ""


def find_runs(roots: list[Path], exclude: list[Path] = ()) -> list[Path]:
    """Run directories under ``roots`` (each holds ``.hydra/config.yaml``), oldest first."""
    excluded = [p.resolve() for p in exclude]
    found: set[Path] = set()
    for root in roots:
        if (root / ".hydra" / "config.yaml").is_file():
            found.add(root.resolve())
            continue
        for config in root.rglob(".hydra/config.yaml"):
            run_dir = config.parent.parent.resolve()
            if not any(run_dir == e or e in run_dir.parents for e in excluded):
                found.add(run_dir)
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


# ------------------------------------------------------------------------------------------ logs
def _wandb_curves(run_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]] | None:
    """Curves and summary of the offline W&B run(s) in ``run_dir`` (a resumed run has several parts)."""
    from muselab.wandb_offline import read_run

    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    if not parts:
        return None
    curves: dict[str, list[tuple[float, float]]] = {}
    summary: dict[str, Any] = {}
    for part in parts:
        try:
            run = read_run(part)
        except (FileNotFoundError, ValueError) as err:
            log.warning("%s: %s", part, err)
            continue
        for row in run.history:
            step = next((row[k] for k in STEP_KEYS if isinstance(row.get(k), int | float)), None)
            if step is None:
                continue
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and "/" in key:
                    curves.setdefault(key, []).append((float(step), float(value)))
        summary.update({k: v for k, v in run.summary.items() if isinstance(v, int | float | str)})
    return (curves, summary) if curves else None


def _csv_curves(run_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]] | None:
    files = sorted(run_dir.glob("csv/**/metrics.csv"))
    if not files:
        return None
    curves: dict[str, list[tuple[float, float]]] = {}
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                if not step:
                    continue
                for key, value in row.items():
                    if key in ("step", "epoch") or not value:
                        continue
                    try:
                        curves.setdefault(key, []).append((float(step), float(value)))
                    except ValueError:
                        continue
    return curves, {k: v[-1][1] for k, v in curves.items() if v}


def _tensorboard_curves(run_dir: Path) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]] | None:
    files = sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*"))
    if not files:
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[float, float]]] = {}
    for folder in sorted({f.parent for f in files}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 1, "audio": 1})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            curves.setdefault(tag, []).extend((float(e.step), float(e.value)) for e in events.Scalars(tag))
    return curves, {k: v[-1][1] for k, v in curves.items() if v}


def read_logs(run_dir: Path) -> tuple[str, dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """``(which log, curves, last values)`` from the first log the run has: W&B, CSV, TensorBoard."""
    for name, reader in (
        ("wandb", _wandb_curves),
        ("csv", _csv_curves),
        ("tensorboard", _tensorboard_curves),
    ):
        found = reader(run_dir)
        if found:
            curves, summary = found
            return name, {k: sorted(v) for k, v in curves.items()}, summary
    return "-", {}, {}


def _latest_media(run_dir: Path) -> tuple[str, list[tuple[str, Path]], list[tuple[str, Path]]]:
    epochs = sorted((run_dir / "samples").glob("epoch_*"))
    folder = epochs[-1] if epochs else None
    images, audio = [], []
    if folder is not None:
        images += [(p.stem, p) for p in sorted(folder.glob("sample_*.png"))]
        audio += [(p.stem, p) for p in sorted(folder.glob("sample_*.wav"))]
    data = run_dir / "samples" / "data"
    images += [(f"data {p.stem}", p) for p in sorted(data.glob("real_*.png"))[:1]]
    audio += [(f"data {p.stem}", p) for p in sorted(data.glob("real_*.wav"))[:1]]
    return (folder.name if folder else ""), images, audio


def read_run_dir(run_dir: Path) -> RunRecord:
    """Everything `make compare` shows about one run directory."""
    from muselab.runs import load_run_config

    record = RunRecord(run_dir=run_dir, name=f"{run_dir.parent.name}/{run_dir.name}")
    try:
        cfg = load_run_config(run_dir)
        record.model = str(cfg.get("model_name") or "?")
        record.data = str(cfg.get("data_name") or "?")
        record.representation = str(cfg.get("representation_name") or _choice(run_dir, "representation"))
        record.trainer = str(cfg.get("trainer_name") or _choice(run_dir, "trainer"))
        model = cfg.get("model") or {}
        record.monitor = str(model.get("monitor", "val/loss"))
        record.monitor_mode = str(model.get("monitor_mode", "min"))
    except Exception as err:  # a broken config must not hide the other runs
        log.warning("%s: cannot read its config (%s)", run_dir, err)
    record.logs, record.curves, last = read_logs(run_dir)
    summary_file = run_dir / "summary.json"
    record.summary = dict(last)
    if summary_file.is_file():
        record.summary.update(json.loads(summary_file.read_text()))
    best_key = f"best/{record.monitor}"
    if best_key not in record.summary and record.curves.get(record.monitor):
        values = [v for _, v in record.curves[record.monitor] if math.isfinite(v)]
        if values:
            record.summary[best_key] = min(values) if record.monitor_mode == "min" else max(values)
    trial = run_dir / "sweep_trial.json"
    if trial.is_file():
        info = json.loads(trial.read_text())
        record.sweep = f"{info.get('sweep', '?')} #{info.get('trial', '?')}"
    record.epoch_dir, record.images, record.audio = _latest_media(run_dir)
    return record


def _choice(run_dir: Path, group: str) -> str:
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return "?"
    match = re.search(rf"^\s+{group}: (\S+)$", hydra_file.read_text(), re.MULTILINE)
    return match.group(1) if match else "?"


# ------------------------------------------------------------------------------------------ page
def _plot(records: list[RunRecord], curve: str, path: Path) -> bool:
    """Overlay one curve of every run into an SVG file; False when no run logged it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = CURVES.get(curve, (curve,))
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    drawn = 0
    for i, record in enumerate(records):
        points = next((record.curves[n] for n in names if record.curves.get(n)), None)
        if not points:
            continue
        steps, values = zip(*points)
        marker = "o" if len(points) < 30 else None
        ax.plot(steps, values, color=PALETTE[i % len(PALETTE)], label=f"{i + 1}", lw=1.4, marker=marker, ms=3)
        drawn += 1
    if drawn:
        ax.set_title(curve)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(title="run", fontsize=8, ncol=max(1, drawn // 8 + 1))
        fig.tight_layout()
        fig.savefig(path, format="svg")
    plt.close(fig)
    return bool(drawn)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m {seconds % 60:02d}s"
    )


def _copy_media(record: RunRecord, index: int, media_dir: Path, out: Path) -> tuple[list, list]:
    folder = media_dir / f"run{index + 1:03d}"
    folder.mkdir(parents=True, exist_ok=True)

    def copy(items: list[tuple[str, Path]]) -> list[tuple[str, str]]:
        copied = []
        for label, source in items:
            target = folder / f"{label.replace(' ', '_')}{source.suffix}"
            shutil.copy2(source, target)
            copied.append((label, target.relative_to(out).as_posix()))
        return copied

    return copy(record.images), copy(record.audio)


# A file that does not load says so in the browser's console (which the page test reads).
LOAD_ERROR = "console.error('cannot load ' + this.getAttribute('src'))"

SCRIPT = """
(function () {
  const table = document.getElementById("runs");
  const heads = Array.from(table.tHead.rows[0].cells);
  function cellValue(row, col) {
    const cell = row.cells[col];
    const raw = cell.dataset.value;
    if (raw !== undefined && raw !== "" && !isNaN(Number(raw))) return Number(raw);
    return cell.textContent.trim().toLowerCase();
  }
  function sortBy(col, descending) {
    const rows = Array.from(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      const x = cellValue(a, col), y = cellValue(b, col);
      const xEmpty = x === "", yEmpty = y === "";
      if (xEmpty || yEmpty) return xEmpty - yEmpty;  // empty cells last either way
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    heads[col].setAttribute("aria-sort", descending ? "descending" : "ascending");
    table.dataset.sortedBy = (descending ? "-" : "") + heads[col].dataset.key;
  }
  heads.forEach(function (head, col) {
    head.addEventListener("click", function () {
      sortBy(col, head.getAttribute("aria-sort") === "ascending");
    });
  });
  const wanted = decodeURIComponent((location.hash.match(/sort=([^&]+)/) || [])[1] || "");
  if (wanted) {
    const key = wanted.replace(/^-/, "");
    const col = heads.findIndex(function (h) { return h.dataset.key === key; });
    if (col >= 0) sortBy(col, wanted.startsWith("-"));
  }
  document.body.dataset.ready = "true";
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #666; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; margin-right: .4em; vertical-align: -1px; }
.plots img { max-width: 48%; min-width: 420px; margin-right: 1%; }
.run { border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; margin: .8em 0; }
.run h3 { margin: 0 0 .4em; font-size: 1em; }
.media { display: flex; flex-wrap: wrap; gap: .6em; align-items: flex-start; }
figure { margin: 0; } figure img { height: 150px; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
audio { height: 32px; width: 260px; }
"""


def write_page(records: list[RunRecord], out: Path, roots: list[Path]) -> Path:
    """Write ``out/index.html`` (with its plots and media beside it) for ``records``."""
    out.mkdir(parents=True, exist_ok=True)
    media_dir = out / "media"
    if media_dir.exists():
        shutil.rmtree(media_dir)
    # Columns: fixed ones, then every final sample/ and overfit/ figure any run has.
    monitors = sorted({f"best/{r.monitor}" for r in records})
    figures = sorted({k for r in records for k in r.summary if k.startswith(("sample/", "overfit/"))})
    figures = [k for k in figures if k != "sample/callback_seconds"]
    columns: list[tuple[str, str, bool]] = [  # (key, header, text)
        ("run", "run", True),
        ("model", "model", True),
        ("data", "data", True),
        ("representation", "representation", True),
        ("strategy", "strategy", True),
        ("sweep", "sweep", True),
        *[(m, m, False) for m in monitors],
        ("val/loss", "final val/loss", False),
        ("test/loss", "test/loss", False),
        ("model/params", "params", False),
        ("run/wall_seconds", "wall time", False),
        ("run/epochs", "epochs", False),
        *[(k, k, False) for k in figures],
        ("logs", "log read", True),
    ]
    rows = []
    for i, record in enumerate(records):
        color = PALETTE[i % len(PALETTE)]
        cells = []
        for key, _, text in columns:
            if key == "run":
                rel = _relative(record.run_dir, out)
                value, shown = (
                    i + 1,
                    (
                        f'<span class="swatch" style="background:{color}"></span>{i + 1}. '
                        f'<a href="{html.escape(rel)}">{html.escape(record.name)}</a>'
                    ),
                )
            elif key in ("model", "data", "representation", "sweep", "logs"):
                value = shown = html.escape(str(getattr(record, key)))
            elif key == "strategy":
                value = shown = html.escape(record.trainer)
            else:
                value = record.summary.get(key)
                shown = _duration(value) if key == "run/wall_seconds" else html.escape(_format(value))
            data_value = value if isinstance(value, int | float) and not isinstance(value, bool) else ""
            css = ' class="text"' if text else ""
            cells.append(f'<td{css} data-value="{data_value}">{shown}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(
        f'<th{" class=text" if text else ""} data-key="{html.escape(key)}" title="{html.escape(key)}">'
        f"{html.escape(label)}</th>"
        for key, label, text in columns
    )
    plots = []
    for curve in CURVES:
        name = f"curve_{curve.replace('/', '_')}.svg"
        if _plot(records, curve, out / name):
            plots.append(f'<img src="{name}" alt="{html.escape(curve)} of every run" onerror="{LOAD_ERROR}">')
        else:
            (out / name).unlink(missing_ok=True)
    cards = []
    for i, record in enumerate(records):
        images, audio = _copy_media(record, i, media_dir, out)
        figures_html = "".join(
            f'<figure><img src="{html.escape(src)}" alt="{html.escape(label)}" onerror="{LOAD_ERROR}">'
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
            for label, src in images
        )
        players = "".join(
            f'<figure><audio controls preload="metadata" src="{html.escape(src)}" onerror="{LOAD_ERROR}"></audio>'
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
            for label, src in audio
        )
        color = PALETTE[i % len(PALETTE)]
        where = f" ({html.escape(record.epoch_dir)})" if record.epoch_dir else " (no samples)"
        cards.append(
            f'<div class="run" id="run{i + 1}"><h3><span class="swatch" style="background:{color}"></span>'
            f"{i + 1}. {html.escape(record.name)}{where}</h3>"
            f'<div class="media">{figures_html}{players}</div></div>'
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MuseLab runs</title>
<link rel="icon" href="data:,"><style>{STYLE}</style></head>
<body>
<h1>MuseLab runs</h1>
<p class="meta">{len(records)} runs under {html.escape(", ".join(str(r) for r in roots))}, written
{time.strftime("%Y-%m-%d %H:%M")} by <code>make compare</code>. Click a column to sort.</p>
<div class="scroll"><table id="runs"><thead><tr>{header}</tr></thead><tbody>
{"".join(rows)}
</tbody></table></div>
<h2>Loss curves</h2>
<div class="plots">{"".join(plots) or "<p>No run logged a loss curve.</p>"}</div>
<h2>Latest samples</h2>
{"".join(cards)}
<script>{SCRIPT}</script>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    return index


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start.resolve())).as_posix()


def compare(roots: list[str | Path], out: str | Path) -> Path:
    """Read the runs under ``roots`` and write the page into ``out``; returns ``out/index.html``."""
    root_paths = [Path(r).expanduser() for r in roots]
    for root in root_paths:
        if not root.is_dir():
            raise UserError(f"{root}: no such folder of runs")
    out_path = Path(out).expanduser()
    runs = find_runs(root_paths, exclude=[out_path])
    if not runs:
        raise UserError(
            f"no run directories (with .hydra/config.yaml) under {', '.join(map(str, root_paths))}"
        )
    records = [read_run_dir(r) for r in runs]
    # A run that stopped before logging anything (a refused resume, a bad setting) has nothing to show.
    shown = [r for r in records if r.curves or r.summary or r.images]
    if len(shown) < len(records):
        log.info("Skipped %d run directories with no logs, summary or samples", len(records) - len(shown))
    records = shown
    if not records:
        raise UserError(f"no run under {', '.join(map(str, root_paths))} logged anything yet")
    return write_page(records, out_path, root_paths)


def main(argv: list[str] | None = None) -> None:
    """``python -m muselab.compare [--out DIR] [RUNS ...]`` (default: outputs/ into outputs/compare)."""
    parser = argparse.ArgumentParser(prog="muselab.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="*", default=["outputs"], help="folders of run directories (default: outputs)"
    )
    parser.add_argument(
        "--out", default="outputs/compare", help="where the page goes (default: outputs/compare)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    with report_user_errors("muselab.compare"):
        index = compare(args.runs, args.out)
        print(f"Wrote {index} ({index.resolve().as_uri()})")


if __name__ == "__main__":
    main()
