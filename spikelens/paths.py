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
from spikelens.opener import basename, filesystem, inner_name, is_url, local_path

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
    return [src for src, _ in expand_candidates(items, defer=False)]


def expand_candidates(items: Iterable[str], defer: bool = True) -> list[tuple[str, str | None]]:
    """Like `expand_sources`, but with `defer` the files found in a directory are not sniffed
    here: each comes with the directory item it was found in, and whoever reads it checks
    first that it is a log (`claimed`), so that a fleet's thousand files are sniffed in the
    workers, in parallel, once. Files named explicitly come with None."""
    seen: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for src, found_in in _expand(items, defer):
        if src == "-" or is_url(src):
            key = src
        else:
            try:
                key = str(Path(src).resolve())
            except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
                raise LogFormatError(f"{src}: symbolic link loop (the link leads back to "
                                     "itself)") from None
        if key not in seen:
            seen.add(key)
            out.append((src, found_in))
    return out


def expand_paths(items: Iterable[str]) -> list[Path]:
    """`expand_sources` for local logs, as paths (a URL has no local path)."""
    out: list[Path] = []
    for src in expand_sources(items):
        if is_url(src):
            raise ConfigError(f"{src}: a remote log has no local path")
        out.append(Path(src))
    return out


def _expand(items: Iterable[str], defer: bool) -> list[tuple[str, str | None]]:
    from spikelens.readers import format_names

    format_names()  # registers the readers
    out: list[tuple[str, str | None]] = []
    for item in items:
        if item == "-":  # standard input
            out.append((item, None))
            continue
        if is_url(item):
            out.extend(_expand_remote(item, defer))
            continue
        item = local_path(item)
        p = Path(item)
        if not p.exists() and any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ConfigError(f"{item}: no file matches this pattern")
            for m in matches:
                if Path(m).is_dir():
                    out.extend((f, m if deferred else None) for f, deferred in
                               _walk(Path(m), defer))
                else:
                    out.append((m, None))
            continue
        if not p.is_dir():
            out.append((item, None))
            continue
        found = _walk(p, defer)
        if not found:
            raise ConfigError(f"{p}: directory with no logs in it")
        out.extend((f, item if deferred else None) for f, deferred in found)
    return out


def _is_stream(name: str) -> bool:
    import re

    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return any(w in _STREAM_WORDS for w in words)


def _has_events(names: Iterable[str]) -> bool:
    return any("tfevents" in n for n in names)


def _walk(top: Path, defer: bool) -> list[tuple[str, bool]]:
    """Every log under `top`, depth first in name order, each with whether its sniffing was
    deferred (a candidate file rather than a claimed log)."""
    out: list[tuple[str, bool]] = []
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return out
    files = [e for e in entries if not e.name.startswith(".") and _is_file(e)]
    dirs = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    if _has_events(e.name for e in files):
        return [(str(top), False)]  # a TensorBoard run (its stream subfolders belong to it)
    if _store_claims(top):
        return [(str(top), False)]  # a tracker store or a per-rank layout: its reader expands it
    streams = [d for d in dirs if _is_stream(d.name) and _dir_has_events(d.path)]
    if streams:
        return [(str(top), False)]
    for e in files:
        if inner_name(e.name).lower().endswith(_NOT_LOGS):
            continue
        if defer:
            out.append((e.path, True))
        elif claimed(e.path):
            out.append((e.path, False))
    for d in dirs:
        if not d.is_symlink():  # a link loop must not send the walk round forever
            out.extend(_walk(Path(d.path), defer))
    return out


#: Readers that read a whole directory as one or more runs and must be offered a directory
#: before the walk goes into it (a `wandb/` folder, `mlruns/`, a torchrun `--log-dir`).
#: TensorBoard is not among them: a folder of TensorBoard runs is a fleet, found above.
_STORE_READERS = ("wandb_run", "mlflow", "ranks")


def _store_claims(top: Path) -> bool:
    from spikelens.readers import READERS, _register_builtin

    _register_builtin()
    for name in _STORE_READERS:
        if name in READERS.names() and READERS.get(name).sniff(top, b"") > _DIR_SNIFF:
            return True
    return False


def _dir_has_events(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any("tfevents" in e.name and _is_file(e) for e in it)
    except OSError:
        return False


def _is_file(e: os.DirEntry[str]) -> bool:
    # a dangling link or a link loop is not a log, and must not abort a directory listing
    try:
        return e.is_file()
    except OSError:
        return False


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def claimed(source: str) -> bool:
    """Whether some reader claims this file found in a directory, by its decompressed start
    and its name without the compression suffix (a local path or a URL)."""
    return claim(source)[0]


def claim(source: str, keep: bool = False) -> tuple[bool, str | None]:
    """(claimed, format): whether some reader is sure enough of this file found in a
    directory, and the format `detect_format` would pick from the very same bytes of the
    (decompressed) log, so the reader need not sniff it again; None when it must. With
    `keep`, the bytes fetched of a remote object to sniff it are kept for the read that
    follows (`opener.first_bytes`): one request per log."""
    from spikelens.opener import codec_of, decoded_head, first_bytes
    from spikelens.readers import HEAD_BYTES

    name = basename(source)
    if name.startswith(".") or inner_name(name).lower().endswith(_NOT_LOGS):
        return False, None
    if is_url(source):
        fs, path = filesystem(source)
        try:
            raw = first_bytes(source, fs, path, keep)[0][:HEAD_BYTES]
        except FileNotFoundError:
            return False, None
        head = decoded_head(raw, HEAD_BYTES)
        if head is None:
            return True, None  # damaged: the reader says so, naming it, not a silent skip
        best = _best(Path(inner_name(name)), head, real=False)
        if best is None or best[0] <= _DIR_SNIFF:
            return False, None
        plain = codec_of(raw) is None
        return True, best[1] if plain or len(head) >= HEAD_BYTES else None
    local = Path(source)
    try:
        with local.open("rb") as fh:
            raw = fh.read(HEAD_BYTES)
    except OSError:
        return False, None
    plain = codec_of(raw) is None
    head = decoded_head(raw, HEAD_BYTES)
    if head is None:
        return True, None  # damaged: the reader says so, naming it, not a silent skip
    best = _best(local if plain else local.parent / inner_name(local.name), head, real=True)
    if best is None or best[0] <= _DIR_SNIFF:
        return False, None
    # the reader of the decompressed copy (named without the suffix) would sniff the same
    # first HEAD_BYTES: give it the format, unless this start is shorter than what it reads
    # (a first stream of several that ends early)
    return True, best[1] if plain or len(head) >= HEAD_BYTES else None


def _best(named: Path, head: bytes, real: bool) -> tuple[float, str] | None:
    """The surest reader's score and name, ties to the first registered (as
    `detect_format`)."""
    from spikelens.readers import READERS, format_names

    format_names()  # registers the readers (a fresh worker process has not yet)
    if not head.strip():
        return None
    probe = named if real else Path("/nonexistent-remote-log") / named.name
    best: tuple[float, str] | None = None
    for fmt, reader in READERS.items():
        try:
            score = reader.sniff(probe, head)
        except (OSError, SpikelensError):
            continue
        if best is None or score > best[0]:
            best = (score, fmt)
    return best


# --- remote -----------------------------------------------------------------------------

def _expand_remote(url: str, defer: bool) -> list[tuple[str, str | None]]:
    fs, path = filesystem(url)
    try:
        if any(ch in path for ch in "*?["):
            from spikelens.opener import remember

            listing = fs.glob(path, detail=True)
            for m, info in listing.items():
                remember(fs, str(m), info)
            matches = sorted(str(m) for m in listing)
            if not matches:
                raise ConfigError(f"{url}: no object matches this pattern")
            out: list[tuple[str, str | None]] = []
            for m in matches:
                if fs.isdir(m):
                    out.extend(_remote_dir(fs, m, defer, fs.unstrip_protocol(m)))
                else:
                    out.append((fs.unstrip_protocol(m), None))
            return out
        if fs.isdir(path):
            found = _remote_dir(fs, path, defer, url)
            if not found:
                raise ConfigError(f"{url}: directory with no logs in it")
            return found
    except SpikelensError:
        raise
    except FileNotFoundError:
        raise LogFormatError(f"{url}: no such file or object") from None
    except Exception as exc:  # noqa: BLE001 - network and protocol errors of any library
        raise LogFormatError(f"{url}: cannot list ({type(exc).__name__}: {exc})") from None
    return [(url, None)]  # a single object: its existence is checked when it is read


def _remote_dir(fs: Any, path: str, defer: bool, item: str) -> list[tuple[str, str | None]]:
    """The logs under a remote folder: TensorBoard run folders by their event files, other
    objects by their first bytes (sniffed here, or by the reader when deferred)."""
    from spikelens.opener import remember

    base = path.rstrip("/")
    listing = fs.find(base, detail=True)
    for f, info in listing.items():
        remember(fs, str(f), info)
    files = sorted(str(f) for f in listing)
    runs: set[str] = set()
    for f in files:
        if "tfevents" in basename(f):
            parent = f.rsplit("/", 1)[0]
            if parent != base and _is_stream(basename(parent)):
                parent = parent.rsplit("/", 1)[0]
            runs.add(parent)
    out: list[tuple[str, str, str | None]] = [(r, fs.unstrip_protocol(r), None) for r in runs]
    for f in files:
        name = basename(f)
        if name.startswith(".") or "tfevents" in name \
                or inner_name(name).lower().endswith(_NOT_LOGS):
            continue
        if any(f.startswith(r + "/") for r in runs):
            continue
        url = fs.unstrip_protocol(f)
        if defer:
            out.append((f, url, item))
        elif claimed(url):
            out.append((f, url, None))
    return [(u, found_in) for _, u, found_in in sorted(out)]
