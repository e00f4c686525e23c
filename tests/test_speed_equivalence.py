"""The shortcuts taken for speed (issue 10) give exactly what the plain computations give:
the second pass's reused baseline windows, the grad-norm break found by binary search, the
LR stretch found from block minima, and the point z kept from the detector's first pass.
Exact equality (bytes), not closeness: a report must not change because it got faster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_event_table

from spikelens import read_log
from spikelens.causes._window import RunArrays, Series, stretch_start
from spikelens.detect import detect, point_z
from spikelens.detect.nonfinite import _grad_first, _grad_first_all
from spikelens.detect.spikes import trailing_stats
from spikelens.model import Config

ROOT = Path(__file__).resolve().parents[1]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_second_pass_reuses_only_unchanged_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.choice([50, 100, 101, 3000, 20000]))
    window = int(rng.choice([8, 100]))
    x = np.cumsum(rng.standard_normal(n)) * 0.01 + 0.1 * rng.standard_normal(n)
    clipped = x.copy()
    for _ in range(4):  # events clipped to their band, as find_rises does
        a = int(rng.integers(0, n))
        clipped[a:a + 200] = np.minimum(clipped[a:a + 200], float(np.median(x)))
    reuse: dict[str, dict[str, object]] = {}
    trailing_stats(x, window, 1e-6, True, reuse)
    fast = trailing_stats(clipped, window, 1e-6, True, reuse)
    plain = trailing_stats(clipped, window, 1e-6, True)
    for name in ("level", "scale", "up_scale", "inflation", "floor"):
        assert _same(getattr(fast, name), getattr(plain, name)), name


def test_grad_first_by_binary_search_matches_the_scan() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        steps = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64)
        vals = rng.random(n)
        vals[rng.random(n) < 0.3] = np.nan
        vals[rng.random(n) < 0.1] = np.inf
        first = _grad_first_all(steps, vals)
        for loss_step in rng.integers(-5, 10 * n + 5, 20):
            assert first(int(loss_step)) == _grad_first(int(loss_step), steps, vals)


class _Arrays(RunArrays):
    def __init__(self, values: np.ndarray) -> None:  # noqa: D107 - no Run needed
        self.misc = {}
        self._v = values

    def finite(self, role: str) -> Series | None:
        return Series(np.arange(len(self._v), dtype=np.int64), self._v)


def test_lr_stretch_from_block_minima_matches_the_scan() -> None:
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 5000))
        v = [np.sort(rng.random(n))[::-1].copy(), rng.random(n),
             np.round(3 * rng.random(n))][trial % 3]
        arr = _Arrays(v)
        for _ in range(5):
            end = int(rng.integers(1, n + 1))
            thr = float(rng.choice([rng.random(), 0.999 * v[end - 1], -1.0, 2.0]))
            assert arr.start_at_or_above("lr", end, thr) == \
                stretch_start(lambda lo, hi, t=thr, v=v: v[lo:hi] >= t, end)


def test_detection_carries_the_point_z_of_point_z() -> None:
    run = read_log(ROOT / "sample_logs" / "csv" / "bench_r05_fp16_overflow_storm.csv")
    cfg = Config()
    det = detect(run, cfg)
    assert det.point_z is not None
    want = point_z(run, cfg)
    assert _same(det.point_z.steps, want.steps)
    assert _same(det.point_z.z, want.z)
    assert np.isfinite(want.z).any()  # the comparison is about real values


def test_fast_median_is_np_median_bit_for_bit() -> None:
    from spikelens.detect.baseline import fast_median

    rng = np.random.default_rng(2)
    for trial in range(240):
        n = int(rng.integers(1, 400_000)) if trial % 4 else int(rng.integers(90_000, 130_000))
        a = [rng.standard_normal(n),  # noise
             np.round(rng.standard_normal(n), 2),  # rounded: ties, and -0.0 beside 0.0
             np.sort(rng.standard_normal(n))[::-1].copy(),  # monotone: a strided sample
             np.cumsum(rng.standard_normal(n)),  # a wandering series
             rng.integers(0, 3, n).astype(np.float64),  # three values
             rng.standard_normal(n)][trial % 6]
        if trial % 6 == 5:  # infinities, and NaN (the median is then NaN)
            a[rng.integers(0, n, 3)] = [np.inf, -np.inf, np.nan if trial % 12 == 5 else 1.0]
        assert np.float64(fast_median(a)).tobytes() == np.float64(np.median(a)).tobytes()


def _plain_detrended(w: np.ndarray, probs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """detrended_quantiles as first written: four sorts of every window."""
    from spikelens.detect.baseline import MIN_TREND_POINTS, rank_index

    n = w.shape[1]
    res = w
    if n >= MIN_TREND_POINTS:
        h = n // 2
        first = np.sort(w[:, :h], axis=1)[:, rank_index(h, 0.5)]
        second = np.sort(w[:, h:], axis=1)[:, rank_index(n - h, 0.5)]
        slope = np.minimum((second - first) / (n / 2), 0.0)
        res = w - slope[:, None] * (np.arange(n) - (n - 1) / 2)[None, :]
    level = np.sort(w, axis=1)[:, rank_index(n, 0.5)]
    quant = np.sort(res, axis=1)[:, [rank_index(n, q) for q in probs]]
    return level, quant


@pytest.mark.parametrize("seed", range(4))
def test_trailing_detrended_shared_halves_match_four_sorts(seed: int) -> None:
    """Halves sorted once for two windows, and flat windows' residual quantiles read from
    the window's own sort, give the plain computation's bytes (zeros of both signs too)."""
    from numpy.lib.stride_tricks import sliding_window_view

    from spikelens.detect.baseline import trailing_detrended

    rng = np.random.default_rng(seed)
    probs = (0.25, 0.5, 0.75, 0.9)
    for trial in range(30):
        n = int(rng.choice([30, 101, 1000, 5000]))
        window = int(rng.choice([7, 8, 20, 40, 100, 101]))
        stride = int(rng.choice([1, 2, 4, 5, 10]))
        x = np.cumsum(rng.standard_normal(n)) * 0.01 + 0.1 * rng.standard_normal(n)
        if trial % 3 == 1:  # rounded, with plateaus: many flat windows and ties
            x = np.repeat(np.round(x[: n // 5 + 1], 1), 5)[:n]
        if trial % 3 == 2:  # zeros of both signs
            x = np.where(rng.random(n) < 0.3, -0.0, np.where(rng.random(n) < 0.3, 0.0, x))
        level, out = trailing_detrended(x, window, probs, stride)
        if n <= window:
            continue
        views = sliding_window_view(x[: n - 1], window)[::stride]
        lv, qs = _plain_detrended(views, probs)
        pos = (np.arange(window, n) - window) // stride
        assert _same(level[window:], lv[pos]) and _same(out[window:], qs[pos])


def _plain_first_period(a: np.ndarray, min_acf: float, repeat: bool, hi: int,
                        lo: int) -> int | None:
    for j in range(lo, hi):
        if a[j] >= min_acf and a[j] >= a[j - 1] and a[j] >= a[j + 1]:
            if repeat and not (2 * j < len(a) and a[2 * j] >= min_acf / 2):
                continue
            return j
    return None


def test_first_period_on_all_lags_at_once_matches_the_loop() -> None:
    from spikelens.detect.oscillation import first_period

    rng = np.random.default_rng(3)
    for trial in range(4000):
        n = int(rng.integers(2, 80))
        wave = 0.9 * np.cos(np.arange(n) * 2 * np.pi / rng.integers(2, 12))
        a = rng.standard_normal(n) * 0.6 if trial % 3 else wave + 0.1 * rng.standard_normal(n)
        a[0] = 1.0
        if trial % 7 == 0:
            a[rng.integers(1, n)] = np.nan
        repeat = bool(trial % 2)
        max_lag = None if trial % 5 == 0 else int(rng.integers(0, n + 3))
        min_acf = float(rng.choice([0.2, 0.5, 0.8]))
        neg = np.flatnonzero(a[1:] < 0)
        want = None
        if len(neg):  # no `points`: the bar stays min_acf
            hi = n - 1 if max_lag is None else min(n - 1, max_lag + 1)
            want = _plain_first_period(a, min_acf, repeat, hi, max(2, int(neg[0]) + 1))
        assert first_period(a, min_acf, repeat=repeat, max_lag=max_lag) == want


@pytest.mark.parametrize("name", ["csv/bench_r05_fp16_overflow_storm.csv",
                                  "jsonl/r18_bad_batch_lr_metrics.jsonl"])
def test_test_statistics_in_chunks_match_one_pass(name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The point and shift z computed chunk by chunk (to bound the temporaries) are the
    bytes of one whole-series pass, whatever the chunk length."""
    import dataclasses

    import spikelens.detect as det
    from spikelens.detect import spikes

    run = read_log(ROOT / "sample_logs" / name)
    cfg = Config()
    series = run.series("loss")
    assert series is not None
    loss = det._prepare(run, series, cfg, [])
    params = det._rise_params(run, loss, cfg)
    st = trailing_stats(loss.x, params.window, loss.abs_floor, loss.is_log)
    for isolated in (True, False):
        p = dataclasses.replace(params, isolated=isolated)
        monkeypatch.setattr(spikes, "TEST_CHUNK", len(loss.x) + 1)
        whole = spikes.test_statistics(loss.x, st, p)
        for chunk in (1, 7, 100):
            monkeypatch.setattr(spikes, "TEST_CHUNK", chunk)
            parts = spikes.test_statistics(loss.x, st, p)
            assert whole.keys() == parts.keys()
            for key in whole:
                assert _same(whole[key], parts[key]), (key, chunk)
        assert np.isfinite(whole["point"]).any()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_spread_by_repeat_matches_the_gather(chunk: int, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from spikelens.detect import baseline

    monkeypatch.setattr(baseline, "_SPREAD_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    for _ in range(40):
        n = int(rng.integers(1, 3000))
        window = int(rng.integers(1, 120))
        stride = int(rng.integers(1, 12))
        if n <= window:
            continue
        rows = rng.standard_normal(((n - 1 - window) // stride + 1, 3))
        for shape in ((n, 3), (n,)):
            dst = np.full(shape, np.nan)
            src = rows if len(shape) == 2 else rows[:, 0].copy()
            baseline._spread(dst, src, window, stride)
            want = np.full(shape, np.nan)
            want[window:] = src[(np.arange(window, n) - window) // stride]
            assert _same(dst, want)


def test_html_pack_within_room_is_the_full_pack_or_nothing() -> None:
    """The page packs a series only within what is left of its budget, giving up early on
    one that cannot fit: it gets the bytes a full pack gives when the full pack fits, and
    None exactly when the full pack would not fit (or its steps cannot be packed)."""
    from concurrent.futures import ThreadPoolExecutor

    from spikelens.report import html

    rng = np.random.default_rng(4)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for trial in range(24):
            n = int(rng.choice([1, 2, 1000, 300_000]))
            x = np.cumsum(rng.integers(1, 3, n)).astype(np.int64)
            y = [np.cumsum(rng.standard_normal(n)) * 1e-3 + 0.01 * rng.standard_normal(n),
                 np.round(rng.standard_normal(n), 2), np.linspace(1e-4, 0, n)][trial % 3]
            whole = html.pack_series(x, y)
            assert whole is not None
            cost = len(whole["dx"]) + len(whole["y"])
            for room in (cost - 1, cost, cost + 1, cost // 3, 10 * cost):
                got = html.pack_series(x, y, room, pool if trial % 2 else None)
                assert got == (whole if cost <= room else None), (trial, room)


@pytest.mark.parametrize("seed", range(3))
def test_expanding_head_in_one_sort_matches_window_by_window(seed: int) -> None:
    """The first `window` points (expanding windows x[:i]) computed as one padded matrix
    give what each window computed alone gives; zeros and NaN take the loop."""
    from spikelens.detect.baseline import rank_index, trailing_detrended, trailing_quantiles

    rng = np.random.default_rng(seed)
    probs = (0.25, 0.5, 0.75, 0.9)
    for trial in range(40):
        n = int(rng.choice([1, 2, 3, 9, 60, 300]))
        window = int(rng.choice([2, 3, 8, 9, 40, 100]))
        x = 2.0 + np.cumsum(rng.standard_normal(n)) * 0.05 + 0.1 * rng.standard_normal(n)
        if trial % 4 == 1:
            x = np.round(x, 1)  # ties
        if trial % 4 == 2:
            x[rng.random(n) < 0.1] = 0.0
        if trial % 4 == 3 and n > 3:
            x[2] = np.nan
        level, out = trailing_detrended(x, window, probs, 5)
        tq = trailing_quantiles(x, window, probs, 5)
        for i in range(1, min(n, window)):
            lv, qs = _plain_detrended(x[None, :i], probs)
            assert _same(level[i:i + 1], lv) and _same(out[i:i + 1], qs), (trial, i)
            srt = np.sort(x[:i])
            assert _same(tq[i], np.array([srt[rank_index(i, q)] for q in probs]))


def _rich_table_text(table: object, width: int) -> str:
    from spikelens.report.terminal import RenderOptions, _console

    console = _console(RenderOptions(width=width))
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


_WORDS = ["1", "12", "spike", "nonfinite", "3965–3966", "(peak", "3965)", "×3.88,", "z", "33.9",
          "yes,", "step", "bad_batch", "0.75", "grad_explosion", "-",
          "non-finite,", "inf", "oscillation", "lr_schedule", "  ", "x", "a-very-long-word-indeed"]


@pytest.mark.parametrize("seed", range(8))
def test_plain_event_table_is_riches_layout(seed: int) -> None:
    """The colourless event table laid out without rich's per-row rendering is rich's text,
    line for line, over random cells (wrapped, too long, blank) and widths from 70 to 200;
    where it declines (a cell rich would cut with an ellipsis) rich prints it."""
    from spikelens.report.terminal import RenderOptions, _console, _plain_table

    rng = np.random.default_rng(seed)
    declined = 0
    for _ in range(40):
        wide = bool(rng.integers(0, 2))
        # the long word: in the summary only
        table = random_event_table(rng, wide, int(rng.integers(1, 30)), _WORDS[:-1], _WORDS, 25)
        width = int(rng.integers(70, 200))
        console = _console(RenderOptions(width=width))
        lines = _plain_table(console, table)
        if lines is None:
            declined += 1
            continue
        assert "".join(line + "\n" for line in lines) == _rich_table_text(table, width)
    assert declined <= 30  # most tables are laid out here, not handed back to rich


@pytest.mark.parametrize("width", [60, 100, 120, 160])
def test_terminal_reports_are_riches_text(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole terminal reports (the sample logs one by one and the CSV ones together) are the
    same text with the plain table as with rich's, verbose or not."""
    from spikelens import analyze
    from spikelens.report import terminal

    paths = sorted(p for p in (ROOT / "sample_logs" / "csv").iterdir() if p.suffix == ".csv")
    runs = [read_log(p) for p in paths]
    cases = [(analyze(runs), runs)] + [(analyze(r), [r]) for r in runs]
    for (report, rs), verbose in zip(cases, [True, False] * len(cases), strict=False):
        options = terminal.RenderOptions(width=width, verbose=verbose)
        fast = terminal.render(report, rs, options)
        with monkeypatch.context() as m:
            m.setattr(terminal, "_plain_table", lambda console, table: None)
            plain = terminal.render(report, rs, options)
        assert fast == plain


def test_terminal_report_without_riches_private_wrap_is_riches_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain table uses a private function of rich (`rich._wrap.divide_line`); a rich
    without it (`rich>=13` is not pinned) gets rich's own table, the same text, not a
    traceback."""
    import rich._wrap

    from spikelens import analyze
    from spikelens.report import terminal

    run = read_log(ROOT / "sample_logs" / "csv" / "bench_r01_wandb_bad_batch.csv")
    report = analyze(run)
    assert report.runs[0].findings, "the sample must have an event table"
    options = terminal.RenderOptions(width=120, verbose=True)
    want = terminal.render(report, [run], options)
    failed: list[BaseException] = []
    plain = terminal._plain_table

    def watched(console: object, table: object) -> object:
        try:
            return plain(console, table)  # type: ignore[arg-type]
        except Exception as exc:
            failed.append(exc)
            raise

    with monkeypatch.context() as m:
        m.delattr(rich._wrap, "divide_line")
        m.setattr(terminal, "_plain_table", watched)
        assert terminal.render(report, [run], options) == want
    assert failed and isinstance(failed[0], ImportError)


def test_short_medians_and_percentiles_are_numpys_bits() -> None:
    """`median_of` / `percentiles_of` (one sort, the arithmetic in Python) give the bits of
    `np.median` / `np.percentile` on short arrays: odd and even lengths, ties, tiny and
    huge magnitudes, zeros of both signs, infinities and NaN (those two through numpy)."""
    from spikelens.causes._window import median_of, percentiles_of

    rng = np.random.default_rng(11)
    qs = (0, 1, 10, 25, 50, 75, 90, 99, 100, 33.3)
    for _ in range(3000):
        n = int(rng.integers(1, 120))
        scale = float(10.0 ** rng.integers(-300, 300)) if rng.random() < 0.2 else 1.0
        v = rng.standard_normal(n) * scale
        if rng.random() < 0.3:
            v = np.round(v, int(rng.integers(0, 2)))  # ties and zeros (signed, too)
        if rng.random() < 0.05:
            v[int(rng.integers(0, n))] = float(rng.choice([np.inf, -np.inf, np.nan]))
        if rng.random() < 0.1:
            v = np.abs(v)
        with np.errstate(all="ignore"):
            med, want = np.median(v), [np.percentile(v, q) for q in qs]
            got = [median_of(v), *percentiles_of(v, qs)]
        for g, w in zip(got, [med, *want], strict=True):
            assert np.float64(g).tobytes() == np.float64(w).tobytes(), v


def test_long_noise_estimates_in_place_equal_the_plain_gather() -> None:
    """`_steadied` and `_long_rho` fill their million-point outputs in chunks and slices
    (no whole-series index, gather or choice array on the detector's memory peak); the
    values are those of the plain whole-series computation, NaN and the log's ends
    included."""
    from numpy.lib.stride_tricks import sliding_window_view

    from spikelens.detect import spikes

    rng = np.random.default_rng(5)
    long, step = 1000, 500
    for n in (1_001, 1_501, 2_003, 70_001, 200_000):
        e = rng.standard_normal(n) * 0.05
        e[rng.integers(0, n, 5)] = np.nan
        scale = np.abs(rng.standard_normal(n)) * 0.05 + 0.03
        scale[::97] = np.nan
        srt = np.sort(sliding_window_view(e, long)[::step], axis=1)
        lng = (srt[:, spikes.rank_index(long, 0.75)]
               - srt[:, spikes.rank_index(long, 0.25)]) / spikes.IQR_TO_SIGMA
        rows = np.clip(np.rint((np.arange(n) - long / 2) / step).astype(np.int64), 0,
                       len(lng) - 1)
        c = lng[rows]
        agree = float(np.exp(3.0 * spikes.IQR_SCALE_SE / np.sqrt(100)))
        with np.errstate(invalid="ignore"):
            want = np.where((c < scale) & (scale <= agree * c), c, scale)
        got = spikes._steadied(e, scale.copy(), 100)
        assert got.tobytes() == want.tobytes()
        # _long_rho: every point after the first long window takes the last window that
        # ends before it; the tail of the output is that gather
        x = np.cumsum(rng.standard_normal(n)) * 0.01 + rng.standard_normal(n) * 0.05
        out = spikes._long_rho(x, 100)
        d1, d2 = np.diff(x), x[2:] - x[:-2]

        def iqr(d: np.ndarray, m: int) -> np.ndarray:
            s = np.sort(sliding_window_view(d, m)[::step], axis=1)
            hi, lo = spikes.rank_index(m, 0.75), spikes.rank_index(m, 0.25)
            return np.asarray(s[:, hi] - s[:, lo])

        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.square(iqr(d2, long - 1)) / np.square(iqr(d1, long)) - 1.0
        r = r - 2 * spikes.LONG_RHO_SE / np.sqrt(long)
        k = (np.arange(long + 1, n) - (long + 1)) // step
        tail = np.nan_to_num(r[np.minimum(k, len(r) - 1)], nan=0.0, posinf=0.0)
        assert out[long + 1:].tobytes() == tail.tobytes()


# causes4: the cause rules' per-run preparations and the HTML page's plotly.js read


def _dirty_log(path: Path, seed: int) -> Path:
    """A seeded CSV with NaN / inf / -inf cells in every column, a Megatron-style NaN
    counter, a throughput column that is NaN at first, per-layer grad norms and per-layer
    statistics, so that every branch of the per-run preparations is taken."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([300, 2000, 6000]))
    cols: dict[str, np.ndarray] = {
        "loss": 2.0 + 0.1 * rng.standard_normal(n),
        "lr": np.linspace(1e-4, 1e-5, n),
        "grad_norm": np.abs(1.0 + 0.3 * rng.standard_normal(n)),
        "nan_iterations": np.cumsum(rng.random(n) < 0.01).astype(np.float64),
        "throughput": 1000.0 + rng.standard_normal(n),
        "layer_1/grad_norm": np.abs(rng.standard_normal(n)),
        "layer_2/attn_logit_max": 5.0 + rng.random(n),
        "layer_3/act_rms": 1.0 + rng.random(n),
    }
    cols["throughput"][: n // 3] = np.nan
    cols["layer_2/attn_logit_max"][n // 2: n // 2 + 40] *= 20  # a departure
    text = {k: [repr(float(x)) for x in v] for k, v in cols.items()}
    for k in text:
        for i in rng.choice(n, max(1, n // 50), replace=False):
            text[k][i] = str(rng.choice(["nan", "inf", "-inf", ""]))
    for i in (0, n - 1):  # edge-of-log non-finite values
        text["loss"][i] = "inf"
    out = path / f"dirty{seed}.csv"
    lines = ["step," + ",".join(cols)]
    lines += [f"{s}," + ",".join(text[k][s] for k in cols) for s in range(n)]
    out.write_text("\n".join(lines) + "\n")
    return out


def _events(run_steps: np.ndarray, rng: np.random.Generator, k: int) -> list[object]:
    from spikelens.model import Event, Size

    first, last = int(run_steps[0]), int(run_steps[-1])
    out = []
    for j in range(k):
        a = int(rng.integers(first, last + 1)) if j > 1 else (first if j == 0 else last)
        p = min(last, a + int(rng.integers(0, 5)))
        e = min(last + 3, p + int(rng.integers(0, 300)))
        out.append(Event("spike", "loss", a, p, e, True, Size(5.0, 2.0), baseline=2.0))
    return out


def _plain_nonfinite_first(ctx: object) -> dict[str, int]:
    """The per-window masks `_nonfinite` used before its rows were prepared per run."""
    run, ev, arr = ctx.run, ctx.event, ctx.arrays  # type: ignore[attr-defined]
    hi = max(ev.peak_step, min(ev.end_step, ev.start_step + 10 * max(1, run.interval)))
    lo = ev.start_step
    first: dict[str, int] = {}
    names = {col: role for role, col in run.roles.items()}
    idx_all = arr.index
    a = int(np.searchsorted(idx_all, lo, side="left"))
    b = int(np.searchsorted(idx_all, hi, side="right"))
    idx = idx_all[a:b]
    nan_col = run.column("nan_count")
    for col in arr.columns():
        whole, first_finite, nan_at = arr.column(col)
        if col != nan_col and first_finite >= a:
            continue
        bad = np.isinf(whole[a:b])
        if len(nan_at):
            near = nan_at[np.searchsorted(nan_at, lo):np.searchsorted(nan_at, hi, side="right")]
            if len(near):
                bad |= np.isin(idx, near)
        if col == nan_col:
            full = arr.increments("nan_count")
            if full is not None:
                inc = full.between(lo, hi)
                bad |= np.isin(idx, inc.steps[inc.values > 0])
        if bad.any():
            first[names.get(col, col)] = int(idx[np.argmax(bad)])
    return first


@pytest.mark.parametrize("seed", range(4))
def test_nonfinite_from_rows_prepared_once_matches_the_window_masks(
        seed: int, tmp_path: Path) -> None:
    from spikelens.causes._window import Context, _nonfinite, arrays

    run = read_log(_dirty_log(tmp_path, seed))
    assert run.column("nan_count") is not None and run.nan_steps
    rng = np.random.default_rng(100 + seed)
    seen = 0
    for ev in _events(arrays(run).index, rng, 150):
        ctx = Context(run=run, event=ev, events=(), config=Config())  # type: ignore[arg-type]
        plain = _plain_nonfinite_first(ctx)
        got = _nonfinite(ctx)
        if not plain:
            assert got is None
            continue
        seen += 1
        assert got is not None
        step = min(plain.values())
        assert got.step == step
        assert got.series == tuple(sorted(k for k, v in plain.items() if v == step))
    assert seen > 20


def test_rows_of_repeated_index_values_are_every_row() -> None:
    class _Idx(RunArrays):
        def __init__(self, index: np.ndarray) -> None:  # noqa: D107 - no Run needed
            self.index = index

    rng = np.random.default_rng(7)
    for _ in range(200):
        idx = np.sort(rng.integers(0, 50, int(rng.integers(1, 80))))
        steps = np.unique(rng.integers(-3, 55, int(rng.integers(0, 20))))
        assert _same(_Idx(idx)._rows_of(steps), np.flatnonzero(np.isin(idx, steps)))


@pytest.mark.parametrize("seed", range(3))
def test_layer_columns_prepared_once_match_the_per_event_scan(seed: int,
                                                              tmp_path: Path) -> None:
    from spikelens.causes import grad_explosion, model_stats
    from spikelens.causes._window import Context
    from spikelens.metrics import normalise

    run = read_log(_dirty_log(tmp_path, seed))

    def plain_stats(ev: object) -> tuple[object, int]:
        best, looked = None, 0
        for col in run.extras:
            if col not in run.frame.columns:
                continue
            kind = model_stats._kind(col)
            if kind is None:
                continue
            s = run.frame[col]
            keep = s.notna().to_numpy()
            nan_at = run.nan_steps.get(col)
            if nan_at is not None and len(nan_at):
                keep = keep | np.isin(s.index.to_numpy(), nan_at)
            if keep.sum() < model_stats.MIN_BASE + 1:
                continue
            looked += 1
            d = model_stats._departure(s.index.to_numpy()[keep],
                                       s.to_numpy(dtype=np.float64)[keep], ev,  # type: ignore[arg-type]
                                       Config().window)
            if d is None:
                continue
            cand = model_stats.Departure(col, kind, d[0], d[1], d[2],
                                         d[0] < ev.start_step, d[3])  # type: ignore[attr-defined]
            if best is None or cand.step < best.step or (
                    cand.step == best.step and cand.ratio > best.ratio):
                best = cand
        return best, looked

    total = run.column("grad_norm")
    plain_grads = [c for c in run.extras if c in run.frame.columns and c != total
                   and "grad" in normalise(c) and "norm" in normalise(c)
                   and not c.startswith("rank")]
    assert plain_grads == ["layer_1/grad_norm"]
    from spikelens.model import Event, Size

    rng = np.random.default_rng(seed)
    half = len(run.steps) // 2
    # one event just after the planted departure of layer_2/attn_logit_max
    at = Event("spike", "loss", half + 2, half + 3, half + 30, True, Size(5.0, 2.0))
    departed = 0
    for ev in [at, *_events(run.steps, rng, 60)]:
        want = plain_stats(ev)
        assert model_stats._first_layer(run, ev, Config().window) == want  # type: ignore[arg-type]
        departed += want[0] is not None
        ctx = Context(run=run, event=ev, events=(), config=Config())  # type: ignore[arg-type]
        assert grad_explosion._layer_grad_columns(ctx.arrays, total) == plain_grads
    assert want[1] == 2 and departed >= 1


def test_dedupe_shortcut_is_np_unique() -> None:
    from spikelens.causes._window import _dedupe

    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(0, 30))
        steps = [np.sort(rng.integers(0, 40, n)), np.arange(n) * 3,
                 rng.integers(0, 40, n)][trial % 3]  # repeats, strictly rising, unsorted
        vals = rng.random(n)
        _, i = np.unique(steps, return_index=True)
        s, v = _dedupe(steps, vals)
        assert _same(s, steps[i]) and _same(v, vals[i])


def test_logged_nan_in_a_layer_statistic_does_not_crash_model_stats(tmp_path: Path) -> None:
    # main raised "output array is read-only" here (pandas' read-only notna mask, `|=`)
    from spikelens.causes import model_stats
    from spikelens.causes._window import Context

    run = read_log(_dirty_log(tmp_path, 1))
    assert run.nan_steps.get("layer_3/act_rms") is not None
    ev = _events(run.steps, np.random.default_rng(0), 3)[2]
    ctx = Context(run=run, event=ev, events=(), config=Config())  # type: ignore[arg-type]
    res = model_stats.rule(run, ev, ctx)  # type: ignore[arg-type]
    assert res is None or res.cause == "model_stats"


def _plain_lr_jump(full: Series) -> tuple[float, float, int | None, float, float]:
    """The LR jump scan on numpy scalars, as `_lr_profile` did it."""
    nan = float("nan")
    jump, jump_step, jump_from, jump_to = 1.0, None, nan, nan
    best = 1.0
    v = full.values
    for i in range(2, len(v)):
        prev, cur = v[i - 1], v[i]
        if prev <= 0 or cur <= prev:
            continue
        trend = v[i - 1] / v[i - 2] if v[i - 2] > 0 else 1.0
        level = float(np.max(v[max(0, i - 10):i]))
        ex = cur / max(prev * max(trend, 1.0), level)
        if ex > best:
            best = float(ex)
            jump, jump_step = float(cur / prev), int(full.steps[i])
            jump_from, jump_to = float(prev), float(cur)
    return best, jump, jump_step, jump_from, jump_to


def test_lr_jump_on_python_floats_is_the_numpy_scan() -> None:
    from spikelens.causes._window import PRECURSOR_POINTS, lr_jump

    assert PRECURSOR_POINTS == 10
    rng = np.random.default_rng(11)
    for trial in range(400):
        n = int(rng.integers(0, 120))
        kind = trial % 4
        if kind == 0:  # warmup then decay, with a jump
            v = np.concatenate([np.linspace(0, 1e-3, n // 3), np.linspace(1e-3, 1e-4, n - n // 3)])
            if n > 5:
                v[int(rng.integers(2, n))] *= float(rng.choice([1.2, 2.0, 8.0]))
        elif kind == 1:  # cyclic
            v = 1e-3 * (1.5 + np.sin(np.arange(n) / rng.uniform(1, 20)))
        elif kind == 2:  # steps of a schedule, zeros included
            v = np.round(rng.random(n) * 4) * 1e-4
        else:
            v = rng.random(n) * 10.0 ** rng.integers(-6, 0)
        full = Series(np.arange(n, dtype=np.int64) * 7, v.astype(np.float64))
        got, want = lr_jump(full), _plain_lr_jump(full)
        assert repr(got) == repr(want)


def test_scale_cuts_at_once_are_the_scan() -> None:
    from spikelens.causes._window import scale_cuts

    rng = np.random.default_rng(12)
    for _ in range(500):
        n = int(rng.integers(0, 60))
        wv = 2.0 ** rng.integers(-3, 18, n).astype(np.float64)
        wv[rng.random(n) < 0.1] = 0.0
        ceiling = float(rng.choice([np.nan, np.inf, 1024.0, 2.0 ** rng.integers(0, 18)]))
        plain = [j for j in range(1, n) if wv[j] < wv[j - 1] and wv[j] <= ceiling]
        assert scale_cuts(wv, ceiling) == plain


@pytest.mark.parametrize("width", [24, 57, 100, 180])
def test_indented_lines_without_rich_are_riches_text(width: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole terminal reports, verbose or not (every summary, evidence, remedy and skipped
    line goes through `_indented`), are the same text with the plain wrap as with rich's."""
    from spikelens import analyze
    from spikelens.report import terminal

    paths = [ROOT / "sample_logs" / "csv" / "bench_r05_fp16_overflow_storm.csv",
             ROOT / "sample_logs" / "csv" / "bench_r01_wandb_bad_batch.csv",
             ROOT / "sample_logs" / "megatron" / "bigscience_tr8-104B_exp1_glitch_7000-7220.log"]
    runs = [read_log(p) for p in paths]
    cases = [(analyze(runs), runs)] + [(analyze(r), [r]) for r in runs]
    for report, rs in cases:
        for verbose in (False, True):
            options = terminal.RenderOptions(width=width, verbose=verbose)
            fast = terminal.render(report, rs, options)
            with monkeypatch.context() as m:
                m.setattr(terminal, "_plain_indented", lambda text, w, i: None)
                plain = terminal.render(report, rs, options)
            assert fast == plain


def test_plain_indented_is_riches_padding_on_random_text() -> None:
    from rich.padding import Padding
    from rich.text import Text

    from spikelens.report.terminal import RenderOptions, _console, _plain_indented

    rng = np.random.default_rng(21)
    words = ["a", "loss", "jumped", "1.45", "->", "3.17", "(1.9x", "its", "baseline);",
             "x" * 30, "consumed", "samples", "51,136-51,200.", "—", "é", "  ", "grad_norm"]
    checked = 0
    for _ in range(400):
        text = " ".join(str(w) for w in rng.choice(words, int(rng.integers(1, 40))))
        width = int(rng.integers(8, 140))
        indent = int(rng.integers(1, 6))
        console = _console(RenderOptions(width=width, color=False))
        console.print(Padding(Text(text), (0, 0, 0, indent), expand=False))
        want = [ln.rstrip() for ln in console.file.getvalue().split("\n")[:-1]]  # type: ignore[attr-defined]
        got = _plain_indented(text, width, indent)
        if got is None:
            continue
        checked += 1
        assert [(" " * indent + g).rstrip() for g in got] == want, (text, width, indent)
    assert checked > 300

@pytest.mark.parametrize("seed", range(4))
def test_grad_scan_kept_at_its_surges_matches_the_whole_series(seed: int) -> None:
    """`gradnorm.find_surges` keeps the steps and values of its surges only (their indices
    renumbered), not two whole series: the surges read from it are those of the plain scan
    of the whole series."""
    from spikelens.detect import gradnorm
    from spikelens.detect.spikes import RiseParams, find_rises

    rng = np.random.default_rng(seed)
    n = 20_000
    v = np.exp(0.3 * rng.standard_normal(n))
    for i in rng.integers(200, n - 50, 12):
        v[i:i + int(rng.integers(1, 6))] *= float(rng.uniform(3, 10))
    v[rng.integers(0, n, 20)] = np.nan
    v[rng.integers(0, n, 5)] = 0.0
    steps = np.arange(n, dtype=np.int64) * 10
    p = RiseParams(window=100, min_window=100, z_point=6.0, z_shift=4.0, shift_windows=(5,),
                   log_min_ratio_point=float(np.log(2)), log_min_ratio_shift=float(np.log(2)),
                   log_short_ratio=np.inf, start_points=0, log_start_ratio=np.inf,
                   recover_run=10, band_z=3.0, quantum=0.0, is_log=True, isolated=False)
    spans = [(int(steps[a]), int(steps[a]) + 300) for a in rng.integers(0, n, 3)]
    got = gradnorm.find_surges(gradnorm.scan(v, steps, p), spans, 200)
    keep = np.isfinite(v) & (v > 0)
    st, x = steps[keep], np.log(v[keep])
    want = [r for r in find_rises(x, p, 0.0, True, second_pass=False) if r.recovered
            and not any(int(st[r.start]) <= b and a - 200 <= int(st[r.end]) for a, b in spans)]
    assert len(want) >= 3
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for f in ("start", "peak", "end"):
            assert g.steps[getattr(g.rise, f)] == st[getattr(w, f)]
        assert g.x[g.rise.peak] == x[w.peak]
        assert (g.rise.level, g.rise.scale, g.rise.band_hi, g.rise.recovered) == \
            (w.level, w.scale, w.band_hi, w.recovered)


@pytest.mark.parametrize("seed", range(4))
def test_long_rho_of_the_second_pass_reuses_only_unchanged_windows(seed: int) -> None:
    """The second pass's long rho (`spikes._long_rho` through `trailing_stats(reuse=...)`)
    re-sorts only the long windows that hold a clipped point, and keeps the head when none
    of it changed: its inflation is the plain computation's, bit for bit, whether the
    clipping reaches the head or not, and on a series with NaN."""
    from spikelens.detect import spikes

    rng = np.random.default_rng(100 + seed)
    n = int(rng.choice([1_050, 5_000, 200_000]))
    x = np.cumsum(rng.standard_normal(n)) * 0.003 + 0.05 * rng.standard_normal(n)
    if seed == 3:
        x[rng.integers(0, n, 4)] = np.nan
    clipped = x.copy()
    lo = 0 if seed % 2 else 1_200
    for a in rng.integers(lo, n, 30):
        clipped[a:a + 50] = np.minimum(clipped[a:a + 50], float(np.nanmedian(x)) - 0.01)
    reuse: dict[str, dict[str, object]] = {}
    spikes.trailing_stats(x, 100, 1e-6, True, reuse)
    assert reuse["long"]["key"] == (n, 100)
    fast = spikes.trailing_stats(clipped, 100, 1e-6, True, reuse)
    plain = spikes.trailing_stats(clipped, 100, 1e-6, True)
    assert _same(fast.inflation, plain.inflation)
    assert _same(spikes._long_rho(clipped, 100), spikes._long_rho(clipped, 100, {}, None))


@pytest.mark.parametrize("seed", range(3))
def test_big_jump_and_lr_jump_medians_at_candidates_match_the_filter(seed: int) -> None:
    """The big-jump bar's "x stands `ratio` above its 21-point median" and the LR-jump bar's
    typical change take the median at their few candidates only (`_above_median21`,
    `_median21_at`): the same booleans and the same medians, bit for bit, as the
    whole-series median filter, with ties and signed zeros, a few candidates or many."""
    from scipy import ndimage

    from spikelens.detect import _above_median21, _median21_at

    rng = np.random.default_rng(200 + seed)
    for _ in range(400):
        n = int(rng.integers(21, 5_000))
        x = rng.standard_normal(n) * float(rng.choice([0.01, 0.3, 1.0]))
        if rng.random() < 0.3:
            x = np.round(x, 1)
        x[rng.integers(0, n, int(rng.integers(0, 40)))] += float(rng.uniform(0.5, 3.0))
        for log_ratio in (float(np.log(3.0)), float(np.log(1.2)), 0.01):
            want = x - ndimage.median_filter(x, size=21, mode="nearest") >= log_ratio
            assert np.array_equal(_above_median21(x, log_ratio), want)
        idx = np.unique(rng.integers(0, n, int(rng.integers(1, n))))
        a = np.abs(x)
        assert _median21_at(a, idx).tobytes() == \
            ndimage.median_filter(a, size=21, mode="nearest")[idx].tobytes()

# readers4: the reading shortcuts of the fifth round give what the plain reads give


def _same_run(a: object, b: object) -> None:
    import pandas as pd

    from spikelens.model import Run

    assert isinstance(a, Run) and isinstance(b, Run)
    pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
    pd.testing.assert_frame_equal(a.eval_frame, b.eval_frame, check_exact=True)
    assert a.nan_steps.keys() == b.nan_steps.keys()
    for k in a.nan_steps:
        assert _same(a.nan_steps[k], b.nan_steps[k])
    assert a.warnings == b.warnings
    assert a.messages == b.messages
    assert a.roles == b.roles and a.interval == b.interval and a.restarts == b.restarts


def _label_frame(n: int = 6000) -> dict[str, list[str | None]]:
    cols: dict[str, list[str | None]] = {
        "step": [str(i) for i in range(n)],
        "loss": [f"{3 - i * 1e-4:.5f}" for i in range(n)],
        # labels: text, and the warning names them
        "phase": ["train" if i % 3 else "warmup" for i in range(n)],
        "run": ["exp-042" for _ in range(n)],
        # a numeric label-like column with a few odd words: numeric, the words NaN
        "bucket": ["oops" if i in (5, 700, 4000) else str(i % 4) for i in range(n)],
        # mostly numbers with one word in three among its first cells: not text
        "mostly": ["w" if i % 3 == 0 else str(i % 5) for i in range(n)],
        # words first, numbers after: the counts decide, not the first cells
        "late": ["abc" if i < 1024 else str(i % 7) for i in range(n)],
        # a word in two cells in three: text
        "wordy": ["x" if i % 3 else "1" for i in range(n)],
        # NaN/Inf words and empty cells among labels
        "words": [None if i % 11 == 0 else ("nan" if i % 2 else "inf") for i in range(n)],
        "date": [f"2024-01-{1 + i % 28:02d}" for i in range(n)],
    }
    for i in range(0, n, 997):
        cols["run"][i] = None
    return cols


@pytest.mark.parametrize("name", ["phase", "run", "bucket", "mostly", "late", "wordy",
                                  "words", "date"])
def test_label_text_verdict_is_the_dictionary_paths(name: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    import spikelens.readers._base as base

    s = pd.Series(_label_frame()[name], dtype="str")
    fast = base._coerce(s)
    monkeypatch.setattr(base, "_label_is_text", lambda sa, first: False)
    plain = base._coerce(s)
    assert fast[3] == plain[3]
    if not plain[3]:  # a metric: its values, logged NaNs and odd cells are the arrays
        for x, y in zip(fast[:3], plain[:3], strict=True):
            assert _same(x, y)
    # and an object column of the same strings decides the same way
    assert base._coerce(s.astype(object))[3] == plain[3]


def test_text_columns_as_arrow_strings_build_the_same_run() -> None:
    """A reader may hand `build_run` its text columns as Arrow-backed strings (pyarrow's
    columns, kept without Python strings) or as objects: the Run is the same, warnings
    (the ignored text columns, a repeated header row) and dates as steps included."""
    import pandas as pd

    from spikelens.readers._base import RawLog, build_run

    cols = _label_frame()
    for name in list(cols):  # a header written again mid-file, as a row
        cols[name][3000] = name
    as_arrow = pd.DataFrame({k: pd.Series(v, dtype="str") for k, v in cols.items()})
    as_object = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in cols.items()})
    assert all(str(t) == "str" for t in as_arrow.dtypes)
    runs = [build_run(RawLog(frame=f), Path("x.csv"), "csv") for f in (as_arrow, as_object)]
    _same_run(*runs)
    assert any("repeated header" in w for w in runs[0].warnings)
    assert any("ignored non-numeric column(s): phase, run, wordy" in w
               for w in runs[0].warnings)
    assert "bucket" in runs[0].frame.columns and "mostly" in runs[0].frame.columns
    # dates as the step axis, from Arrow strings
    dated = {k: cols[k] for k in ("date", "loss")}
    dated["date"] = [f"2020-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}"
                     for i in range(len(cols["loss"]))]
    dated["date"][3000] = "date"
    dated["loss"][3000] = "loss"
    runs = [build_run(RawLog(frame=pd.DataFrame({k: pd.Series(v, dtype=t)
                                                 for k, v in dated.items()})),
                      Path("d.csv"), "csv") for t in ("str", object)]
    _same_run(*runs)
    assert any("steps are days since" in w for w in runs[0].warnings)


def _object_strings(col: object) -> np.ndarray:
    """The JSONL reader's text columns as they were before the fifth round: Python
    strings in an object array (None where missing)."""
    import pyarrow as pa

    assert isinstance(col, pa.ChunkedArray)
    return np.asarray(col.combine_chunks().to_numpy(zero_copy_only=False), dtype=object)


def _jsonl_lines(n: int, prefixed: bool) -> list[str]:
    import json

    out = []
    for i in range(n):
        rec: dict[str, object] = {"step": i, "loss": 3 - i * 1e-4, "run": "exp-1",
                                  "mode": "val" if i % 50 == 49 else "train",
                                  "tag": f"t{i % 5}", "note": f"n{i}"}
        if i % 97 == 0:
            rec["val_loss"] = 2.5
        if i % 301 == 0:
            del rec["tag"]  # a text cell missing
        out.append(json.dumps(rec))
    out.insert(1234, "[1, 2]")  # not an object
    if prefixed:  # a line for the line-by-line parser: its rows are merged with pyarrow's
        out.insert(2345, 'INFO {"step": 99999, "loss": 1.0, "run": "x"}')
    return out


@pytest.mark.parametrize("prefixed", [True, False])
@pytest.mark.parametrize("templated", [True, False])
def test_jsonl_text_columns_kept_as_arrow_read_as_python_strings_did(
        tmp_path: Path, templated: bool, prefixed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import spikelens.readers.jsonl as jsonl_mod

    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(_jsonl_lines(6000, prefixed)) + "\n")
    monkeypatch.setattr(jsonl_mod, "_TEMPLATE_MIN_BYTES", 0 if templated else 1 << 62)
    raw_new = jsonl_mod.JsonlReader().read(path)[0]
    new = read_log(path)
    monkeypatch.setattr(jsonl_mod, "_text_column", _object_strings)
    raw_old = jsonl_mod.JsonlReader().read(path)[0]
    old = read_log(path)
    pd.testing.assert_frame_equal(raw_new.frame, raw_old.frame, check_exact=True)
    assert raw_new.eval_frame is not None and raw_old.eval_frame is not None
    pd.testing.assert_frame_equal(raw_new.eval_frame, raw_old.eval_frame, check_exact=True)
    assert raw_new.warnings == raw_old.warnings
    assert raw_new.row_lines is not None and raw_old.row_lines is not None
    assert _same(raw_new.row_lines, raw_old.row_lines)
    _same_run(new, old)
    assert "mode" not in raw_new.frame.columns  # the marker column made the eval rows


def _big_csv(path: Path, rows: int, header_at: tuple[int, ...] = (), typo_at: int = -1,
             float_from: int = -1) -> None:
    header = "step,loss,lr,phase,run"
    lines = [header]
    for i in range(rows):
        if i in header_at:
            lines.append(header)
        step = f"{i}.5" if 0 <= float_from <= i else str(i)
        lines.append(f"{step},{3 - i * 1e-6:.9f},{1e-4:.6f},train,exp-{i % 3}")
        if i == typo_at:
            lines.append("Traceback (most recent call last): boom")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("spans", [False, True])
@pytest.mark.parametrize("case", ["clean", "headers", "headers+torn", "types", "types+headers",
                                  "header-in-first-block"])
def test_csv_header_scan_after_a_failed_parse_reads_as_scanning_first(
        tmp_path: Path, case: str, spans: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big CSV is parsed before its repeated header lines are looked for (a file that
    parses has none); the table, warnings and line numbers are those of scanning first."""
    import pandas as pd

    import spikelens.readers.csv as csv_mod

    path = tmp_path / "log.csv"
    rows = 140_000  # about 5.4 MB: more than one 4 MiB block
    kw: dict[str, object] = {}
    if "headers" in case:
        kw["header_at"] = (100_000, 120_000)
    if "torn" in case:
        kw["typo_at"] = 50_000
    if "types" in case:
        kw["float_from"] = 130_000
    if case == "header-in-first-block":
        kw["header_at"] = (10, 110_000)
    _big_csv(path, rows, **kw)  # type: ignore[arg-type]
    if spans:
        monkeypatch.setattr(csv_mod, "_SPLIT_MIN", 1 << 20)
        monkeypatch.setattr(csv_mod, "_parts", lambda size: 3)
    fast = csv_mod.load_csv(path)
    monkeypatch.setattr(csv_mod, "_header_fails", lambda schema: False)
    plain = csv_mod.load_csv(path)
    pd.testing.assert_frame_equal(fast.frame, plain.frame, check_exact=True)
    assert fast.warnings == plain.warnings and fast.header == plain.header
    assert (fast.row_lines is None) == (plain.row_lines is None)
    if fast.row_lines is not None and plain.row_lines is not None:
        assert _same(fast.row_lines, plain.row_lines)
    if "headers" in case or case == "header-in-first-block":
        assert any("repeated header line(s)" in w for w in fast.warnings)
        assert fast.frame["loss"].dtype == np.float64
    else:
        assert not any("repeated header" in w for w in fast.warnings)


def test_header_fails_only_for_a_numeric_column_named_by_a_word() -> None:
    import pyarrow as pa

    from spikelens.readers.csv import _header_fails

    def schema(**cols: pa.DataType) -> pa.Schema:
        return pa.schema(list(cols.items()))

    assert _header_fails(schema(step=pa.int64(), phase=pa.string()))
    assert _header_fails(schema(**{"\ufeffloss": pa.float64()}))
    # names a float column would read as a value: NaN/Inf spellings, numbers, nothing
    for name in ("nan", "Inf", "-infinity", "1e5", "", " ", "2.5"):
        assert not _header_fails(schema(**{name: pa.float64(), "phase": pa.string()}))
    assert not _header_fails(schema(phase=pa.string(), when=pa.timestamp("s")))
    assert not _header_fails(None)


def _plain_mode_spacing(steps: np.ndarray) -> int | None:
    arr = np.asarray(steps, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if len(arr) < 3:
        return None
    d = np.diff(arr)
    if d[0] > 0 and bool((d == d[0]).all()):
        return int(d[0])
    d = d[d > 0]
    if len(d) == 0:
        return None
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])


def test_mode_spacing_by_counting_is_the_sorted_mode() -> None:
    from spikelens.readers._base import mode_spacing

    rng = np.random.default_rng(10)
    for i in range(2000):
        n = int(rng.integers(0, 80))
        kind = i % 5
        if kind == 0:  # counters with repeats, gaps and ties between gap sizes
            x = np.cumsum(rng.integers(0, 5, n)).astype(np.float64)
        elif kind == 1:  # going back and forth
            x = rng.integers(-10, 10, n).astype(np.float64)
        elif kind == 2:  # fractional gaps
            x = np.cumsum(rng.choice([1, 2, 2, 3, 3, 0.5], n))
        elif kind == 3:  # gaps too large to count
            x = np.cumsum(rng.integers(1, 4, n)) * 1e9
        else:
            x = rng.standard_normal(n)
            x[rng.random(n) < 0.2] = np.nan
        assert mode_spacing(x) == _plain_mode_spacing(x)
        if np.isfinite(x).all() and (x == np.round(x)).all():
            # a step counter as the frames hold it (int64): its own gaps, no float copy
            assert mode_spacing(x.astype(np.int64)) == _plain_mode_spacing(x)
            assert mode_spacing(x.astype(np.int64).tolist()) == _plain_mode_spacing(x)
    x = np.delete(np.arange(1_000_000, dtype=np.float64), rng.choice(1_000_000, 200))
    assert mode_spacing(x) == _plain_mode_spacing(x) == 1
    assert mode_spacing(x.astype(np.int64)) == 1


# osc5: _periodic_regions hands first_period only the blocks whose autocorrelation reaches
# min_acf at some lag in [2, max_lag + 2) (`block_periods`); the others must be the None
# first_period gives.
def test_block_periods_prefilter_is_plain() -> None:
    from spikelens.detect.oscillation import _acf_rows, block_periods, first_period

    rng = np.random.default_rng(55)
    for i in range(300):
        block = int(rng.choice([16, 20, 40, 100, 400]))
        nb = int(rng.integers(1, 12))
        per = int(rng.integers(2, 60))
        amp = float(rng.choice([0.0, 0.3, 0.6, 1.0, 3.0]))
        t = np.arange(nb * block)
        r = rng.standard_normal(nb * block) + amp * np.sin(2 * np.pi * t / per)
        if i % 4 == 1:  # periodic in some stretches only
            r[: len(r) // 2] = rng.standard_normal(len(r) // 2)
        if i % 6 == 2 and nb > 1:  # a constant block: a NaN autocorrelation row
            r[block: 2 * block] = 0.0
        if i % 9 == 3:
            r = np.cumsum(r)  # wandering noise
        max_lag = int(rng.integers(1, 140))
        min_acf = float(rng.choice([0.05, 0.3, 0.6, 0.95]))
        with np.errstate(all="ignore"):
            acf = _acf_rows(r.reshape(nb, block), max(1, min(2 * max_lag, block - 1)))
        finite = np.all(np.isfinite(acf), axis=1)
        want = [first_period(row, min_acf, repeat=True, max_lag=max_lag, points=block)
                if ok else None for row, ok in zip(acf, finite, strict=True)]
        assert block_periods(acf, finite, min_acf, max_lag, block) == want


# osc5: the stall's block quartiles come from one row sort, not np.percentile's partition.
def test_row_quartiles_is_percentile() -> None:
    from spikelens.detect.stall import _row_quartiles

    rng = np.random.default_rng(56)
    for i in range(2000):
        m = int(rng.integers(1, 130))
        shape = (int(rng.integers(1, 20)), m)
        kind = i % 5
        if kind == 0:
            a = rng.standard_normal(shape)
        elif kind == 1:  # ties and signed zeros
            a = rng.integers(-2, 3, shape) * rng.choice([1.0, -0.0, 0.0], shape)
        elif kind == 2:
            a = rng.standard_normal(shape)
            a[rng.random(shape) < 0.05] = np.nan
        elif kind == 3:
            a = np.cumsum(rng.standard_normal(shape), axis=1) * 1e-9
        else:
            a = rng.standard_normal(shape) * 1e300
            a[rng.random(shape) < 0.05] = rng.choice([np.inf, -np.inf])
        with np.errstate(all="ignore"):
            want = np.percentile(a, [25, 75], axis=1)
            got = _row_quartiles(a)
        same = (want.view(np.int64) == got.view(np.int64)) | (np.isnan(want) & np.isnan(got))
        # only the sign of a zero quartile may differ (it does not survive a difference)
        assert (same | ((want == 0) & (got == 0))).all()


# osc5: the stall's grad norm is aligned through a step table when the steps allow it.
def _plain_aligned(steps: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(len(steps), np.nan)
    pos = np.searchsorted(steps, at)
    ok = (pos < len(steps))
    ok[ok] &= steps[pos[ok]] == at[ok]
    out[pos[ok]] = values[ok]
    return out


def test_align_to_is_searchsorted() -> None:
    from spikelens.detect.stall import align_to

    rng = np.random.default_rng(57)
    for i in range(3000):
        n = int(rng.integers(0, 60))
        kind = i % 6
        if kind == 0:  # dense steps with gaps
            steps = np.cumsum(rng.integers(1, 3, n)) + int(rng.integers(-50, 50))
        elif kind == 1:  # sparse: the search path
            steps = np.cumsum(rng.integers(1, 1000, n))
        elif kind == 2:  # repeated steps: the search path
            steps = np.sort(rng.integers(0, n + 1, n))
        elif kind == 3:  # unsorted
            steps = rng.integers(0, 2 * n + 1, n)
        elif kind == 4:  # one step, or none
            steps = np.arange(min(n, 1)) + 7
        else:  # steps near the int64 ends
            steps = np.cumsum(rng.integers(1, 3, n)) + np.iinfo(np.int64).max // 2
        steps = steps.astype(np.int64)
        m = int(rng.integers(0, 80))
        base = int(steps[0]) if len(steps) else 0
        at = np.sort(rng.integers(base - 20, base + 3 * max(n, 1) + 20, m)).astype(np.int64)
        if i % 5 == 0 and m:  # repeated grad steps: the last value wins in both
            at[m // 2:] = at[m // 2]
        if i % 7 == 0:
            at = rng.permutation(at)
        values = rng.standard_normal(m)
        values[rng.random(m) < 0.1] = np.nan
        want = _plain_aligned(steps, at, values)
        got = align_to(steps, at, values)
        assert want.tobytes() == got.tobytes()


# detect5: the second pass that borrows the first pass's series and leaves nothing behind

@pytest.mark.parametrize("seed", range(4))
def test_borrowed_and_final_reuse_match_the_plain_stats(seed: int) -> None:
    from spikelens.detect.baseline import BORROW, FINAL

    rng = np.random.default_rng(seed)
    n = int(rng.choice([50, 101, 3000, 20000]))
    window = int(rng.choice([8, 100]))
    x = np.cumsum(rng.standard_normal(n)) * 0.01 + 0.1 * rng.standard_normal(n)
    x[rng.random(n) < 0.01] = 0.0
    clipped = x.copy()
    for _ in range(4):
        a = int(rng.integers(0, n))
        clipped[a:a + 200] = np.minimum(clipped[a:a + 200], float(np.median(x)))
    reuse: dict[str, dict[str, object]] = {"detrended": {BORROW: True},
                                           "diff": {BORROW: True}}
    first = trailing_stats(x, window, 1e-6, True, reuse)
    for d in reuse.values():
        d[FINAL] = True
    kept = {k: dict(d) for k, d in reuse.items()}
    fast = trailing_stats(clipped, window, 1e-6, True, reuse)
    assert reuse["detrended"]["x"] is x  # borrowed, not copied
    for k, d in reuse.items():  # the final pass left nothing
        assert d.keys() == kept[k].keys() and all(d[j] is kept[k][j] for j in d), k
    for got, xs in ((first, x), (fast, clipped)):
        plain = trailing_stats(xs, window, 1e-6, True)
        for name in ("level", "scale", "up_scale", "inflation", "floor"):
            assert _same(getattr(got, name), getattr(plain, name)), name


@pytest.mark.parametrize("seed", range(3))
def test_grad_scan_on_a_thread_reports_what_the_in_line_scan_reports(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long grad norm is scanned on a thread after the cyclic-LR test, beside the stall and
    oscillation passes (`detect._start_side_passes`):
    the detection, grad-norm surges, notes and verdict included, is the one the in-line scan
    gives, and the threaded path did run."""
    import pandas as pd

    from spikelens import detect as det
    from spikelens.model import Run

    rng = np.random.default_rng(seed)
    n = 30_000
    t = np.arange(n)
    loss = (2.0 + 3.0 * (1 + t / 500) ** -1.0) * np.exp(0.05 * rng.standard_normal(n))
    gn = (0.5 + (1 + t / 300) ** -1.0) * np.exp(0.2 * rng.standard_normal(n))
    for i in rng.integers(500, n - 50, 8):  # surges the loss never feels
        gn[i:i + int(rng.integers(1, 5))] *= float(rng.uniform(4, 12))
    for i in rng.integers(500, n - 50, 3):  # loss spikes, some with a grad-norm surge
        loss[i] *= 3.0
        gn[i - int(rng.integers(0, 3))] *= 6.0
    gn[rng.integers(0, n, 10)] = np.nan
    st = np.arange(1, n + 1, dtype=np.int64)
    frame = pd.DataFrame({"loss": loss, "grad_norm": gn}, index=pd.Index(st, name="step"))
    run = Run(source="synthetic.csv", format="csv", frame=frame,
              roles={"loss": "loss", "grad_norm": "grad_norm"}, interval=1)
    cfg = Config()
    monkeypatch.setattr(det, "_GRAD_THREAD_MIN", 10 ** 9)
    inline = det.detect(run, cfg)
    started: list[bool] = []
    real = det._start_side_passes

    def spy(*args: object) -> object:
        lr_fut, grad_fut = real(*args)  # type: ignore[arg-type]
        started.append(grad_fut is not None)
        return lr_fut, grad_fut

    monkeypatch.setattr(det, "_GRAD_THREAD_MIN", 1)
    monkeypatch.setattr(det, "_start_side_passes", spy)
    threaded = det.detect(run, cfg)
    assert started == [True]
    assert sum(e.metric == "grad_norm" for e in inline.events) >= 3
    assert threaded.events == inline.events
    assert (threaded.verdict, threaded.notes) == (inline.verdict, inline.notes)


@pytest.mark.parametrize("seed", range(3))
def test_forward_medians_on_a_thread_give_the_in_line_rises(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long series takes its forward medians and isolated-outlier parts on a thread beside
    the first pass's trailing statistics (`spikes._x_parts`): the rises and the test
    statistics of both passes are the in-line ones, bit for bit."""
    from spikelens.detect import spikes
    from spikelens.detect.spikes import RiseParams, find_rises

    rng = np.random.default_rng(200 + seed)
    n = 20_000
    t = np.arange(n)
    x = np.log(2.0 + 3.0 * (1 + t / 400) ** -1.0) + 0.05 * rng.standard_normal(n)
    for i in rng.integers(300, n - 300, 6):  # one-step spikes
        x[i] += float(rng.uniform(0.5, 1.0))
    for i in (6_000, 14_000):  # two long rises: the second pass runs
        x[i:i + 60] += 0.8
    p = RiseParams(window=100, min_window=20, z_point=9.0, z_shift=5.5, shift_windows=(5, 20),
                   log_min_ratio_point=float(np.log(1.2)), log_min_ratio_shift=float(np.log(1.2)),
                   log_short_ratio=float(np.log(2)), start_points=20,
                   log_start_ratio=float(np.log(3)), recover_run=10, band_z=3.0, quantum=0.0,
                   is_log=True, isolated=True)
    import threading

    started: list[str] = []

    class Spy(threading.Thread):
        def start(self) -> None:
            started.append(self.name)
            super().start()

    monkeypatch.setattr(threading, "Thread", Spy)
    runs = {}
    for threaded in (False, True):
        monkeypatch.setattr(spikes, "X_THREAD_MIN", 1 if threaded else 10 ** 9)
        first: dict[str, np.ndarray] = {}
        second: dict[str, np.ndarray] = {}
        runs[threaded] = (find_rises(x, p, 1e-6, True, statistics=first,
                                     second_statistics=second), first, second)
    (r0, f0, s0), (r1, f1, s1) = runs[False], runs[True]
    assert started == ["spikelens-forward"]  # the second run only
    assert len(r0) >= 3 and s0  # spikes found, and the second pass ran
    assert r1 == r0
    for a, b in ((f0, f1), (s0, s1)):
        assert a.keys() == b.keys()
        assert all(_same(a[k], b[k]) for k in a)


def test_an_error_on_a_side_thread_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """The passes that run on threads (the LR test and grad-norm scan of `detect`, the
    forward medians of `find_rises`) hand their errors to the caller, who sees the same
    exception as in line: no hang, no detection that silently lacks a pass."""
    import pandas as pd

    from spikelens import detect as det
    from spikelens.detect import spikes
    from spikelens.model import Run

    rng = np.random.default_rng(7)
    n = 3_000
    frame = pd.DataFrame({"loss": 2.0 + 0.05 * rng.standard_normal(n),
                          "grad_norm": 1.0 + 0.1 * rng.standard_normal(n)},
                         index=pd.Index(np.arange(1, n + 1), name="step"))
    run = Run(source="synthetic.csv", format="csv", frame=frame,
              roles={"loss": "loss", "grad_norm": "grad_norm"}, interval=1)
    monkeypatch.setattr(det, "_GRAD_THREAD_MIN", 1)
    monkeypatch.setattr(spikes, "X_THREAD_MIN", 1)

    def broken(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("broken on purpose")

    for where, name in ((det, "scan"), (det, "_lr_cycle"), (spikes, "forward_median")):
        with monkeypatch.context() as m:
            m.setattr(where, name, broken)
            with pytest.raises(FloatingPointError, match="broken on purpose"):
                det.detect(run, Config())
