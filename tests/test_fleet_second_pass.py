"""The fleet's second pass (a log detected again with the lowered bar `joint_min_z` at the
steps where its one-point outliers coincide with other runs') is skipped for a log whose
first-pass point z at those steps is nowhere in [joint_min_z, bar): these tests run the fleet
with the pass forced for every such log and with the skip, and the reports must be the same
JSON, on a fleet where the lowered bar does create events (outliers at z 8.6 in four runs)
and where it cannot (x2.5 bad batches at z far above 9.3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from spikelens import fleet as fleet_mod
from spikelens.detect import detect, point_z
from spikelens.fleet import analyze_sources
from spikelens.model import Config
from spikelens.paths import expand_sources
from spikelens.readers import read_runs
from spikelens.report import render

STEPS = 1500
BIG = 300  # a bad batch every hit run spikes at, x2.5: z far above the single-run bar
NEAR = 700  # a bad batch at z 8.6: below the single-run bar 9.3, above joint_min_z 8
NEAR_Z = 8.6


def _write(path: Path, loss: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        json.dumps({"step": i + 1, "loss": round(float(v), 6), "consumed_tokens": (i + 1) * 4096})
        + "\n" for i, v in enumerate(loss)))


def _z_at(path: Path, step: int) -> float:
    pz = point_z(read_runs(str(path))[0], Config())
    return float(pz.z[np.searchsorted(pz.steps, step)])


def _base(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.arange(1, STEPS + 1)
    return np.asarray((4.0 * s ** -0.15 + 1.5) * np.exp(0.02 * rng.standard_normal(STEPS)))


def _near_spike(path: Path, loss: np.ndarray) -> None:
    """`loss` with a spike at NEAR sized so that its point z is NEAR_Z (the z is close to
    linear in the log of the spike, so a few secant steps land on it)."""
    a0, a1 = 0.15, 0.3
    z0 = z1 = 0.0
    for k in range(8):
        spiked = loss.copy()
        spiked[NEAR - 1] *= np.exp(a1)
        _write(path, spiked)
        z1 = _z_at(path, NEAR)
        if abs(z1 - NEAR_Z) < 0.05:
            return
        if k == 0:
            a0, z0, a1 = a1, z1, a1 * NEAR_Z / z1
        else:
            a0, z0, a1 = a1, z1, a1 + (NEAR_Z - z1) * (a1 - a0) / (z1 - z0)
    raise AssertionError(f"could not place the spike at z {NEAR_Z} (got {z1})")


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight runs: 0-3 hit the bad batch at BIG and the near-bar one at NEAR; 4 hits BIG and
    has a long raised stretch (the detector scans twice: its near set comes from both); 5-6 hit
    BIG only; 7 is clean."""
    root = tmp_path_factory.mktemp("second-pass")
    for i in range(8):
        loss = _base(100 + i)
        if i <= 6:
            loss[BIG - 1] *= 2.5
        if i == 4:
            loss[1000:1200] *= 1.6
        path = root / f"run-{i}" / "metrics.jsonl"
        if i <= 3:
            _near_spike(path, loss)
        else:
            _write(path, loss)
    return root


def _both_ways(sources: list[str], monkeypatch: pytest.MonkeyPatch, jobs: int = 1
               ) -> tuple[str, str, list[int], list[int]]:
    out = []
    for skip in (False, True):
        totals: list[int] = []
        monkeypatch.setattr(fleet_mod, "SKIP_UNCHANGED_SECOND_PASS", skip)
        fl = analyze_sources(sources, jobs=jobs, total=totals.append)
        out.append((render(fl.report, [], "json"), totals))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def test_skipping_the_second_pass_changes_nothing_and_skips(
        fleet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = expand_sources([str(fleet_dir)])
    for i in range(4):
        assert 8.0 <= _z_at(Path(sources[i]), NEAR) < 9.3  # between the bars
    forced, skipped, t_forced, t_skipped = _both_ways(sources, monkeypatch)
    assert skipped == forced
    # first pass 8 logs; second pass 7 forced (every log with coinciding steps), 4 with the
    # skip (0-3: a coinciding step is near the bar); third pass 7 either way
    assert t_forced == [8, 7, 7]
    assert t_skipped == [8, 4, 7]
    # the lowered bar did make events: the near-bar batch is a spike in runs 0-3 of the
    # fleet, and in none of them analysed alone
    doc = json.loads(skipped)
    for i in range(4):
        peaks = [e["peak_step"] for e in doc["runs"][i]["events"]]
        assert NEAR in peaks and BIG in peaks
        alone = json.loads(render(analyze_sources([sources[i]]).report, [], "json"))
        assert NEAR not in [e["peak_step"] for e in alone["runs"][0]["events"]]


def test_the_skip_gives_the_same_json_with_a_pool(fleet_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    all_ = expand_sources([str(fleet_dir)])
    sources = all_[:4] + all_[5:7]  # runs 0-3 (near-bar batch) and 5-6 (BIG only)
    forced, skipped, t_forced, t_skipped = _both_ways(sources, monkeypatch, jobs=2)
    assert skipped == forced
    assert (t_forced[1], t_skipped[1]) == (6, 4)


def test_steps_outside_the_near_set_cannot_change_a_detection(fleet_dir: Path) -> None:
    # the claim the skip rests on, at the detector: lowering the bar at every tested step
    # outside `near_bar` gives the very events; at a near step it gives a new one
    cfg = Config()
    for i in (0, 5, 7):
        run = read_runs(str(fleet_dir / f"run-{i}" / "metrics.jsonl"))[0]
        det = detect(run, cfg, near_bar=True)
        assert det.near_bar is not None
        assert det.events == detect(run, cfg).events
        far = set(int(s) for s in run.steps) - set(det.near_bar)
        assert detect(run, cfg, far).events == det.events
        if i == 0:
            assert NEAR in det.near_bar
            assert detect(run, cfg, [NEAR]).events != det.events
        else:
            assert det.near_bar == ()


def test_a_detector_that_scans_twice_reports_the_near_steps_of_both_scans(
        fleet_dir: Path) -> None:
    # run 4 has a long event, so the rise scan runs again on a clipped baseline: lowering
    # the bar outside the near set (both scans' near steps) still changes nothing
    run = read_runs(str(fleet_dir / "run-4" / "metrics.jsonl"))[0]
    cfg = Config()
    det = detect(run, cfg, near_bar=True)
    assert det.near_bar is not None
    assert det.events == detect(run, cfg).events
    assert any(e.end_step - e.start_step >= 100 for e in det.events)
    far = set(int(s) for s in run.steps) - set(det.near_bar)
    assert detect(run, cfg, far).events == det.events


def test_the_benchmark_sweep_gives_the_same_json_both_ways(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the 20-run sweep of benchmarks/fleet.py (30 % of the runs share three bad batches),
    # when it has been generated on this machine
    root = ROOT / "benchmarks" / "_data" / "fleet-20x2000-v1" / "jsonl"
    if not root.is_dir():
        pytest.skip(f"{root} not generated (python benchmarks/fleet.py --runs 20 --steps 2000)")
    sources = expand_sources([str(root)])
    forced, skipped, t_forced, t_skipped = _both_ways(sources, monkeypatch, jobs=2)
    assert skipped == forced
    # 7 logs share the batches: the second pass is skipped for all of them (their
    # coinciding points are far above the bar), the third explains the 7 either way
    assert t_forced == [20, 7, 7]
    assert t_skipped == [20, 7]
