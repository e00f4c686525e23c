"""The detector's second thread (issue 10, branch detect4): `detect(threads=True)` runs the
grad-norm scan beside the loss's per-point bars and the stall search beside the oscillation
scan; it must find exactly what the one-thread path finds (events, notes, verdict, the
point z and the near-bar steps, bit for bit), on seeded signals that exercise every pass
(spikes, a grad norm with surges of its own, a stall, a cyclic LR) and on the repository's
sample logs and the shared bench. The automatic choice gives a thread only to the main
thread of a process that is not a multiprocessing worker (a fleet's workers already fill the
cores), on a machine with a core to spare, and an error on the worker reaches the caller."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens import read_log
from spikelens.detect import THREAD_MIN_POINTS, Detection, _use_threads, detect
from spikelens.detect import gradnorm as gradnorm_mod
from spikelens.errors import SpikelensError
from spikelens.model import Config, Run

ROOT = Path(__file__).resolve().parents[1]
CFG = Config()


def _run(seed: int, n: int, *, stall: bool = False, cyclic: bool = False) -> Run:
    """A loss with spikes and a shifted stretch, a grad norm that surges on its own (and
    with the loss) and has non-finite points, an LR (cyclic or warmup + cosine); `stall`:
    the loss stops falling a third of the way in, as the grad norm collapses."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    level = 2.0 + 3.0 * np.exp(-t / (n / 8))
    if stall:
        level = np.where(t > n // 3, level[n // 3], level)
    loss = level * np.exp(0.03 * rng.standard_normal(n))
    for i in rng.integers(n // 10, n - 50, 6):
        loss[i] *= float(rng.uniform(1.8, 4.0))
    a = int(rng.integers(n // 2, n - 400))
    loss[a:a + 150] *= 1.6  # a sustained rise
    loss[rng.integers(0, n, 3)] = np.nan
    gn = 1.0 + 0.2 * np.exp(-t / (n / 4)) * rng.standard_normal(n) ** 2
    for i in rng.integers(n // 10, n - 50, 5):
        gn[i:i + 3] *= float(rng.uniform(3.0, 8.0))
    gn[rng.integers(0, n, 2)] = np.inf
    if stall:
        gn[n // 3:] /= 100.0  # vanishing gradients: the stall's reason
    if cyclic:
        lr = 1e-3 * (1.5 + np.sin(2 * np.pi * t / 400))
        loss *= np.exp(0.05 * np.sin(2 * np.pi * (t - 20) / 400))
    else:
        lr = 1e-3 * np.minimum(1.0, (t + 1) / 500) * (0.55 + 0.45 * np.cos(np.pi * t / n))
    steps = np.arange(1, n + 1, dtype=np.int64)
    frame = pd.DataFrame({"loss": loss, "grad_norm": gn, "lr": lr},
                         index=pd.Index(steps, name="step"))
    return Run(source="synthetic.csv", format="csv", frame=frame,
               roles={"loss": "loss", "grad_norm": "grad_norm", "lr": "lr"}, interval=1)


def _key(d: Detection) -> tuple[object, ...]:
    pz = None if d.point_z is None else (d.point_z.steps.tobytes(), d.point_z.z.tobytes())
    return d.events, d.notes, d.verdict, pz, d.near_bar


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["plain", "stall", "cyclic"])
def test_the_thread_path_finds_what_the_one_thread_path_finds(seed: int, kind: str) -> None:
    run = _run(seed, 6_000 + 1_000 * seed, stall=kind == "stall", cyclic=kind == "cyclic")
    for near in (False, True):
        one = detect(run, CFG, near_bar=near, threads=False)
        two = detect(run, CFG, near_bar=near, threads=True)
        assert _key(one) == _key(two)
    # the signals reach the passes that run on the worker
    kinds = {(e.kind, e.metric) for e in one.events}
    assert ("spike", "loss") in kinds
    if kind == "stall":
        assert ("stall", "loss") in kinds


def test_the_thread_path_with_cross_run_outliers_finds_the_same() -> None:
    run = _run(7, 8_000)
    steps = [int(s) for s in run.frame.index[::997]]
    assert _key(detect(run, CFG, steps, threads=False)) == \
        _key(detect(run, CFG, steps, threads=True))


def test_the_thread_path_on_the_sample_logs() -> None:
    paths = sorted(p for p in (ROOT / "sample_logs").glob("*/*") if p.name != "README.md")
    assert len(paths) >= 10
    for p in paths:
        got = read_log(str(p))
        for run in got if isinstance(got, list) else [got]:
            assert _key(detect(run, CFG, threads=False)) == \
                _key(detect(run, CFG, threads=True)), p


def test_the_thread_path_on_the_shared_bench(shared: Path) -> None:
    runs = sorted((shared / "bench" / "runs").glob("*/*"))
    if not runs:
        pytest.skip("no shared bench")
    for p in runs:
        got = read_log(str(p))
        for run in got if isinstance(got, list) else [got]:
            assert _key(detect(run, CFG, threads=False)) == \
                _key(detect(run, CFG, threads=True)), p


def test_an_error_on_the_worker_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise SpikelensError("grad scan failed")

    import spikelens.detect as det

    monkeypatch.setattr(det, "surge_rises", broken)
    assert gradnorm_mod.surge_rises is not broken
    with pytest.raises(SpikelensError, match="grad scan failed"):
        detect(_run(0, 5_000), CFG, threads=True)
    # and the one-thread path raises the same where it reads the scan
    with pytest.raises(SpikelensError, match="grad scan failed"):
        detect(_run(0, 5_000), CFG, threads=False)


def test_only_a_long_log_on_the_main_thread_of_a_lone_process_gets_a_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import spikelens.detect as det
    from spikelens.fleet import default_jobs

    assert _use_threads(True, 10) is True
    assert _use_threads(False, 10**7) is False
    assert _use_threads(None, THREAD_MIN_POINTS - 1) is False
    monkeypatch.setattr(det, "_load", lambda: 0.3)  # an idle machine
    assert _use_threads(None, THREAD_MIN_POINTS) is (default_jobs() >= 2)
    monkeypatch.setattr(det, "_load", lambda: float(default_jobs()))  # every core busy
    assert _use_threads(None, THREAD_MIN_POINTS) is False
    monkeypatch.setattr(det, "_load", lambda: 0.3)
    seen: list[bool] = []
    t = threading.Thread(target=lambda: seen.append(_use_threads(None, 10**7)))
    t.start()
    t.join()
    assert seen == [False]  # a caller's own thread (Dask's threaded workers) is one of many


def _child_choice() -> bool:
    return _use_threads(None, 10**7)


def test_a_multiprocessing_worker_gets_no_thread() -> None:
    """A fleet's worker processes (`fleet.PoolBackend`) already fill the cores."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_child_choice) is False
