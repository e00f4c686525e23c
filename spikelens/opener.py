"""One opener for every reader: a log named by a local path, `-` (standard input), a pipe, or an
fsspec URL (`s3://`, `gs://`, `az://`, `http(s)://`), plain or compressed (gzip, bzip2, xz,
zstd; recognised by their magic bytes, not by the name). The readers parse local files (they
seek, memory-map and sniff the first bytes), so a source that is not already a plain local
file is materialised once into a temporary file (on the RAM disk, /dev/shm, for a small
log) that carries the name the log would have
without its compression suffix (`metrics.jsonl.gz` -> `metrics.jsonl`, so sniffing by name
still works), and the runs read from it are renamed back to the source the user gave. A new
protocol or codec is therefore one change here, not one per reader. Remote protocols and zstd
are optional extras, imported only when a source needs them; a missing one is a one-line
error with the install command. A remote object costs one request: a ranged GET of its
first 16 MiB (the rest streamed after it only for a larger log), shared between sniffing a
file found in a folder and reading it. This module also gives a source's identity (size and
mtime, or the ETag from the listing or the object store) for the result cache."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from spikelens.errors import ConfigError, LogFormatError

#: codec -> (magic bytes, usual suffixes)
CODECS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "gzip": (b"\x1f\x8b", (".gz", ".gzip")),
    "bz2": (b"BZh", (".bz2",)),
    "xz": (b"\xfd7zXZ\x00", (".xz",)),
    "zstd": (b"\x28\xb5\x2f\xfd", (".zst", ".zstd")),
}

#: extra -> what `pip install` needs, per URL protocol
_PROTOCOL_EXTRA = {
    "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
    "abfss": "azure", "adl": "azure", "http": "remote", "https": "remote",
}
_PROTOCOL_PACKAGE = {"s3": "s3fs", "gcs": "gcsfs", "azure": "adlfs", "remote": "aiohttp"}

_COPY_CHUNK = 1 << 20


def is_url(source: str) -> bool:
    """A remote source (anything fsspec names by a protocol other than the local disk)."""
    if "://" not in source:
        return False
    return source.split("://", 1)[0].lower() not in ("", "file", "local")


def local_path(source: str) -> str:
    """`file:///x` -> `/x`; anything else unchanged."""
    for prefix in ("file://", "local://"):
        if source.startswith(prefix):
            return source[len(prefix):]
    return source


def codec_of(head: bytes) -> str | None:
    for name, (magic, _) in CODECS.items():
        if head.startswith(magic):
            return name
    return None


def inner_name(name: str) -> str:
    """The log's name without its compression suffix."""
    lower = name.lower()
    for _, suffixes in CODECS.values():
        for suf in suffixes:
            if lower.endswith(suf) and len(name) > len(suf):
                return name[: -len(suf)]
    return name


def basename(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def install_hint(extra: str) -> str:
    return f"pip install 'spikelens[{extra}]'"


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL, or a one-line ConfigError naming the
    extra to install. Credentials are each library's own (environment, config files)."""
    proto = url.split("://", 1)[0].lower()
    extra = _PROTOCOL_EXTRA.get(proto, "remote")
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"{url}: reading {proto}:// needs fsspec: {install_hint(extra)}") \
            from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        pkg = _PROTOCOL_PACKAGE.get(extra, "the fsspec protocol package")
        raise ConfigError(f"{url}: reading {proto}:// needs {pkg}: {install_hint(extra)}") \
            from None
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}") from None
    # fsspec keeps filesystems and their listings for the life of the process: a listing
    # (and the ETag in it) taken before an upload must not hide the upload
    fs.invalidate_cache()
    return fs, str(path)


# --- decompression ----------------------------------------------------------------------

def _decompressor(codec: str, source: str) -> Any:
    """An incremental decompressor (`decompress`, `eof`, `unused_data`) for one stream of
    `codec`, or None when only a whole-file reader exists (zstd through pyarrow)."""
    if codec == "gzip":
        import zlib

        return zlib.decompressobj(wbits=31)  # gzip framing: the CRC and length are checked
    if codec == "bz2":
        import bz2

        return bz2.BZ2Decompressor()
    if codec == "xz":
        import lzma

        return lzma.LZMADecompressor()
    try:
        import zstandard
    except ImportError:
        import pyarrow as pa

        if pa.Codec.is_available("zstd"):
            return None
        raise ConfigError(f"{source}: zstd-compressed; reading it needs the zstandard "
                          f"package: {install_hint('zstd')}") from None
    return zstandard.ZstdDecompressor().decompressobj()


def _copy_decompressed(src: IO[bytes], dst: IO[bytes], codec: str, source: str) -> list[str]:
    """Decompress `src` into `dst`: every concatenated stream (`cat a.gz b.gz`), checked as
    it goes. A stream cut short (a log still being written, a copy interrupted) is read up to
    the cut with a warning; damaged data is a one-line error."""
    d = _decompressor(codec, source)
    if d is None:  # zstd without the zstandard package: pyarrow's codec reads it whole
        import pyarrow as pa

        with pa.CompressedInputStream(pa.PythonFile(src, mode="r"), "zstd") as stream:
            while chunk := stream.read(_COPY_CHUNK):
                dst.write(chunk)
        return []
    started = False
    written = 0
    try:
        while chunk := src.read(_COPY_CHUNK):
            data = chunk
            while data:
                started = True
                out = d.decompress(data)
                dst.write(out)
                written += len(out)
                if d.eof:
                    data = d.unused_data
                    d = _decompressor(codec, source)
                    started = False
                    if not data.strip(b"\x00"):  # tar-style zero padding after the stream
                        data = b""
                else:
                    data = b""
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib.error, OSError, LZMAError, ZstdError
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a read error of the file itself, not of its data
        raise LogFormatError(f"{source}: corrupt {codec} data ({_why(exc)})") from None
    if started and written == 0:
        raise LogFormatError(f"{source}: not a valid {codec} stream: it ends before any data "
                             "(a file cut short after its header)")
    if started:
        return [f"{source}: the {codec} stream is cut short (a file still being written, or "
                f"an interrupted copy): read the {written:,} bytes before the cut"]
    return []


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def head_of(raw: bytes, source: str = "", limit: int | None = None) -> bytes:
    """The first decompressed bytes (at most `limit`) of a log whose first raw bytes are
    `raw` (for sniffing a file found in a directory); `raw` itself when it is not
    compressed, b"" when the start cannot be decoded."""
    head = decoded_head(raw, limit)
    return b"" if head is None else head


def decoded_head(raw: bytes, limit: int | None = None) -> bytes | None:
    """Like `head_of`, but None when `raw` starts a compressed stream that does not decode:
    damaged data, or a stream that ends before giving any byte (a file cut after its
    header). A complete stream of nothing (an empty log, compressed) is b"". Decompressing
    only up to `limit` keeps a 64 KiB start of a text log that compresses tenfold from
    becoming 640 KiB for the sniffers to scan."""
    codec = codec_of(raw)
    if codec is None:
        return raw if limit is None else raw[:limit]
    cap = limit or 0  # 0: no cap, for zlib, bz2 and lzma alike
    try:
        if codec == "gzip":
            import zlib

            d: Any = zlib.decompressobj(wbits=47)
            out = d.decompress(raw, cap)
        elif codec == "bz2":
            import bz2

            d = bz2.BZ2Decompressor()
            out = d.decompress(raw, cap or -1)
        elif codec == "xz":
            import lzma

            d = lzma.LZMADecompressor()
            out = d.decompress(raw, cap or -1)
        else:
            try:
                import zstandard
            except ImportError:
                return b""  # not sniffed here; the reader decompresses it whole
            d = zstandard.ZstdDecompressor().decompressobj()
            out = d.decompress(raw)
            out = out if limit is None else out[:limit]
    except Exception:  # noqa: BLE001 - zlib.error, OSError, LZMAError, ZstdError
        return None
    if not out and not getattr(d, "eof", True):
        return None  # a header and nothing after it
    return bytes(out)


# --- materialising ----------------------------------------------------------------------

def needs_copy(source: str) -> bool:
    """Whether the readers cannot read `source` in place: standard input or a pipe, a
    compressed file, a remote object."""
    if source == "-" or is_url(source):
        return True
    path = local_path(source)
    try:
        st = os.stat(path)
    except OSError:
        return False  # the reader reports the missing file
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        return True  # a pipe or a character device: read once
    try:
        with open(path, "rb") as fh:
            return codec_of(fh.read(8)) is not None
    except OSError:
        return False


@contextlib.contextmanager
def materialised(source: str) -> Iterator[tuple[Path, list[str]]]:
    """A local, decompressed copy of `source` (a file, or a directory for a remote
    TensorBoard run), removed on exit, and the warnings of the copy (a compressed stream cut
    short). Errors are one line naming `source`."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spikelens-", dir=_scratch(source)) as d:
        tmpdir = Path(d)
        if is_url(source):
            yield _fetch_remote(source, tmpdir, notes), notes
            return
        path = Path("/dev/stdin") if source == "-" else Path(local_path(source))
        name = path.name
        if source == "-" or name in ("stdin", "-") or name.isdigit():
            name = "stdin"  # /dev/fd/63 from <(...)
        try:
            with open(path, "rb") as src:
                head = src.read(8)
                codec = codec_of(head)
                target = tmpdir / (inner_name(name) if codec else name)
                with open(target, "wb") as dst:
                    dst.write(b"" if codec else head)
                    if codec:
                        notes += _copy_decompressed(_prefixed(head, src), dst, codec, source)
                    else:
                        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        except FileNotFoundError:
            raise LogFormatError(f"{source}: no such file or directory") from None
        except OSError as exc:
            raise LogFormatError(f"{source}: cannot read ({exc.strerror or exc})") from None
        yield target, notes


#: A memory-backed filesystem for the decompressed copy of a small log: writing it, reading
#: it back and removing it cost no disk I/O (on the 1,000-log gzip sweep of
#: `benchmarks/fleet.py`, the copy on disk cost about 13 ms a log, a third of it removing it).
TMPFS = "/dev/shm"
#: Only a log whose stored size is at most this goes there (a text log compresses about
#: tenfold: 64 MiB of gzip is some 640 MiB of RAM while it is read) ...
TMPFS_MAX_SOURCE = 64 << 20
#: ... and only while the tmpfs keeps this much free after it (never fill the RAM disk).
TMPFS_MIN_FREE = 2 << 30


def _scratch(source: str) -> str | None:
    """Where the decompressed copy of `source` goes: the tmpfs for a small compressed log
    or remote object, else (a pipe of unknown size, a large file, no tmpfs, or `TMPDIR`
    set by the user) the usual temporary directory (None)."""
    if os.environ.get("TMPDIR") or not os.path.isdir(TMPFS):
        return None
    if is_url(source):
        kept = _KEPT.get(source)
        size = len(kept[0]) if kept is not None and kept[1] else None
    elif source == "-":
        size = None
    else:
        try:
            st = os.stat(local_path(source))
        except OSError:
            return None
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
    if size is None or size > TMPFS_MAX_SOURCE:
        return None
    try:
        vfs = os.statvfs(TMPFS)
    except OSError:
        return None
    if vfs.f_bavail * vfs.f_frsize < TMPFS_MIN_FREE + 16 * size \
            or not os.access(TMPFS, os.W_OK | os.X_OK):
        return None
    return TMPFS


def _prefixed(head: bytes, rest: IO[bytes]) -> IO[bytes]:
    """A stream of `head` then the rest of `rest`: a pipe cannot seek back over the bytes
    already read to recognise the codec."""
    import io

    state = {"head": head}

    class _Raw(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            pending = state["head"]
            if pending:
                n = min(len(b), len(pending))
                b[:n] = pending[:n]
                state["head"] = pending[n:]
                return n
            data = rest.read(len(b))
            b[: len(data)] = data
            return len(data)

    return io.BufferedReader(_Raw(), buffer_size=_COPY_CHUNK)


#: The first request for a remote object asks for this many bytes (an HTTP range): a log of
#: up to this size is then one GET, no HEAD, no listing; a larger one streams the rest.
FIRST_CHUNK = 16 << 20

#: url -> (its first bytes, whether that is the whole object), fetched by `paths.claim` to
#: sniff a remote file found in a folder and kept for the read that follows it in the same
#: task, so that sniffing and reading cost one request together. One entry at a time.
_KEPT: dict[str, tuple[bytes, bool]] = {}


def first_bytes(url: str, fs: Any, path: str, keep: bool = False) -> tuple[bytes, bool]:
    """(the first FIRST_CHUNK bytes of a remote object, whether they are all of it), in one
    ranged GET; with `keep`, held for the next `materialised(url)` in this process."""
    data = bytes(fs.cat_file(path, start=0, end=FIRST_CHUNK))
    # a server that ignores the range sends the whole object: more than asked is all of it
    got = (data, len(data) != FIRST_CHUNK)
    _KEPT.clear()
    if keep:
        _KEPT[url] = got
    return got


def _rest_after(data: bytes, fs: Any, path: str) -> IO[bytes]:
    """A stream of `data` (the object's first bytes) then the rest of the object."""
    import io

    if not data:
        return io.BytesIO(b"")
    src = fs.open(path, "rb")
    src.seek(len(data))
    return _prefixed(data, src)


def _fetch_remote(url: str, tmpdir: Path, notes: list[str]) -> Path:
    fs, path = filesystem(url)
    try:
        kept = _KEPT.pop(url, None)
        if kept is None:
            try:
                kept = first_bytes(url, fs, path)
            except (FileNotFoundError, IsADirectoryError):
                # not an object: a TensorBoard run folder, else missing (one listing more)
                if fs.isdir(path):
                    return _fetch_remote_dir(url, fs, path, tmpdir, notes)
                raise FileNotFoundError(path) from None
        data, whole = kept
        import io

        src = io.BytesIO(data) if whole else _rest_after(data, fs, path)
        with src:
            head = src.read(8)
            codec = codec_of(head)
            name = basename(path) or "log"
            target = tmpdir / (inner_name(name) if codec else name)
            with open(target, "wb") as dst:
                if codec:
                    notes += _copy_decompressed(_prefixed(head, src), dst, codec, url)
                else:
                    dst.write(head)
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
        return target
    except (ConfigError, LogFormatError):
        raise
    except FileNotFoundError:
        raise LogFormatError(f"{url}: no such file or object") from None
    except PermissionError as exc:
        raise LogFormatError(f"{url}: access denied ({_why(exc)})") from None
    except ImportError as exc:
        raise ConfigError(f"{url}: {_why(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - network and protocol errors of any library
        raise LogFormatError(f"{url}: cannot read ({type(exc).__name__}: {_why(exc)})") \
            from None


def _fetch_remote_dir(url: str, fs: Any, path: str, tmpdir: Path, notes: list[str]) -> Path:
    """A remote TensorBoard run directory: its event files and those one level below (the
    layout the TensorBoard reader reads), each decompressed if need be."""
    root = tmpdir / (basename(path) or "run")
    base = path.rstrip("/")
    count = 0
    for f in sorted(fs.find(base, maxdepth=2)):
        rel = f[len(base):].lstrip("/")
        if "tfevents" not in basename(rel) or rel.count("/") > 1:
            continue
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(f, "rb") as src:
            head = src.read(8)
            codec = codec_of(head)
            target = target.with_name(inner_name(target.name)) if codec else target
            with open(target, "wb") as dst:
                if codec:
                    notes += _copy_decompressed(_prefixed(head, src), dst, codec,
                                                fs.unstrip_protocol(f))
                else:
                    dst.write(head)
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
        count += 1
    if count == 0:
        raise LogFormatError(f"{url}: directory with no logs in it")
    return root


# --- identity (for the result cache) ----------------------------------------------------

def identity(source: str) -> str | None:
    """What changes when the log changes: size and modification time of a local file (of
    every event file of a TensorBoard directory), the ETag (else size and mtime) of a remote
    object. None for standard input and pipes, which are never cached."""
    if source == "-":
        return None
    if is_url(source):
        fs, path = filesystem(source)
        known = LISTED.pop(source, None)
        if known is not None:  # seen in the listing just made: no request
            return known
        try:
            if fs.isdir(path):
                parts = [_remote_tag(fs, f) for f in sorted(fs.find(path, maxdepth=2))]
                return "dir:" + "|".join(parts)
            return _remote_tag(fs, path)
        except FileNotFoundError:
            raise LogFormatError(f"{source}: no such file or object") from None
        except Exception as exc:  # noqa: BLE001 - network and protocol errors
            raise LogFormatError(
                f"{source}: cannot read ({type(exc).__name__}: {_why(exc)})") from None
    p = Path(local_path(source))
    try:
        st = p.stat()
    except OSError:
        return None  # the reader reports it
    if stat.S_ISDIR(st.st_mode):
        parts = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for f in sorted(files):
                try:
                    s = os.stat(os.path.join(root, f))
                except OSError:
                    continue
                parts.append(f"{os.path.relpath(os.path.join(root, f), p)}:{s.st_size}:"
                             f"{s.st_mtime_ns}")
        return f"dir:{p.resolve()}|" + "|".join(parts)
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


#: url -> identity of the objects listed while expanding the user's items: a listing gives
#: every object's ETag at a thousand objects per request, where asking each object would be
#: one request per run (a 100,000-run fleet)
LISTED: dict[str, str] = {}


def remember(fs: Any, path: str, info: Any) -> None:
    """Keep the identity of an object seen in a listing (`fs.find(..., detail=True)`)."""
    if isinstance(info, dict) and info.get("type", "file") == "file":
        LISTED[fs.unstrip_protocol(path)] = _tag_of(fs, path, info)


def _remote_tag(fs: Any, path: str) -> str:
    # a listed identity serves once, for the analysis right after the listing; any later
    # question asks the store again, so a replaced object is never taken for the old one
    known = LISTED.pop(fs.unstrip_protocol(path), None)
    if known is not None:
        return known
    return _tag_of(fs, path, fs.info(path))


def _tag_of(fs: Any, path: str, info: Any) -> str:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("etag_")
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified") \
        or info.get("updated")
    tag = f"etag={etag}" if etag else f"mtime={mtime}"
    return f"{fs.unstrip_protocol(path)}:{info.get('size')}:{tag}"
