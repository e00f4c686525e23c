"""The result cache around the unit of work (one log -> its runs' reports and alignment data),
so that re-analysing a growing sweep reads only what is new or changed. An entry's key is a
SHA-256 of everything the result depends on: the log's identity (path, size, modification time
and inode of a local file; ETag, else size and modification time, of a remote object; every
event file of a TensorBoard folder), the spikelens version together with a fingerprint of its
installed code (so an upgrade or a local edit never serves old results), the configuration,
the forced format and metric overrides, and for the cross-run passes the other runs' facts the
result used. A changed log or config is a different key, so an entry is never stale; standard
input and pipes have no identity and are never cached. Entries are pickles written atomically
(temporary name, then rename), so concurrent analyses of one sweep may share a cache; a damaged
or unreadable entry is a miss. The cache lives in the user cache directory
(`$XDG_CACHE_HOME/spikelens`, `~/Library/Caches/spikelens`, `%LOCALAPPDATA%\\spikelens\\Cache`)
or where `SPIKELENS_CACHE_DIR` or `--cache-dir` points. Only the user should be able to write
there: an entry is trusted as spikelens's own output."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Bump when the layout of cached results changes.
CACHE_FORMAT = 1

ENV_DIR = "SPIKELENS_CACHE_DIR"


def default_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "spikelens"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "spikelens" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spikelens"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The spikelens version plus the size and mtime of every module of the package: a
    development checkout changes results without changing the version."""
    import spikelens

    root = Path(spikelens.__file__).parent
    h = hashlib.sha256(spikelens.__version__.encode())
    for p in sorted(root.rglob("*.py")):
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class ResultCache:
    """A directory of pickled results keyed by `key(...)`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = (directory or default_dir()) / f"v{CACHE_FORMAT}"
        self.hits = 0
        self.misses = 0
        self.write_error: str | None = None

    def key(self, *parts: Any) -> str:
        h = hashlib.sha256(code_fingerprint().encode())
        for part in parts:
            h.update(b"\x00")
            h.update(repr(part).encode())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pkl"

    def get(self, key: str) -> Any | None:
        try:
            with open(self._path(key), "rb") as fh:
                value = pickle.load(fh)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, recomputed and replaced
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Store `value`; a cache that cannot be written is noted once in `write_error` and
        the analysis goes on without it."""
        if self.write_error is not None:
            return
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, target)
        except OSError as exc:
            self.write_error = f"{self.dir}: cannot write the result cache " \
                f"({exc.strerror or exc}); results were not cached"
