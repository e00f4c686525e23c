"""Can a grad-norm jump at the same step lower the loss point bar? The measurement behind the
decision not to ship a joint loss + grad-norm point test (docs/detection.md, *Fifth pass*).

For every logged loss point it pairs the point test's z (`rise_statistics`, the statistic the
bar of 9.3 is applied to) with the grad norm's robust z at the same step or at the grad-norm
point logged before it (a grad-norm spike can lead the loss by one logged point): log grad
norm minus its centred 41-point median, over 1.4826 times the centred 41-point median of the
absolute residuals. It prints, per grad-norm bar G, the largest loss point z at points with
grad-norm z >= G outside labelled events and outside the detector's oscillations (what a
joint bar J must clear, with a margin), for points with a full trailing window (100 points)
and for the first 100 points separately; the labelled events under the bar that such points
would reach; and the same pairs on every shared real log that has a usable grad norm.

    python benchmarks/grad_confirmed.py --bench ../shared/bench --bench realruns-v1 ...
    python benchmarks/grad_confirmed.py --real ../shared/real_logs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import _in_oscillations, run_path  # noqa: E402

from spikelens.detect import rise_statistics  # noqa: E402
from spikelens.model import Config, Run  # noqa: E402
from spikelens.readers import read_log  # noqa: E402

WIDTH = 41  # centred window of the grad norm's median and MAD
GRAD_BARS = (3.0, 3.5, 4.0, 4.5, 5.0)


def grad_z(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, robust z) of the log grad norm, None when it is missing or too short."""
    gn = run.series("grad_norm")
    if gn is None or len(gn) < WIDTH:
        return None
    v = gn.to_numpy(dtype=np.float64, na_value=np.nan)
    st = gn.index.to_numpy().astype(np.int64)
    ok = np.isfinite(v) & (v > 0)
    v, st = v[ok], st[ok]
    if len(v) < WIDTH or float(v.min()) == float(v.max()):
        return None
    x = np.log(v)
    r = x - ndimage.median_filter(x, size=WIDTH, mode="nearest")
    mad = ndimage.median_filter(np.abs(r), size=WIDTH, mode="nearest") * 1.4826
    return st, r / np.maximum(mad, 1e-3)


def neighbourhood_ratio(run: Run, steps: np.ndarray) -> np.ndarray:
    """Each loss point over the median of its centred 21-point neighbourhood."""
    s = run.series("loss")
    assert s is not None
    v = s.loc[steps].to_numpy(dtype=np.float64)
    return v / ndimage.median_filter(v, size=21, mode="nearest")


def pairs(run: Run, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(loss steps, loss point z, grad-norm z at the same step or the grad point before)."""
    rs = rise_statistics(run, config)
    g = grad_z(run)
    if g is None or "point" not in rs.z:
        return None
    gst, gz = g
    idx = np.searchsorted(gst, rs.steps, side="right") - 1
    at = np.clip(idx, 0, None)
    same = np.where((idx >= 0) & (gst[at] == rs.steps), gz[at], np.nan)
    before = np.where(np.isfinite(same), idx - 1, idx)
    prev = np.where(before >= 0, gz[np.clip(before, 0, None)], np.nan)
    return rs.steps, rs.z["point"], np.fmax(same, prev)


def labelled_points(benches: Sequence[Path], config: Config) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for bench in benches:
        labels: dict[str, dict[str, Any]] = json.loads((bench / "labels.json").read_text())
        for name, label in labels.items():
            run = read_log(run_path(bench, label))
            p = pairs(run, config)
            if p is None:
                continue
            steps, pz, gz = p
            ratio = neighbourhood_ratio(run, steps)
            inside = _in_oscillations(run, steps, config)
            event = np.zeros(len(steps), dtype=bool)
            for ev in label["events"]:  # the labelled span, and the point before it (a lead)
                event |= (steps >= ev["start"] - 1) & (steps <= ev.get("end", ev["start"]))
            for i in np.flatnonzero(np.isfinite(gz) & (gz >= min(GRAD_BARS)) & np.isfinite(pz)):
                out.append({"run": f"{bench.name}/{name}", "step": int(steps[i]), "i": int(i),
                            "pz": float(pz[i]), "gz": float(gz[i]), "ratio": float(ratio[i]),
                            "event": bool(event[i]), "osc": bool(inside[i])})
    return out


def report_labelled(points: list[dict[str, Any]], bar: float) -> None:
    def top(ps: list[dict[str, Any]]) -> str:
        ps = sorted(ps, key=lambda p: -p["pz"])[:3]
        return ", ".join(f"{p['run']}@{p['step']} z {p['pz']:.2f} (grad {p['gz']:.1f}, "
                         f"x{p['ratio']:.2f})"
                         for p in ps) or "-"

    for g in GRAD_BARS:
        neg = [p for p in points if p["gz"] >= g and not p["event"] and not p["osc"]]
        full = [p for p in neg if p["i"] >= 100]
        early = [p for p in neg if p["i"] < 100]
        ev = [p for p in points if p["gz"] >= g and p["event"] and p["pz"] < bar]
        print(f"grad z >= {g}: {len(full)} negative points with a full window, largest "
              f"loss z: {top(full)}")
        print(f"    first 100 points: {len(early)}, largest: {top(early)}")
        print(f"    labelled-event points under the bar {bar}: {top(ev)}")


def report_real(root: Path, config: Config) -> None:
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.suffix == ".md" or f.name == "consensus_outlier_steps.csv":
            continue
        try:
            run = read_log(f)
        except Exception as exc:  # noqa: BLE001 - a log the reader refuses is named, not fatal
            print(f"{f.name}: not read ({exc})")
            continue
        p = pairs(run, config)
        if p is None:
            print(f"{f.name}: no grad norm of {WIDTH}+ usable points")
            continue
        steps, pz, gz = p
        ratio = neighbourhood_ratio(run, steps)
        m = np.isfinite(gz) & (gz >= min(GRAD_BARS)) & np.isfinite(pz)
        order = np.flatnonzero(m)[np.argsort(-pz[m])][:3]
        print(f"{f.name}: {int(m.sum())} points with grad z >= {min(GRAD_BARS)}; largest loss "
              "z: " + ", ".join(f"{int(steps[i])} z {pz[i]:.2f} (grad {gz[i]:.1f}, "
                                f"x{ratio[i]:.2f}, point {i})" for i in order))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, action="append", default=[],
                    help="a directory of labelled runs with labels.json (repeatable)")
    ap.add_argument("--real", type=Path, default=None, help="the shared real_logs directory")
    args = ap.parse_args(argv)
    config = Config()
    if args.bench:
        report_labelled(labelled_points(args.bench, config), config.z_threshold)
    if args.real is not None:
        report_real(args.real, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
