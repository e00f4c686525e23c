"""The opener under every reader: compressed logs (gzip, bzip2, xz, zstd) are read directly,
whatever their name, TensorBoard event files included; pipes and standard input too; a damaged
archive is one line naming the file; a sweep folder is searched recursively."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, SAMPLES
from fleet_sweep import write_sweep
from typer.testing import CliRunner

from spikelens.cli import app
from spikelens.errors import ConfigError, LogFormatError
from spikelens.opener import codec_of, head_of, inner_name
from spikelens.paths import expand_sources
from spikelens.readers import read_log

JSONL = SAMPLES / "jsonl" / "r18_bad_batch_lr_metrics.jsonl"
TB = DATA / "tensorboard" / "r09"


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard", reason="the zstd extra is not installed")
    return zstandard.ZstdCompressor().compress(data)  # type: ignore[no-any-return]


CODECS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": _zstd,
}


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_a_compressed_log_reads_as_the_plain_one(tmp_path: Path, suffix: str) -> None:
    plain = read_log(JSONL)
    p = tmp_path / f"metrics.jsonl.{suffix}"
    p.write_bytes(CODECS[suffix](JSONL.read_bytes()))
    run = read_log(p)
    assert run.source == str(p) and run.format == "jsonl"
    assert run.frame.equals(plain.frame)
    assert dict(run.roles) == dict(plain.roles)


def test_the_codec_is_sniffed_not_taken_from_the_name(tmp_path: Path) -> None:
    p = tmp_path / "metrics"  # no suffix at all
    p.write_bytes(bz2.compress(JSONL.read_bytes()))
    assert read_log(p).format == "jsonl"
    assert codec_of(p.read_bytes()[:8]) == "bz2"
    assert inner_name("a/metrics.jsonl.gz") == "a/metrics.jsonl"
    assert head_of(gzip.compress(b"step,loss\n"))[:9] == b"step,loss"


def test_a_gzipped_tensorboard_event_file(tmp_path: Path) -> None:
    [src] = sorted(TB.iterdir())[:1]
    p = tmp_path / (src.name + ".gz")
    p.write_bytes(gzip.compress(src.read_bytes()))
    run = read_log(p)
    assert run.format == "tensorboard" and run.source == str(p)
    assert run.frame.equals(read_log(src).frame)


def test_a_damaged_archive_is_one_line_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl.xz"
    p.write_bytes(lzma.compress(JSONL.read_bytes())[:-40] + b"\x00" * 40)
    with pytest.raises(LogFormatError, match=r"metrics\.jsonl\.xz: corrupt xz data \("):
        read_log(p)
    r = CliRunner().invoke(app, ["analyze", str(p)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {p}: corrupt xz data (") and r.stderr.count("\n") == 1


def test_gzip_on_standard_input() -> None:
    r = subprocess.run([sys.executable, "-m", "spikelens", "analyze", "-", "--format", "json"],
                       input=gzip.compress(JSONL.read_bytes()), capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    assert b'"source": "/dev/stdin"' in r.stdout and b'"verdict": "spiky"' in r.stdout


def test_a_sweep_folder_is_searched_recursively(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep" / "lr-3e-4", 2, steps=50)
    write_sweep(tmp_path / "sweep" / "lr-1e-3", 1, steps=50, compress="gzip")
    (tmp_path / "sweep" / "README.md").write_text("iteration 1/ 10 | lm loss: 2.0 |\n")
    (tmp_path / "sweep" / ".hidden").mkdir()
    shutil.copy(JSONL, tmp_path / "sweep" / ".hidden" / "x.jsonl")
    tb = tmp_path / "sweep" / "tb-run"
    (tb / "train").mkdir(parents=True)
    for f in TB.iterdir():
        shutil.copy(f, tb / "train" / f.name)
    found = [str(Path(s).relative_to(tmp_path / "sweep")) for s in
             expand_sources([str(tmp_path / "sweep")])]
    assert found == ["lr-1e-3/run-00/metrics.jsonl.gz", "lr-3e-4/run-00/metrics.jsonl",
                     "lr-3e-4/run-01/metrics.jsonl", "tb-run"]


def test_a_folder_of_tensorboard_runs_is_a_fleet_of_them(tmp_path: Path) -> None:
    for name in ("seed-1", "seed-2"):
        (tmp_path / name).mkdir()
        for f in TB.iterdir():
            shutil.copy(f, tmp_path / name / f.name)
    assert expand_sources([str(tmp_path)]) == [str(tmp_path / "seed-1"),
                                               str(tmp_path / "seed-2")]


def test_an_empty_folder_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="directory with no logs in it"):
        expand_sources([str(tmp_path)])


def test_the_sniffed_start_of_a_compressed_log(tmp_path: Path) -> None:
    """A file found in a folder is sniffed on the first 64 KiB of its decompressed start
    (not the whole inflated first 64 KiB of compressed data), the format found there is the
    one the reader of the decompressed copy would find, and a start that does not decode is
    told apart from a compressed empty log."""
    from spikelens.opener import decoded_head
    from spikelens.paths import claim
    from spikelens.readers import HEAD_BYTES

    text = JSONL.read_bytes() * 8
    packed = gzip.compress(text)
    assert len(text) > 4 * HEAD_BYTES
    assert decoded_head(packed[:HEAD_BYTES], HEAD_BYTES) == text[:HEAD_BYTES]
    assert decoded_head(packed[:10]) is None  # a header and nothing after it
    assert decoded_head(b"\x1f\x8b\x08\x00" + b"\xff" * 200) is None  # damaged
    assert decoded_head(gzip.compress(b"")) == b""  # an empty log, compressed
    p = tmp_path / "metrics.jsonl.gz"
    p.write_bytes(packed)
    assert claim(str(p)) == (True, "jsonl")
    assert read_log(p).format == "jsonl"


def test_a_small_compressed_log_is_copied_to_the_ram_disk(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The decompressed copy of a small log goes to the tmpfs (no disk I/O for a sweep of
    gzip logs), is removed after the read, and reads as the plain log; with TMPDIR set, the
    user's temporary directory is used instead; a pipe (size unknown) never goes there."""
    from spikelens import opener

    if not Path(opener.TMPFS).is_dir():
        pytest.skip(f"no {opener.TMPFS} on this machine")
    monkeypatch.delenv("TMPDIR", raising=False)
    log = tmp_path / "metrics.jsonl.gz"
    log.write_bytes(gzip.compress(JSONL.read_bytes()))
    with opener.materialised(str(log)) as (copy, notes):
        assert str(copy).startswith(opener.TMPFS + "/")
        assert copy.read_bytes() == JSONL.read_bytes()
        assert notes == []
    assert not copy.exists() and not copy.parent.exists()
    assert read_log(log).frame.equals(read_log(JSONL).frame)
    assert opener._scratch("-") is None
    monkeypatch.setattr(opener, "TMPFS_MAX_SOURCE", log.stat().st_size - 1)
    assert opener._scratch(str(log)) is None  # too large for the RAM disk
    monkeypatch.setattr(opener, "TMPFS_MAX_SOURCE", 64 << 20)
    mine = tmp_path / "tmp"
    mine.mkdir()
    monkeypatch.setenv("TMPDIR", str(mine))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it found
    with opener.materialised(str(log)) as (copy, _):
        assert copy.parent.parent == mine
