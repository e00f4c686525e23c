"""What the user named -> the logs to read. Files are taken as given; `-` is standard input; a
glob is expanded (sorted); an fsspec URL (`s3://bucket/sweep/*/metrics.jsonl`) is expanded the
same way on its store. A directory is a fleet: it is searched recursively, in path order, and
each log found is one source: a TensorBoard run directory (event files in it, or in stream
subfolders such as `train/` and `eval/`) is one log, any other file is a log when some reader
claims its first bytes (after decompression, so `metrics.jsonl.gz` counts). Hidden files and
folders, and files that are never logs (README.md, scripts, configs, images, checkpoints),
are skipped. Kept out of the readers so that it stays cheap to import for the command
line."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spikelens.errors import ConfigError, LogFormatError, SpikelensError
from spikelens.opener import basename, filesystem, head_of, inner_name, is_url, local_path

#: A reader must be at least this sure of a file found in a directory to read it.
_DIR_SNIFF = 0.3

#: Files a directory walk never takes for logs, whatever their text looks like (a sweep's
#: README quoting log lines, the training script, its config).
_NOT_LOGS = (".md", ".rst", ".html", ".htm", ".py", ".sh", ".ipynb", ".yaml", ".yml", ".toml",
             ".png", ".jpg", ".jpeg", ".svg", ".pdf", ".pt", ".bin", ".safetensors", ".ckpt")

#: Subfolder names that are streams of one TensorBoard run, not runs of a sweep.
_STREAM_WORDS = {"train", "training", "eval", "evaluation", "val", "valid", "validation",
                 "test", "dev"}


def expand_sources(items: Iterable[str]) -> list[str]:
    """Files, globs, directories and URLs -> log sources, in the order given, each once (a
    log named twice would otherwise "recur" with itself across runs)."""
    seen: set[str] = set()
    out: list[str] = []
    for src in _expand(items):
        if src == "-" or is_url(src):
            key = src
        else:
            key = str(Path(src).resolve())
        if key not in seen:
            seen.add(key)
            out.append(src)
    return out


def expand_paths(items: Iterable[str]) -> list[Path]:
    """`expand_sources` for local logs, as paths (a URL has no local path)."""
    out: list[Path] = []
    for src in expand_sources(items):
        if is_url(src):
            raise ConfigError(f"{src}: a remote log has no local path")
        out.append(Path(src))
    return out


def _expand(items: Iterable[str]) -> list[str]:
    from spikelens.readers import format_names

    format_names()  # registers the readers
    out: list[str] = []
    for item in items:
        if item == "-":  # standard input
            out.append(item)
            continue
        if is_url(item):
            out.extend(_expand_remote(item))
            continue
        item = local_path(item)
        p = Path(item)
        if not p.exists() and any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ConfigError(f"{item}: no file matches this pattern")
            for m in matches:
                out.extend(_walk(Path(m)) if Path(m).is_dir() else [m])
            continue
        if not p.is_dir():
            out.append(item)
            continue
        found = _walk(p)
        if not found:
            raise ConfigError(f"{p}: directory with no logs in it")
        out.extend(found)
    return out


def _is_stream(name: str) -> bool:
    import re

    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return any(w in _STREAM_WORDS for w in words)


def _has_events(names: Iterable[str]) -> bool:
    return any("tfevents" in n for n in names)


def _walk(top: Path) -> list[str]:
    """Every log under `top`, depth first in name order."""
    out: list[str] = []
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return out
    files = [e for e in entries if not e.name.startswith(".") and _is_file(e)]
    dirs = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    if _has_events(e.name for e in files):
        return [str(top)]  # a TensorBoard run (its stream subfolders belong to it)
    streams = [d for d in dirs if _is_stream(d.name) and _dir_has_events(d.path)]
    if streams:
        return [str(top)]
    for e in files:
        if _claimed(Path(e.path)):
            out.append(e.path)
    for d in dirs:
        if not d.is_symlink():  # a link loop must not send the walk round forever
            out.extend(_walk(Path(d.path)))
    return out


def _dir_has_events(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any("tfevents" in e.name and _is_file(e) for e in it)
    except OSError:
        return False


def _is_file(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_file()
    except OSError:
        return False


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _claimed(path: Path) -> bool:
    """Whether some reader claims this file found in a directory (by its decompressed start
    and its name without the compression suffix)."""
    from spikelens.readers import HEAD_BYTES

    if inner_name(path.name).lower().endswith(_NOT_LOGS):
        return False
    try:
        with path.open("rb") as fh:
            raw = fh.read(HEAD_BYTES)
    except OSError:
        return False
    return _sniffed(path.parent / inner_name(path.name), head_of(raw), real=True)


def _sniffed(named: Path, head: bytes, real: bool) -> bool:
    from spikelens.readers import READERS

    if not head.strip():
        return False
    probe = named if real else Path("/nonexistent-remote-log") / named.name
    for _, reader in READERS.items():
        try:
            if reader.sniff(probe, head) > _DIR_SNIFF:
                return True
        except (OSError, SpikelensError):
            continue
    return False


# --- remote -----------------------------------------------------------------------------

def _expand_remote(url: str) -> list[str]:
    fs, path = filesystem(url)
    try:
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise ConfigError(f"{url}: no object matches this pattern")
            out: list[str] = []
            for m in matches:
                out.extend(_remote_dir(fs, m) if fs.isdir(m) else [fs.unstrip_protocol(m)])
            return out
        if fs.isdir(path):
            found = _remote_dir(fs, path)
            if not found:
                raise ConfigError(f"{url}: directory with no logs in it")
            return found
    except SpikelensError:
        raise
    except FileNotFoundError:
        raise LogFormatError(f"{url}: no such file or object") from None
    except Exception as exc:  # noqa: BLE001 - network and protocol errors of any library
        raise LogFormatError(f"{url}: cannot list ({type(exc).__name__}: {exc})") from None
    return [url]  # a single object: its existence is checked when it is read


def _remote_dir(fs: Any, path: str) -> list[str]:
    """The logs under a remote folder: TensorBoard run folders by their event files, other
    objects by their first bytes."""
    from spikelens.readers import HEAD_BYTES

    base = path.rstrip("/")
    files = sorted(str(f) for f in fs.find(base))
    runs: set[str] = set()
    for f in files:
        if "tfevents" in basename(f):
            parent = f.rsplit("/", 1)[0]
            if parent != base and _is_stream(basename(parent)):
                parent = parent.rsplit("/", 1)[0]
            runs.add(parent)
    out: list[tuple[str, str]] = [(r, fs.unstrip_protocol(r)) for r in runs]
    for f in files:
        name = basename(f)
        if name.startswith(".") or "tfevents" in name \
                or inner_name(name).lower().endswith(_NOT_LOGS):
            continue
        if any(f.startswith(r + "/") for r in runs):
            continue
        with fs.open(f, "rb") as fh:
            raw = fh.read(HEAD_BYTES)
        if _sniffed(Path(inner_name(name)), head_of(raw), real=False):
            out.append((f, fs.unstrip_protocol(f)))
    return [u for _, u in sorted(out)]
