"""What every benchmark report needs: the CPU it ran on, and its own ``## `` section of
``docs/benchmarks.md``, rewritten without touching the others."""

from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo (``default`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def split_section(text: str, heading: str) -> tuple[str, str | None, str]:
    """``(before, section, after)`` of ``text`` around the section whose heading line is ``heading``."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return text, None, ""
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^## ", lines[i])), len(lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def read_section(path: Path, heading: str) -> str | None:
    """The section's current text in ``path`` (None if the file or the section is missing)."""
    return split_section(path.read_text(), heading)[1] if path.exists() else None


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the section in ``path`` with ``body``, atomically, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    before, _, after = split_section(text, heading)
    if before and not before.endswith("\n\n"):
        before = before.rstrip("\n") + "\n\n"
    body = body.rstrip("\n") + "\n" + ("\n" if after else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(before + body + after)
    os.replace(tmp, path)


def git_commit(root: Path) -> str:
    """The checked-out commit (short hash), with ``+dirty`` when tracked code differs from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout

    commit = git("rev-parse", "--short=10", "HEAD").strip() or "unknown"
    # Only code and configs count: the docs are what a benchmark writes.
    changed = [
        line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line[3:]
    ]
    return commit + ("+dirty" if any(not path.startswith("docs/") for path in changed) else "")


def require_committed(root: Path, allow_dirty: bool = False) -> str:
    """The commit a benchmark's figures come from; refuses uncommitted code unless ``allow_dirty``.

    Every figure in docs/benchmarks.md must come from committed code, with the commit beside it.
    """
    commit = git_commit(root)
    if commit.endswith("+dirty") and not allow_dirty:
        raise SystemExit(
            "uncommitted changes to tracked code: commit first, so the figures name the code that made "
            "them (allow_dirty=true runs anyway, and the rows say +dirty)"
        )
    return commit
