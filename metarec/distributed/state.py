"""Resumable training states: one folder per saved step, trusted only if its manifest checks.

Layout of ``<run>/state/``::

    step-00000012/   engine files (weights, optimiser shards), client.json, manifest.json
    step-00000016/

A state is written under ``.step-N.tmp`` and renamed into place after every rank has
finished writing and ``manifest.json`` (the SHA-256 of every other file) is in it, so a
crash mid-save leaves no ``step-*`` folder. A state whose files are missing, truncated or
changed fails its manifest and is skipped, with a message, in favour of the one before.

Several ranks share one state folder, so several machines need one output dir on a
filesystem they all see (NFS, Lustre, ...): `require_shared_output_dir` checks that at the
start of a run and refuses with one line otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from metarec.errors import ConfigError, MetarecError
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


def first_blind_rank(seen: Sequence[bool]) -> int | None:
    """The lowest rank whose entry in ``seen`` is false (it did not see rank 0's marker), or
    None when every rank saw it."""
    return next((rank for rank, saw in enumerate(seen) if not saw), None)


def _sees(marker: Path, token: str, wait_s: float) -> bool:
    """Whether ``marker`` holds ``token``, looking again for up to ``wait_s`` seconds (a
    network filesystem may show a new file a moment late)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if marker.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def require_shared_output_dir(output_dir: Path, wait_s: float = 2.0) -> None:
    """Refuse to go on unless every rank sees the files rank 0 writes under ``output_dir``.

    Resumable states need it: every rank writes into one staging folder, rank 0 alone
    hashes and renames it, and on resume every rank reads it back. Rank 0 writes a marker
    file holding a random token that it broadcasts over the process group; after a barrier
    every rank reads the marker and compares; the flags are gathered, so every rank raises
    the same one-line `ConfigError` naming the first rank that did not see it. Rank 0
    removes the marker afterwards. A no-op without a process group or with one rank.
    Collective: every rank must call it.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    rank = dist.get_rank()
    box = [secrets.token_hex(16) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    token = str(box[0])
    marker = output_dir / f".shared-check-{token}"
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    dist.barrier()
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, _sees(marker, token, wait_s))
    if rank == 0:
        marker.unlink(missing_ok=True)
    blind = first_blind_rank([bool(flag) for flag in seen])
    if blind is not None:
        raise ConfigError(
            f"{output_dir} is not on a filesystem shared by all ranks (rank {blind} does not "
            "see rank 0's files); resumable state (state_every, --resume) needs one output "
            "dir that every rank sees"
        )
