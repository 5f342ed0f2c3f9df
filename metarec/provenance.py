"""What produced a run: git commit, package versions, Python and machine, for ``run.json``."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("metarec", "torch", "transformers", "peft", "deepspeed", "accelerate", "faiss-cpu",
            "faiss-gpu-cu12", "numpy", "pandas", "safetensors", "gguf")  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def provenance() -> dict:
    """Git commit (and whether the tree had changes), package versions, Python, platform."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
    }
