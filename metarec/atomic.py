"""Write files and folders so that readers see the old version or the new one, never half.

Everything is written under a temporary name in the destination's folder (same file
system, so the final rename is atomic) and renamed into place only once complete. A
folder being replaced is first moved aside to ``.<name>.old`` and deleted after the new
one is in place; `recover` puts it back if a crash fell between the two renames.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metarec.errors import MetarecError


def _retired(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: Path) -> None:
    """Restore a folder left moved aside by a crash in the middle of `atomic_dir`."""
    if not path.exists() and _retired(path).exists():
        os.replace(_retired(path), path)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(handle)
    except OSError as err:
        raise MetarecError(f"{path}: cannot write ({err.strerror})") from None
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as err:
        raise MetarecError(f"{path}: cannot write ({err.strerror})") from None
    try:
        yield staging
        recover(path)
        if path.exists():
            shutil.rmtree(_retired(path), ignore_errors=True)
            os.replace(path, _retired(path))
        os.replace(staging, path)
        shutil.rmtree(_retired(path), ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
