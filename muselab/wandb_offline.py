"""Read an offline W&B run without a W&B account: its history, summary, config and name.

An offline run keeps everything it logged in one binary ``run-<id>.wandb`` file until it is synced
(there is no ``wandb-summary.json`` to read). The file is a LevelDB-style log (wandb's
"datastore"): a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each
``crc32 (4) | length (2) | type (1) | data``, where type 1 is a whole record and 2/3/4 the first,
middle and last piece of one; each record is wandb's own protobuf ``Record``. wandb 0.31 ships no
Python reader for it (its Go core writes it), so the framing is read here and the records are
parsed with wandb's protobuf classes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def read_records(path: str | Path) -> Iterator[Any]:
    """Every protobuf ``Record`` of a ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items: Any) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        try:
            out[key] = json.loads(item.value_json)
        except json.JSONDecodeError:
            out[key] = item.value_json
    return out


@dataclass
class OfflineRun:
    """What an offline run logged: ``history`` rows, the final ``summary``, the ``config``, and the
    run's ``name``, ``group``, ``tags`` and ``id``."""

    path: Path
    id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str, step: str = "trainer/global_step") -> list[tuple[float, float]]:
        """``(step, value)`` of every history row that holds ``key`` (a number)."""
        return [
            (float(row.get(step, row.get("_step", i))), float(row[key]))
            for i, row in enumerate(self.history)
            if isinstance(row.get(key), int | float)
        ]


def read_run(run_dir: str | Path) -> OfflineRun:
    """Read the offline run in ``run_dir`` (an ``offline-run-*`` folder, or its ``run-*.wandb`` file)."""
    run_dir = Path(run_dir)
    files = [run_dir] if run_dir.is_file() else sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    run = OfflineRun(path=files[0])
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
            for item in record.summary.remove:
                run.summary.pop(item.key or "/".join(item.nested_key), None)
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "run":
            run.id, run.name, run.group = record.run.run_id, record.run.display_name, record.run.run_group
            run.tags = list(record.run.tags)
            run.config.update(_items(record.run.config.update))
    # A key the summary never wrote (an offline run's summary is written at its end): its last value.
    last: dict[str, Any] = {}
    for row in run.history:
        last.update(row)
    for key, value in last.items():
        run.summary.setdefault(key, value)
    return run
