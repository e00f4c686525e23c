"""A real Dask cluster: `distributed.LocalCluster` with two worker processes on 127.0.0.1.
One task per log goes to the workers, which read the logs themselves; the same ten runs give
the same JSON report as the local analysis, and a bad log is still one line and exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_sweep import write_sweep
from typer.testing import CliRunner

from spikelens.cli import app

distributed = pytest.importorskip("distributed",
                                  reason="the dask extra (dask[distributed]) is not installed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield str(c.scheduler_address)


@pytest.fixture(scope="module")
def ten_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask") / "sweep"
    write_sweep(root, 10, steps=800, bad=(250, 600), bad_runs=(1, 3, 5, 7))
    return root


def _analyze(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["analyze", *args])
    return r.exit_code, r.stdout, r.stderr


def test_the_cluster_gives_the_local_report(cluster: str, ten_runs: Path) -> None:
    code, remote, err = _analyze(str(ten_runs), "--dask", cluster, "--format", "json",
                                 "--no-cache")
    assert code == 0, err
    code, local, _ = _analyze(str(ten_runs), "--jobs", "1", "--format", "json", "--no-cache")
    assert remote == local
    doc = json.loads(remote)
    assert len(doc["runs"]) == 10 and len(doc["recurrences"]) == 2
    assert [r["verdict"] for r in doc["runs"]].count("spiky") == 4


def test_the_scheduler_from_the_environment(cluster: str, ten_runs: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from spikelens.fleet import analyze_sources
    from spikelens.paths import expand_sources

    monkeypatch.setenv("SPIKELENS_DASK_SCHEDULER", cluster)
    sources = expand_sources([str(ten_runs)])
    with distributed.Client(cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        with distributed.get_task_stream(client) as ts:
            fleet = analyze_sources(sources, jobs=1)  # the environment wins over jobs=1
    assert len(fleet.report.runs) == 10
    # the tasks ran in the cluster's worker processes, one per log (plus the cross-run
    # passes' few)
    ran = [t for t in ts.data if "run_task" in str(t["key"])]
    assert len(ran) >= 10 and {t["worker"] for t in ran} <= workers


def test_a_bad_log_on_the_cluster_is_one_line(cluster: str, tmp_path: Path) -> None:
    write_sweep(tmp_path, 2, steps=100)
    (tmp_path / "run-01" / "metrics.jsonl").write_text('{"step": 1, "acc": 2}\n' * 5)
    code, _, err = _analyze(str(tmp_path), "--dask", cluster, "--no-cache")
    assert code == 2
    assert err == f"Error: {tmp_path / 'run-01' / 'metrics.jsonl'}: no loss-like metric " \
        "(found: acc)\n"


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    import dask

    write_sweep(tmp_path, 2, steps=50)
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, _, err = _analyze(str(tmp_path), "--dask", "tcp://127.0.0.1:9", "--no-cache")
    assert code == 2
    assert err.startswith("Error: tcp://127.0.0.1:9: cannot connect to the Dask scheduler (")
    assert err.count("\n") == 1
