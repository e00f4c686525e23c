"""Many logs on one machine: the fleet engine gives the very report the in-process analysis
gives (cross-run coincidences and recurrences included) with any number of processes; the
result cache serves unchanged logs and never a changed one; the parquet tables, the fleet
summary and the suspect data ranges."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from conftest import DATA, SAMPLES  # noqa: F401
from fleet_sweep import write_sweep
from typer.testing import CliRunner

from spikelens import analyze
from spikelens.cache import ResultCache
from spikelens.cli import TABLE_FORMATS, app
from spikelens.fleet import (
    Task,
    analyze_sources,
    run_task,
    summary_text,
    suspect_ranges,
)
from spikelens.model import Config, Report
from spikelens.paths import expand_sources
from spikelens.readers import read_runs
from spikelens.report import render

BAD = (200, 410)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Six runs; four read a bad shard at steps 200 and 410; a W&B panel (two runs in one
    file) and a Megatron log beside them."""
    from fleet_sweep import curve

    root = tmp_path / "sweep"
    write_sweep(root, 6, steps=600, bad=BAD, bad_runs=(0, 1, 2, 3))
    (root / "other").mkdir()
    src = SAMPLES / "megatron" / "bigscience_tr1-13B_spike_29020-29090.log"
    (root / "other" / src.name).write_bytes(src.read_bytes())
    s, a = curve(10, 600, BAD)
    _, b = curve(11, 600)
    rows = ['"Step","seed-10 - train/loss","seed-11 - train/loss"']
    rows += [f'"{i}","{x:.6f}","{y:.6f}"' for i, x, y in zip(s, a, b, strict=True)]
    (root / "other" / "panel.csv").write_text("\n".join(rows) + "\n")
    return root


def _json(report: Report) -> str:
    return render(report, [], "json")


def test_the_fleet_report_is_the_in_process_report(sweep: Path) -> None:
    sources = expand_sources([str(sweep)])
    runs = [r for s in sources for r in read_runs(s)]
    expected = analyze(runs)
    assert len(expected.recurrences) == 2  # the bad shard is seen
    assert len(runs) == 9 and len(sources) == 8
    for jobs in (1, 2):
        fleet = analyze_sources(sources, jobs=jobs)
        assert _json(fleet.report) == _json(expected)


def test_coinciding_outliers_below_the_single_run_bar_are_found_as_in_process() -> None:
    # modded-nanogpt's replicated outliers sit at z 8-9: found only jointly (second pass)
    sources = [str(p) for p in sorted((DATA / "causes").glob("*.log"))]
    runs = [r for s in sources for r in read_runs(s)]
    expected = analyze(runs)
    assert _json(analyze_sources(sources, jobs=2).report) == _json(expected)


def test_jobs_do_not_change_the_output(sweep: Path) -> None:
    runner = CliRunner()
    outs = []
    for jobs in ("1", "2", "3"):
        r = runner.invoke(app, ["analyze", str(sweep), "--format", "json", "--jobs", jobs,
                                "--no-cache"])
        assert r.exit_code == 0, r.output
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    doc = json.loads(outs[0])
    # path order, depth first; the panel export's two runs in file order
    assert [str(Path(r["source"]).relative_to(sweep)) + (f"#{r['name']}" if r["name"] else "")
            for r in doc["runs"]] == [
        "other/bigscience_tr1-13B_spike_29020-29090.log", "other/panel.csv#seed-10",
        "other/panel.csv#seed-11"] + [f"run-{i:02d}/metrics.jsonl" for i in range(6)]


def test_the_first_bad_log_in_order_is_the_error(tmp_path: Path) -> None:
    write_sweep(tmp_path, 4, steps=60)
    (tmp_path / "run-01" / "metrics.jsonl").write_text("")  # sniffed out: not a log
    (tmp_path / "run-02" / "metrics.jsonl").write_text('{"step": 1, "acc": 2}\n' * 5)
    (tmp_path / "run-03" / "metrics.jsonl").write_text('{"step": 1, "foo": 2}\n' * 5)
    r = CliRunner().invoke(app, ["analyze", str(tmp_path), "--jobs", "2", "--no-cache"])
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {tmp_path / 'run-02' / 'metrics.jsonl'}: no loss-like metric "
                        "(found: acc)\n")


def test_the_cache_serves_unchanged_logs_and_never_a_changed_one(sweep: Path,
                                                                 tmp_path: Path) -> None:
    sources = expand_sources([str(sweep)])
    cold = analyze_sources(sources, jobs=1, cache=ResultCache(tmp_path / "c"))
    assert cold.cache_hits == 0
    warm = analyze_sources(sources, jobs=1, cache=ResultCache(tmp_path / "c"))
    assert warm.cache_misses == 0 and warm.cache_hits >= len(sources)
    assert _json(warm.report) == _json(cold.report)
    # a log that grew: that log is read again, and its new spike is seen
    from fleet_sweep import jsonl_text

    grown = sweep / "run-05" / "metrics.jsonl"
    grown.write_text(jsonl_text(5, 700, bad=(650,)))
    again = analyze_sources(sources, jobs=1, cache=ResultCache(tmp_path / "c"))
    assert again.cache_misses >= 1
    run5 = next(r for r in again.report.runs if r.source == str(grown))
    assert run5.steps.last == 700 and run5.verdict == "spiky"
    assert _json(again.report) == _json(analyze([r for s in sources for r in read_runs(s)]))
    # another config is another key
    other = analyze_sources(sources, Config(z_threshold=12.0), jobs=1,
                            cache=ResultCache(tmp_path / "c"))
    assert other.cache_hits == 0


def test_no_cache_writes_nothing(sweep: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["analyze", str(sweep), "--no-cache", "--cache-dir", str(cache),
                                 "--jobs", "1"])
    assert r.exit_code == 0 and not cache.exists()
    r = CliRunner().invoke(app, ["analyze", str(sweep), "--cache-dir", str(cache), "--jobs", "1"])
    assert r.exit_code == 0 and any(cache.rglob("*.pkl"))


def test_results_that_travel_are_compact(tmp_path: Path) -> None:
    # a 20k-step run: what comes back from a worker is a few KB, not the series
    (p,) = write_sweep(tmp_path, 1, steps=20_000, bad=(5000,))
    res = run_task(Task(source=str(p), config=Config()))
    (part,) = res.parts
    assert part.candidates is not None and len(part.candidates.steps) < 20
    assert len(part.thin.frame) < 10
    assert len(pickle.dumps(res)) < 30_000 < p.stat().st_size / 20


def test_parquet_tables(sweep: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    assert TABLE_FORMATS == ("parquet",)
    out = tmp_path / "out" / "incidents.parquet"
    r = CliRunner().invoke(app, ["analyze", str(sweep), "--format", "parquet", "--output",
                                 str(out), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    inc = pq.read_table(out).to_pandas()
    runs = pq.read_table(out.with_name("runs.parquet")).to_pandas()
    sus = pq.read_table(out.with_name("suspects.parquet")).to_pandas()
    assert len(runs) == 9 and sorted(runs["rank"]) == list(range(1, 10))
    bad = inc[inc["run"].str.contains("run-0[0-3]/") & (inc["kind"] == "spike")]
    assert sorted(set(bad["peak_step"])) == list(BAD)
    assert set(bad["top_cause"]) == {"bad_batch"} and set(bad["recurs_in_runs"]) == {5}
    assert (bad["peak_tokens"] == bad["peak_step"] * 256 * 2048).all()
    assert runs.set_index("short_name").loc["run-04/metrics.jsonl", "verdict"] == "healthy"
    # the panel export logs no tokens, so the runs are aligned on the step
    assert len(sus) == 2 and set(sus["n_runs"]) == {5} and set(sus["axis"]) == {"step"}
    assert inc["z"].dtype == "float64" and inc["peak_step"].dtype == "int64"
    # a directory target holds the three tables
    d = tmp_path / "tables"
    r = CliRunner().invoke(app, ["analyze", str(sweep), "-f", "parquet", "-o", str(d)])
    assert r.exit_code == 0 and sorted(p.name for p in d.iterdir()) == [
        "incidents.parquet", "runs.parquet", "suspects.parquet"]
    r = CliRunner().invoke(app, ["analyze", str(sweep), "-f", "parquet"])
    assert r.exit_code == 2 and "give --output DIR" in r.stderr


def test_the_fleet_summary_is_worst_first_and_cut(sweep: Path) -> None:
    r = CliRunner().invoke(app, ["analyze", str(sweep), "--top", "3", "--jobs", "1",
                                 "--no-color"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("spiky: worst of 9 runs (")
    # the run summary table (worst first) is cut to the 3 worst runs, the rest counted
    at = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("run ")
              and "verdict" in ln)
    end = next(i for i, ln in enumerate(lines) if ln.startswith("... and 6 more runs not shown "
                                                                 "(9 in all"))
    table = "\n".join(lines[at + 2:end])
    assert table.count(" spiky ") == 3 and " healthy " not in table
    assert "Suspect data ranges" in r.stdout


def test_a_rerun_with_the_same_seed_and_config_counts_once(sweep: Path) -> None:
    import dataclasses

    fleet = analyze_sources(expand_sources([str(sweep)]), jobs=1)
    assert len(suspect_ranges(fleet)) == 2  # no params in these logs: each run counts
    hit = [i for i, p in enumerate(fleet.parts)
           if any(f.event.peak_step in BAD for f in p.report.findings)]
    assert len(hit) == 5  # four sweep runs and the panel's seed-10
    same = {"seed": 1, "lr": 3e-4}
    parts = list(fleet.parts)
    for n, i in enumerate(hit):
        params = same if n < len(hit) - 1 else {"seed": 2, "lr": 3e-4}
        parts[i] = dataclasses.replace(parts[i], thin=dataclasses.replace(parts[i].thin,
                                                                          params=params))
    rerun = dataclasses.replace(fleet, parts=tuple(parts))
    # four runs are one set-up repeated, the fifth another: two set-ups, not suspect
    assert suspect_ranges(rerun) == []
    assert "Suspect data ranges" not in summary_text(rerun)
    parts[hit[1]] = dataclasses.replace(parts[hit[1]], thin=dataclasses.replace(
        parts[hit[1]].thin, params={"seed": 3, "lr": 3e-4}))
    three = suspect_ranges(dataclasses.replace(fleet, parts=tuple(parts)))
    assert [s.distinct_configs for s in three] == [3, 3]
    assert all(s.unknown_configs == 0 and len(s.runs) == 5 for s in three)


def test_files_that_are_not_logs_are_skipped_by_the_workers(tmp_path: Path) -> None:
    write_sweep(tmp_path / "sweep", 2, steps=80)
    (tmp_path / "sweep" / "run-00" / "weights.dat").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "sweep" / "run-01" / "notes.txt").write_text("lr 3e-4, looked fine\n")
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "sweep"), "--format", "json",
                                 "--jobs", "2", "--no-cache"])
    assert r.exit_code == 0, r.output
    assert [Path(x["source"]).name for x in json.loads(r.stdout)["runs"]] == [
        "metrics.jsonl", "metrics.jsonl"]
    empty = tmp_path / "empty" / "a"
    empty.mkdir(parents=True)
    (empty / "weights.dat").write_bytes(bytes(range(256)) * 64)
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "empty"), "--jobs", "2",
                                 "--no-cache"])
    assert r.exit_code == 2
    assert r.stderr == f"Error: {tmp_path / 'empty'}: directory with no logs in it\n"


def test_the_reduce_aligns_again_only_when_the_third_pass_saw_other_runs(
        tmp_path: Path) -> None:
    """The alignment made after the second pass serves the fleet's recurrences unless the
    third pass came back with other events or other counter rows (a log rewritten between
    the passes): then the runs are aligned again."""
    import dataclasses

    from spikelens.fleet import _same_alignment

    (p,) = write_sweep(tmp_path, 1, steps=2_000, bad=(500, 1200))
    res = run_task(Task(source=str(p), config=Config()))
    (part,) = res.parts
    assert part.events  # the bad batches
    assert _same_alignment(pickle.loads(pickle.dumps(res)), res)  # as a worker sends it
    fewer = dataclasses.replace(part, events=part.events[1:])
    assert not _same_alignment(dataclasses.replace(res, parts=(fewer,)), res)
    moved = part.thin.frame * 2
    other = dataclasses.replace(part, thin=dataclasses.replace(part.thin, frame=moved))
    assert not _same_alignment(dataclasses.replace(res, parts=(other,)), res)
    assert not _same_alignment(dataclasses.replace(res, parts=()), res)
