"""Readers: one file per log format, each registering itself in `READERS` with one line.
`read_runs` sniffs the format from the first bytes (and the file name), parses with the
chosen reader and hands the raw table to the shared `build_run`. `read_log` is the same for
the usual one-run file. Every failure is a typed `SpikelensError` whose message names the
file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from spikelens.errors import (
    ConfigError,
    LogFormatError,
    MissingMetricError,
    SpikelensError,
    UnknownFormatError,
)
from spikelens.model import Run
from spikelens.readers._base import ANALYSABLE, RawLog, Reader, build_run, looks_binary
from spikelens.registry import Registry

READERS: Registry[Reader] = Registry("format")
_LOADED = False

HEAD_BYTES = 64 * 1024


def _register_builtin() -> None:
    # Every public module in this package is a reader that registers itself on import, so
    # adding a format is adding a file. Ties in sniffing go to registration order, which
    # is alphabetical here; readers express real precedence through their sniff scores.
    import importlib
    import pkgutil

    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{mod}")


def _head(path: Path) -> bytes:
    if path.is_dir():
        return b""
    try:
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None


def detect_format(path: Path) -> str:
    """The registered format that is surest it can read `path`."""
    _register_builtin()
    if not path.exists():
        if path.is_symlink():
            raise LogFormatError(f"{path}: symbolic link to nothing readable (it is dangling, "
                                 "or a loop)")
        raise LogFormatError(f"{path}: no such file or directory")
    head = _head(path)
    if not path.is_dir():
        if not head.strip():
            raise LogFormatError(f"{path}: empty file")
    ranked = _ranked(path, head)
    if not ranked:
        if path.is_dir():
            raise LogFormatError(f"{path}: directory with no logs in it")
        if head[:2] == b"\x1f\x8b":
            raise UnknownFormatError(
                f"{path}: gzip-compressed; decompress it first (e.g. `zcat {path.name} > log`)"
            )
        if looks_binary(head):
            raise UnknownFormatError(
                f"{path}: binary data of no known format (known: {', '.join(READERS.names())})"
            )
        raise UnknownFormatError(
            f"{path}: unknown log format (known: {', '.join(READERS.names())})"
        )
    return ranked[0]


def _ranked(path: Path, head: bytes) -> list[str]:
    """The formats that could read `path`, surest first (ties in registration order)."""
    scores = [(reader.sniff(path, head), i, name) for i, (name, reader) in
              enumerate(READERS.items())]
    return [name for score, _, name in sorted(scores, key=lambda t: (-t[0], t[1]))
            if score > 0]


def _read_with(p: Path, fmt: str, metrics: Mapping[str, str] | None) -> list[Run]:
    reader = READERS.get(fmt)
    if p.is_dir() and not getattr(reader, "reads_directories", fmt in ("tensorboard", "ranks")):
        raise LogFormatError(f"{p}: is a directory (the {fmt} format reads files)")
    try:
        raws = reader.read(p)
        if not raws:
            raise LogFormatError(f"{p}: no records found in this {fmt} log")
        return [build_run(raw, p, fmt, metrics) for raw in raws]
    except SpikelensError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise LogFormatError(f"{p}: cannot read as {fmt}: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as exc:
        # a shape of input no reader test anticipated: still one line, never a traceback
        raise LogFormatError(f"{p}: not a valid {fmt} log ({type(exc).__name__}: {exc})") \
            from None


def _other_format(p: Path, first: str, metrics: Mapping[str, str] | None,
                  accept: Callable[[str, list[Run]], str | None]) -> list[Run] | None:
    """The runs of the first other format, surest first, that reads `p` and whose runs
    `accept` takes (it returns why, for the warning), or None. The sniffed format `first`
    read the file without what the user or the analysis needs: a DeepSpeed stdout log whose
    DeepSpeed-Chat `act_loss` lines only the generic text reader parses."""
    for fmt in _ranked(p, _head(p)):
        if fmt == first:
            continue
        try:
            runs = _read_with(p, fmt, metrics)
        except SpikelensError:
            continue
        why = accept(fmt, runs)
        if why is not None:
            note = f"{p}: read as {fmt}: the {first} reader {why}"
            return [dataclasses.replace(r, warnings=(note, *r.warnings)) for r in runs]
    return None


def _read_other_format(
    p: Path, first: str, metrics: Mapping[str, str], error: ConfigError
) -> list[Run]:
    """`--metric ROLE=NAME` named a series the sniffed format does not read: any other
    format that could read the file and holds every named series reads it."""
    named = ", ".join(sorted(set(metrics.values())))
    runs = _other_format(p, first, metrics, lambda _f, _r: f"does not read {named}")
    if runs is None:
        raise error
    return runs


def _with_loss(p: Path, first: str, metrics: Mapping[str, str] | None,
               found: list[Run] | MissingMetricError) -> list[Run]:
    """The sniffed format read no train loss from `p` (`found`: its runs, or its error): the
    first other format that could read the file and finds one reads it, with a warning (a
    DeepSpeed-Chat RLHF log's DeepSpeed `step=N, skipped=K` lines make the DeepSpeed reader
    claim it; its `act_loss: ...|cri_loss: ...` lines only the text reader reads). When the
    user named the loss, or no format finds one, what the sniffed one gave stands."""

    def with_loss(fmt: str, runs: list[Run]) -> str | None:
        if not all("loss" in r.roles for r in runs):
            return None
        losses = ", ".join(sorted({r.roles["loss"] for r in runs}))
        return f"finds no train loss in it, the {fmt} reader finds {losses}"

    runs = None if metrics and "loss" in metrics else _other_format(p, first, metrics, with_loss)
    if runs is not None:
        return runs
    if isinstance(found, MissingMetricError):
        raise found
    return found


def read_runs(
    path: str | os.PathLike[str],
    format: str | None = None,
    metrics: Mapping[str, str] | None = None,
    *,
    before_read: Callable[[str], None] | None = None,
) -> list[Run]:
    """Read every run in `path` (a W&B panel export can hold several). Whatever the readers
    cannot read in place (standard input `-`, a pipe, a compressed file, an fsspec URL) goes
    through `spikelens.opener` first: one local, decompressed copy, and the runs name the
    source the user gave. `before_read(format)` is called once the format is known, just
    before its reader runs (`fleet.preload_analysis` starts the analysis imports there)."""
    _register_builtin()
    from spikelens.opener import local_path, needs_copy

    src = os.fspath(path)
    if needs_copy(src):
        return _read_copy(src, format, metrics, before_read)
    p = Path(local_path(src))
    fmt = format or detect_format(p)
    if before_read is not None:
        before_read(fmt)
    try:
        runs = _read_with(p, fmt, metrics)
    except ConfigError as exc:
        if format is not None or not metrics or "no such metric" not in str(exc):
            raise
        runs = _read_other_format(p, fmt, metrics, exc)
    except MissingMetricError as exc:
        if format is not None:
            raise
        runs = _with_loss(p, fmt, metrics, exc)
    else:
        if format is None and not any("loss" in r.roles for r in runs):
            runs = _with_loss(p, fmt, metrics, runs)
    _release_arrow_memory()
    return runs


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow freed while parsing back to the system. Its allocator keeps
    freed pages for its own reuse, but what comes next (detection, numpy and pandas) does
    not allocate through it: on the 201 MB CSV, 109 MB stayed resident after the read and
    counted under every later peak of `analyze`."""
    import sys

    pa = sys.modules.get("pyarrow")
    if pa is not None:  # a reader that never imported pyarrow has nothing to release
        pa.default_memory_pool().release_unused()


def _read_copy(
    source: str, format: str | None, metrics: Mapping[str, str] | None,
    before_read: Callable[[str], None] | None = None,
) -> list[Run]:
    import dataclasses

    from spikelens.opener import materialised

    shown = "/dev/stdin" if source == "-" else source
    with materialised(source) as (tmp, notes):
        try:
            runs = read_runs(tmp, format=format, metrics=metrics, before_read=before_read)
        except SpikelensError as exc:
            raise type(exc)(str(exc).replace(str(tmp), shown)) from None
    # the runs name the source the user gave, not the temporary copy
    return [dataclasses.replace(r, source=shown, warnings=tuple(notes) + tuple(
        w.replace(str(tmp), shown) for w in r.warnings)) for r in runs]


def read_log(
    path: str | os.PathLike[str],
    format: str | None = None,
    metrics: Mapping[str, str] | None = None,
    run: str | None = None,
) -> Run:
    """Read one training log into a canonical `Run`.

    `format` forces a reader (see `READERS.names()`); `metrics` overrides roles, e.g.
    `{"loss": "my/loss"}`; `run` picks one run from a file that holds several.
    """
    runs = read_runs(path, format=format, metrics=metrics)
    if run is not None:
        for r in runs:
            if r.name == run:
                return r
        names = ", ".join(str(r.name) for r in runs)
        raise ConfigError(f"{path}: no run named {run!r} (runs: {names})")
    if len(runs) > 1:
        names = ", ".join(str(r.name) for r in runs)
        raise ConfigError(f"{path}: holds {len(runs)} runs ({names}); pick one with run=")
    return runs[0]


def format_names() -> list[str]:
    _register_builtin()
    return READERS.names()


__all__ = [
    "ANALYSABLE",
    "READERS",
    "RawLog",
    "Reader",
    "build_run",
    "detect_format",
    "format_names",
    "read_log",
    "read_runs",
]
