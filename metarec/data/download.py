"""Download a file once, check its SHA-256, and only then give it its final name.

A download that fails or does not match its checksum never leaves a file under the
final name, so a later run cannot mistake half a zip for the dataset.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from metarec.errors import DataError, MetarecError
from metarec.hashing import sha256_of


def download_verified(url: str, sha256: str, destination: Path, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` unless a file with the right checksum is there."""
    if destination.exists() and sha256_of(destination) == sha256:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(
        prefix=destination.name, suffix=".part", dir=destination.parent
    )
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout_s) as response,
        ):
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {destination.name}"
            ) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        actual = sha256_of(Path(partial))
        if actual != sha256:
            raise DataError(
                url, f"downloaded file has SHA-256 {actual}, expected {sha256} (corrupt or changed)"
            )
        os.replace(partial, destination)
    except (OSError, http.client.HTTPException) as err:
        raise MetarecError(
            f"could not download {url} ({err}); without internet, pass --data-dir with a local "
            "copy or set METAREC_DATA_DIR"
        ) from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination
