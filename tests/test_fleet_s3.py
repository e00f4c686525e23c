"""Logs in object storage, through a real S3-compatible server: moto's server mode, started
on 127.0.0.1 by the fixture in its own process and stopped after. Runs are uploaded there and
analysed through `s3://` URLs (directories, globs, gzip, a TensorBoard run folder) with the s3
extra (s3fs); the endpoint comes from AWS_ENDPOINT_URL, as for any boto-based tool."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA
from fleet_sweep import jsonl_text, write_sweep
from typer.testing import CliRunner

from spikelens.cli import app

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
pytest.importorskip("moto.server", reason="moto[server] (dev extra) is not installed")

BUCKET = "runs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server did not start")
                time.sleep(0.2)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def uploaded(s3: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    local = tmp_path_factory.mktemp("s3src") / "sweep-7"
    write_sweep(local, 4, steps=500, bad=(200, 333), bad_runs=(0, 1, 2))
    write_sweep(local / "gz", 1, steps=500, bad=(200, 333), compress="gzip")
    (local / "README.md").write_text("not a log\n")
    s3.put(str(local), f"{BUCKET}/", recursive=True)  # type: ignore[attr-defined]
    return local


def _analyze(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["analyze", *args])
    return r.exit_code, r.stdout, r.stderr


def _doc(out: str, prefix: str) -> dict[str, object]:
    """The JSON report with the sources' prefix removed, to compare remote with local."""
    return json.loads(out.replace(prefix, "<root>"))  # type: ignore[no-any-return]


def test_a_sweep_on_s3_reads_as_it_does_on_disk(uploaded: Path, tmp_path: Path) -> None:
    code, remote, err = _analyze(f"s3://{BUCKET}/sweep-7/", "--format", "json", "--jobs", "2",
                                 "--no-cache")
    assert code == 0, err
    code, local, _ = _analyze(str(uploaded), "--format", "json", "--jobs", "1", "--no-cache")
    assert code == 0
    doc = _doc(remote, f"s3://{BUCKET}/sweep-7")
    assert doc == _doc(local, str(uploaded))
    runs = doc["runs"]
    assert isinstance(runs, list) and len(runs) == 5
    assert runs[0]["source"] == "<root>/gz/run-00/metrics.jsonl.gz"
    assert len(doc["recurrences"]) == 2  # type: ignore[arg-type]


def test_a_glob_on_s3(uploaded: Path) -> None:
    code, out, err = _analyze(f"s3://{BUCKET}/sweep-7/run-0[12]/metrics.jsonl", "--format",
                              "json", "--no-cache")
    assert code == 0, err
    assert [r["source"] for r in json.loads(out)["runs"]] == [
        f"s3://{BUCKET}/sweep-7/run-01/metrics.jsonl",
        f"s3://{BUCKET}/sweep-7/run-02/metrics.jsonl"]


def test_a_missing_object_is_one_line_and_exit_2(uploaded: Path) -> None:
    code, _, err = _analyze(f"s3://{BUCKET}/sweep-7/run-09/metrics.jsonl", "--no-cache")
    assert code == 2
    assert err == f"Error: s3://{BUCKET}/sweep-7/run-09/metrics.jsonl: no such file or object\n"
    code, _, err = _analyze(f"s3://{BUCKET}/nothing-here/*.jsonl")
    assert code == 2 and err.count("\n") == 1 and "no object matches" in err


def test_the_cache_follows_the_etag(s3: object, uploaded: Path, tmp_path: Path) -> None:
    fs = s3
    url = f"{BUCKET}/etag/metrics.jsonl"
    fs.pipe(url, jsonl_text(0, 400).encode())  # type: ignore[attr-defined]
    cache = ["--cache-dir", str(tmp_path / "c"), "--format", "json"]
    code, first, _ = _analyze(f"s3://{url}", *cache)
    assert code == 0 and json.loads(first)["runs"][0]["verdict"] == "healthy"
    assert any((tmp_path / "c").rglob("*.pkl"))
    # the object is replaced: new ETag, so the new content is read, never the old result
    fs.pipe(url, jsonl_text(0, 400, bad=(300,)).encode())  # type: ignore[attr-defined]
    code, second, _ = _analyze(f"s3://{url}", *cache)
    assert code == 0 and json.loads(second)["runs"][0]["verdict"] == "spiky"


def test_a_tensorboard_run_folder_on_s3(s3: object, tmp_path: Path) -> None:
    local = tmp_path / "tb" / "seed-1"
    shutil.copytree(DATA / "tensorboard" / "r09", local)
    s3.put(str(tmp_path / "tb"), f"{BUCKET}/", recursive=True)  # type: ignore[attr-defined]
    code, remote, err = _analyze(f"s3://{BUCKET}/tb/", "--format", "json", "--no-cache")
    assert code == 0, err
    code, here, _ = _analyze(str(local), "--format", "json", "--no-cache")
    assert _doc(remote, f"s3://{BUCKET}/tb/seed-1") == _doc(here, str(local))


def test_without_the_extra_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import fsspec  # noqa: F401

    registry = sys.modules["fsspec.registry"]
    # as if `spikelens[s3]` were not installed: s3fs cannot be imported, and fsspec has not
    # loaded its class yet
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # type: ignore[attr-defined]
    code, _, err = _analyze("s3://bucket/sweep/metrics.jsonl", "--no-cache")
    assert code == 2
    assert err == ("Error: s3://bucket/sweep/metrics.jsonl: reading s3:// needs s3fs: "
                   "pip install 'spikelens[s3]'\n")


def test_one_request_per_log(s3: object, uploaded: Path, monkeypatch: pytest.MonkeyPatch
                             ) -> None:
    """A sweep on S3 costs its listing and one GET per log (sniffing and reading share it;
    no HEAD, no per-object listing): every S3 API call of the analysis is counted."""
    import s3fs

    from spikelens.cache import ResultCache
    from spikelens.fleet import analyze_sources
    from spikelens.paths import expand_candidates

    calls: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def counted(self: object, method: str, *args: object, **kwargs: object) -> object:
        calls.append(method)
        return await real(self, method, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    found = expand_candidates([f"s3://{BUCKET}/sweep-7/"])
    listing = len(calls)
    assert listing <= 2 and len(found) == 5  # the README is left out by its name
    cache = ResultCache(Path(str(uploaded) + "-cache"))
    fleet = analyze_sources([s for s, _ in found], jobs=1, cache=cache,
                            found_in=[w for _, w in found])
    assert len(fleet.report.runs) == 5 and len(fleet.report.recurrences) == 2
    # one GET per log, that both sniffed and read it; the cache identities (ETags) came
    # from the listing
    assert calls[listing:] == ["get_object"] * 5
