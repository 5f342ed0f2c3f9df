"""Resumable training states: one folder per saved step, trusted only if its manifest checks.

Layout of ``<run>/state/``::

    step-00000012/   engine files (weights, optimiser shards), client.json, manifest.json
    step-00000016/

A state is written under ``.step-N.tmp`` and renamed into place after every rank has
finished writing and ``manifest.json`` (the SHA-256 of every other file) is in it, so a
crash mid-save leaves no ``step-*`` folder. A state whose files are missing, truncated or
changed fails its manifest and is skipped, with a message, in favour of the one before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metarec.errors import MetarecError
from metarec.hashing import sha256_of

MANIFEST = "manifest.json"
CLIENT = "client.json"


def step_folder(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def staging_folder(root: Path, step: int) -> Path:
    return root / f".step-{step:08d}.tmp"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def commit(staging: Path, final: Path, client: dict[str, Any]) -> None:
    """Write ``client.json`` and the manifest into ``staging``, then rename it to ``final``."""
    (staging / CLIENT).write_text(json.dumps(client))
    manifest = {str(p.relative_to(staging)): sha256_of(p) for p in _files(staging)}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def check(folder: Path) -> str | None:
    """Why ``folder`` is not a whole state, or None when every file matches its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"no readable {MANIFEST} ({err})"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_of(path) != expected:
            return f"{name} does not match its SHA-256 in {MANIFEST} (truncated or changed)"
    unlisted = [str(p.relative_to(folder)) for p in _files(folder)]
    extra = sorted(set(unlisted) - set(manifest))
    if extra:
        return f"{extra[0]} is not in {MANIFEST}"
    return None


def latest_state(root: Path, report: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest state under ``root`` that checks, and its client data.

    ``report(message)`` hears about every newer state that was refused, and why.
    """
    folders = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    for folder in folders:
        problem = check(folder)
        if problem is None:
            return folder, json.loads((folder / CLIENT).read_text())
        report(f"{folder}: refused, {problem}; trying the state before it")
    if folders:
        raise MetarecError(f"{root}: no state passes its manifest check; cannot resume")
    return None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` states (and any stale staging folder)."""
    for folder in sorted(root.glob("step-*"), reverse=True)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    for staging in root.glob(".step-*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)
