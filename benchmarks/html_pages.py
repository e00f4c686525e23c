"""Size and load time of the HTML report for the two pages the report is sized against:
a 1,000,000-step run (loss, LR, grad norm, loss scale and skip flag, one spike) and a
10-run page (10 runs of 100,000 steps, a spike recurring in all of them). Each page is
loaded in headless Chromium through the DevTools protocol; the page writes the
milliseconds from navigation start to its plots being drawn into `<body data-ready-ms>`
and, for the full-resolution series it carries, the time they were decoded into
`data-full-ms` on the plot. Medians of `--repeat` fresh browser profiles.

    python benchmarks/html_pages.py [--repeat 3] [--keep DIR]

Needs Debian's `chromium`, and `aiohttp` for the DevTools websocket (a dev-only
dependency: it comes with the test extras; nothing in spikelens imports it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikelens.model import (  # noqa: E402
    Event,
    Finding,
    Recurrence,
    Report,
    Run,
    RunReport,
    Size,
    StepInfo,
)
from spikelens.readers._base import RawLog, build_run  # noqa: E402
from spikelens.report import render  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-port=0", "--window-size=1400,1000"]


def million_step_page() -> str:
    n = 1_000_000
    rng = np.random.default_rng(3)
    steps = np.arange(n, dtype=np.int64)
    loss = 2.0 + 0.05 * rng.standard_normal(n)
    loss[777_777] = 6.0
    grad = 1.0 + 0.1 * rng.standard_normal(n)
    frame = pd.DataFrame({"step": steps, "loss": loss, "lr": np.full(n, 1e-4),
                          "grad_norm": grad, "loss_scale": np.full(n, 65536.0),
                          "skipped": (rng.random(n) < 1e-4).astype(float)})
    run = build_run(RawLog(frame=frame), Path("big.csv"), "csv")
    ev = Event("spike", "loss", 777_777, 777_777, 777_778, True, Size(40.0, 3.0))
    rr = RunReport("big.csv", "csv", "spiky", StepInfo(0, n - 1, n, 1), dict(run.roles),
                   (Finding(ev),), ())
    return render(Report(runs=(rr,)), [run], "html")


def baseline_page() -> str:
    """A page with no plot: what plotly.js itself costs to load (4.8 MB inline)."""
    rr = RunReport("none.csv", "csv", "healthy", StepInfo(0, 0, 1, 1), {}, (), ())
    return render(Report(runs=(rr,)), [], "html")


def ten_run_page() -> str:
    n = 100_000
    runs: list[Run] = []
    reports: list[RunReport] = []
    for k in range(10):
        rng = np.random.default_rng(100 + k)
        steps = np.arange(n, dtype=np.int64)
        loss = 2.0 + 8.0 * np.exp(-steps / 2000) + 0.05 * rng.standard_normal(n)
        loss[41_000] *= 2.5
        frame = pd.DataFrame({"step": steps, "loss": loss,
                              "lr": np.minimum(1.0, (steps + 1) / 2000) * 3e-4,
                              "grad_norm": 1.0 + 0.1 * rng.standard_normal(n)})
        run = build_run(RawLog(frame=frame), Path(f"/runs/sweep/seed{k}/train.csv"), "csv")
        ev = Event("spike", "loss", 41_000, 41_000, 41_001, True, Size(40.0, 2.5))
        runs.append(run)
        reports.append(RunReport(run.source, "csv", "spiky", StepInfo(0, n - 1, n, 1),
                                 dict(run.roles), (Finding(ev),), ()))
    rec = Recurrence("step", 41_000.0, tuple((r.source, 41_000) for r in runs))
    return render(Report(runs=tuple(reports), recurrences=(rec,)), runs, "html")


async def _load(page: Path, profile: Path, expect_full: int = 0,
                timeout: float = 120.0) -> dict[str, Any]:
    import aiohttp

    chromium = next(p for p in map(shutil.which, ("chromium", "chromium-browser")) if p)
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError("chromium exited before its DevTools endpoint was up")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(url, max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    i = next(ids)
                    await ws.send_str(json.dumps({"id": i, "method": method,
                                                  "params": params}))
                    while True:
                        msg = json.loads((await ws.receive()).data)
                        if msg.get("id") == i:
                            return dict(msg.get("result", {}))

                await call("Page.navigate", url=page.as_uri())
                probe = ("JSON.stringify({ready: document.body && document.body.getAttribute("
                         "'data-ready-ms'), full: Array.prototype.map.call(document."
                         "querySelectorAll('[data-full-ms]'), function (e) { return Number("
                         "e.getAttribute('data-full-ms')); }), errors: document.body && "
                         "document.body.getAttribute('data-plot-error')})")
                start = time.monotonic()
                while time.monotonic() - start < timeout:
                    res = await call("Runtime.evaluate", expression=probe, returnByValue=True)
                    state = dict(json.loads(res["result"]["value"]))
                    # ready; and, on a page that carries full-resolution series, decoded
                    if state["ready"] is not None and len(state["full"]) >= expect_full:
                        return state
                    await asyncio.sleep(0.05)
                raise RuntimeError(f"{page.name}: not ready after {timeout} s")
    finally:
        # the browser and the renderer and GPU processes it started (its own group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def measure(name: str, html: str, repeat: int, folder: Path, expect_full: int
            ) -> dict[str, Any]:
    page = folder / f"{name.replace(' ', '-').replace('.', '')}.html"
    page.write_text(html, encoding="utf-8")
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
            runs.append(asyncio.run(_load(page, Path(profile), expect_full)))
        assert runs[-1]["errors"] is None, runs[-1]["errors"]
    ready = statistics.median(float(r["ready"]) for r in runs)
    full = [max(r["full"]) for r in runs if r["full"]]
    return {"page": name, "mb": page.stat().st_size / 1e6, "ready_ms": ready,
            "full_ms": statistics.median(full) if full else None,
            "all_ready_ms": [float(r["ready"]) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the pages in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        # the 1M-step page decodes its full loss after drawing; the 10-run page's runs are
        # folded, so nothing is decoded until one is opened
        for name, build, expect in (("plotly.js only", baseline_page, 0),
                                    ("1M-steps", million_step_page, 1),
                                    ("10-runs", ten_run_page, 0)):
            t = time.perf_counter()
            html = build()
            render_s = time.perf_counter() - t
            r = measure(name, html, args.repeat, folder, expect)
            full = f"{r['full_ms'] / 1000:.2f} s" if r["full_ms"] is not None else "-"
            print(f"{name}: {r['mb']:.2f} MB, rendered in {render_s:.1f} s (incl. the data), "
                  f"plots drawn {r['ready_ms'] / 1000:.2f} s after navigation (median of "
                  f"{args.repeat}: {', '.join(f'{v / 1000:.2f}' for v in r['all_ready_ms'])}),"
                  f" full-resolution series decoded at {full}")


if __name__ == "__main__":
    main()
