"""What the user named -> the log files to read. Files are taken as given; a glob is expanded
(sorted); a directory is one log when a reader claims the directory itself (a TensorBoard
run), otherwise every file directly in it that some reader claims, in name order. Kept out of
the readers so that it stays cheap to import for the command line."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from spikelens.errors import ConfigError, LogFormatError, SpikelensError

#: A reader must be at least this sure of a file found in a directory to read it.
_DIR_SNIFF = 0.3


def expand_paths(items: Iterable[str]) -> list[Path]:
    """Files, globs and directories -> log paths, in the order given, each once (a log named
    twice would otherwise "recur" with itself across runs)."""
    paths = _expand(items)
    seen: set[Path] = set()
    out: list[Path] = []
    for p in paths:
        try:
            key = p if str(p) == "-" else p.resolve()
        except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
            raise LogFormatError(f"{p}: symbolic link loop (the link leads back to itself)") \
                from None
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _expand(items: Iterable[str]) -> list[Path]:
    from spikelens.readers import HEAD_BYTES, READERS, detect_format, format_names

    format_names()  # registers the readers
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if item == "-":  # standard input
            out.append(p)
            continue
        if not p.exists() and any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ConfigError(f"{item}: no file matches this pattern")
            out.extend(Path(m) for m in matches)
            continue
        if not p.is_dir():
            out.append(p)
            continue
        try:
            detect_format(p)  # a TensorBoard run directory is one log
            out.append(p)
            continue
        except SpikelensError:
            pass
        found = []
        for child in sorted(p.iterdir()):
            if child.name.startswith(".") or not child.is_file():
                continue
            try:
                with child.open("rb") as fh:
                    head = fh.read(HEAD_BYTES)
            except OSError:
                continue
            if any(r.sniff(child, head) > _DIR_SNIFF for _, r in READERS.items()):
                found.append(child)
        if not found:
            raise ConfigError(f"{p}: directory with no logs in it")
        out.extend(found)
    return out
