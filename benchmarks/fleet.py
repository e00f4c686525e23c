"""Fleet benchmark (issue 12 "Whole sweeps and fleets"): many runs analysed by the `spikelens`
command in a fresh process, as a user runs it, against the issue's targets:

| work | target |
|---|---|
| N runs x S steps (JSONL, local disk), cold, `--jobs 2` | <= 60 s, peak memory <= 1 GB |
| the same, warm (cached) | <= 5 s |
| the same runs gzip-compressed | <= 75 s |
| 200 of them on a moto S3 server | <= 1.5x the local time for those 200 |
| 10 runs on a LocalCluster vs local | same results; time within 1.5x |

(the issue's N is 1,000 and S 20,000). The sweep is generated once into
`benchmarks/_data/fleet-<N>x<S>-v1/` (one folder per run, `run-0042/metrics.jsonl`, and a
gzip copy): each run has its own seed, a power-law loss with log-normal noise, a cosine LR,
grad norm and consumed tokens, and 30 % of the runs read three bad batches at the same
tokens. Every measurement runs the CLI in a child process; wall time is the median over
`--repeats`, peak memory is the largest sum of the resident sizes of the command and all its
descendant processes (the pool workers), sampled every 50 ms: a sum that counts pages shared
between the parent and the forked workers once per process, so it overstates the real peak.
Cold runs use a fresh empty cache directory, warm runs the one the cold run filled. The
machine is shared: the load average is printed with the results.

Usage: `python benchmarks/fleet.py [--runs 1000] [--steps 20000] [--repeats 3]
[--only cold,warm,gzip,s3,dask] [--json]`."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GEN_VERSION = 1
TOKENS_PER_STEP = 512 * 2048
BAD_FRACTION = 0.3


def generate(root: Path, runs: int, steps: int) -> tuple[Path, Path]:
    """The plain and gzip sweeps (cached; written under a temporary name first)."""
    plain, gz = root / "jsonl", root / "gzip"
    if (root / "done").exists():
        return plain, gz
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(12)
    bad_steps = np.sort(rng.choice(np.arange(steps // 10, steps), 3, replace=False))
    s = np.arange(1, steps + 1)
    fmt = ('{"step": %d, "loss": %.6f, "lr": %.6g, "grad_norm": %.5f, '
           '"consumed_tokens": %d}')
    for i in range(runs):
        r = np.random.default_rng(1000 + i)
        loss = (4.0 * s ** -0.12 + 1.2) * np.exp(0.012 * r.standard_normal(steps))
        if r.random() < BAD_FRACTION:
            loss[bad_steps - 1] *= r.uniform(1.8, 3.0, len(bad_steps))
        lr = 3e-4 * 0.5 * (1 + np.cos(np.pi * s / steps))
        gn = np.exp(r.normal(0, 0.3, steps))
        table = np.column_stack([s, loss, lr, gn, s * TOKENS_PER_STEP])
        lines = "\n".join(fmt % tuple(row) for row in table.tolist()) + "\n"
        data = lines.encode()
        for base, payload, name in ((tmp / "jsonl", data, "metrics.jsonl"),
                                    (tmp / "gzip", None, "metrics.jsonl.gz")):
            d = base / f"run-{i:04d}"
            d.mkdir(parents=True, exist_ok=True)
            if payload is None:
                (d / name).write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
            else:
                (d / name).write_bytes(payload)
        if (i + 1) % 100 == 0:
            print(f"  generated {i + 1}/{runs} runs", file=sys.stderr)
    (tmp / "done").write_text(json.dumps({"runs": runs, "steps": steps,
                                          "bad_steps": bad_steps.tolist()}))
    tmp.rename(root)
    return plain, gz


def _tree_rss(proc: Any, cpu_of: dict[int, float]) -> int:
    """Resident size of `proc` and its descendants; their CPU times go into `cpu_of`."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu_of[p.pid] = max(cpu_of.get(p.pid, 0.0), t.user + t.system)
        except psutil.Error:
            continue
    return total


def run_cli(args: Sequence[str], env: dict[str, str] | None = None
            ) -> tuple[float, int, str, float]:
    """(wall seconds, peak tree RSS in bytes, stdout, CPU seconds) of `python -m spikelens
    ARGS`. The CPU time is user + system of the command and every descendant, sampled with
    the memory (the pool's workers are the forkserver's children, not the command's, so
    RUSAGE_CHILDREN misses them): on a shared machine it is the figure the load inflates
    least, and CPU / jobs approximates the wall time on an idle machine."""
    import psutil

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "spikelens", *args], env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(p.pid)
    peak = 0
    cpu_of: dict[int, float] = {}
    while p.poll() is None:
        peak = max(peak, _tree_rss(ps, cpu_of))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = p.communicate()
    cpu = sum(cpu_of.values())
    if p.returncode != 0:
        raise SystemExit(f"spikelens {' '.join(args)} failed ({p.returncode}): "
                         f"{err.decode()[-2000:]}")
    return wall, peak, out.decode(), cpu


def median_of(fn: Any, repeats: int) -> dict[str, Any]:
    walls, peaks, cpus = [], [], []
    for _ in range(repeats):
        wall, peak, cpu = fn()
        walls.append(wall)
        peaks.append(peak)
        cpus.append(cpu)
    return {"seconds": statistics.median(walls), "all": [round(w, 2) for w in walls],
            "peak_mb": max(peaks) / 1e6, "cpu_seconds": statistics.median(cpus),
            "load": os.getloadavg()[0]}


def bench_local(sweep: Path, repeats: int, work: Path, jobs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    out = work / "report.json"

    def cold() -> tuple[float, int, float]:
        cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
        wall, peak, _, cpu = run_cli([ "analyze", str(sweep), "--jobs", str(jobs), "--format",
                                 "json", "--output", str(out), "--cache-dir", str(cache)])
        cold.last_cache = cache  # type: ignore[attr-defined]
        return wall, peak, cpu

    results["cold"] = median_of(cold, repeats)
    cache = cold.last_cache  # type: ignore[attr-defined]

    def warm() -> tuple[float, int, float]:
        wall, peak, _, cpu = run_cli(["analyze", str(sweep), "--jobs", str(jobs), "--format",
                                 "json", "--output", str(out), "--cache-dir", str(cache)])
        return wall, peak, cpu

    results["warm"] = median_of(warm, repeats)
    doc = json.loads(out.read_text())
    results["runs"] = len(doc["runs"])
    results["verdicts"] = {v: sum(1 for r in doc["runs"] if r["verdict"] == v)
                           for v in sorted({r["verdict"] for r in doc["runs"]})}
    results["recurrences"] = len(doc["recurrences"])
    return results


def bench_gzip(sweep: Path, repeats: int, work: Path, jobs: int) -> dict[str, Any]:
    def cold() -> tuple[float, int, float]:
        wall, peak, _, cpu = run_cli(["analyze", str(sweep), "--jobs", str(jobs), "--format",
                                 "json", "--output", str(work / "gz.json"), "--no-cache"])
        return wall, peak, cpu

    return {"cold": median_of(cold, repeats)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_s3(sweep: Path, n: int, repeats: int, work: Path, jobs: int) -> dict[str, Any]:
    """The first `n` runs uploaded to a moto S3 server on 127.0.0.1, analysed through
    s3:// and, for comparison, from local disk."""
    import s3fs

    subset = work / "s3-subset"
    shutil.rmtree(subset, ignore_errors=True)
    for d in sorted(sweep.iterdir())[:n]:
        shutil.copytree(d, subset / d.name)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        old = dict(os.environ)
        os.environ.update(env)
        try:
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench")
            fs.put(str(subset), "bench/", recursive=True)
        finally:
            os.environ.clear()
            os.environ.update(old)
        url = f"s3://bench/{subset.name}/"

        def remote() -> tuple[float, int, float]:
            wall, peak, _, cpu = run_cli(["analyze", url, "--jobs", str(jobs), "--format", "json",
                                     "--output", str(work / "s3.json"), "--no-cache"], env)
            return wall, peak, cpu

        def local() -> tuple[float, int, float]:
            wall, peak, _, cpu = run_cli(["analyze", str(subset), "--jobs", str(jobs), "--format",
                                     "json", "--output", str(work / "s3-local.json"),
                                     "--no-cache"])
            return wall, peak, cpu

        res = {"runs": n, "s3": median_of(remote, repeats), "local": median_of(local, repeats)}
        a = json.loads((work / "s3.json").read_text().replace(url.rstrip("/"), "<root>"))
        b = json.loads((work / "s3-local.json").read_text().replace(str(subset), "<root>"))
        res["same_results"] = a == b
        res["ratio"] = res["s3"]["seconds"] / res["local"]["seconds"]
        return res
    finally:
        server.terminate()
        server.wait(10)


def bench_dask(sweep: Path, repeats: int, work: Path) -> dict[str, Any]:
    """10 runs on a LocalCluster of 2 worker processes vs the local pool of 2."""
    import distributed

    subset = [str(d / "metrics.jsonl") for d in sorted(sweep.iterdir())[:10]]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        addr = str(cluster.scheduler_address)

        def on_dask() -> tuple[float, int, float]:
            wall, peak, _, cpu = run_cli(["analyze", *subset, "--dask", addr, "--format", "json",
                                     "--output", str(work / "dask.json"), "--no-cache"])
            return wall, peak, cpu

        def local() -> tuple[float, int, float]:
            wall, peak, _, cpu = run_cli(["analyze", *subset, "--jobs", "2", "--format", "json",
                                     "--output", str(work / "dask-local.json"), "--no-cache"])
            return wall, peak, cpu

        res = {"dask": median_of(on_dask, repeats), "local": median_of(local, repeats)}
    res["same_results"] = (work / "dask.json").read_text() == \
        (work / "dask-local.json").read_text()
    res["ratio"] = res["dask"]["seconds"] / res["local"]["seconds"]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--s3-runs", type=int, default=200)
    ap.add_argument("--only", default="cold,gzip,s3,dask",
                    help="comma list of cold (includes warm), gzip, s3, dask")
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "_data")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    root = args.data / f"fleet-{args.runs}x{args.steps}-v{GEN_VERSION}"
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plain, gz = generate(root, args.runs, args.steps)
    print(f"sweep ready in {time.perf_counter() - t0:.0f} s: {root}", file=sys.stderr)
    results: dict[str, Any] = {"runs": args.runs, "steps": args.steps, "jobs": args.jobs,
                               "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="spikelens-fleet-bench-") as w:
        work = Path(w)
        if "cold" in only:
            results["local"] = bench_local(plain, args.repeats, work, args.jobs)
            print(json.dumps(results["local"]), file=sys.stderr)
        if "gzip" in only:
            results["gzip"] = bench_gzip(gz, args.repeats, work, args.jobs)
            print(json.dumps(results["gzip"]), file=sys.stderr)
        if "s3" in only:
            results["s3"] = bench_s3(plain, min(args.s3_runs, args.runs), args.repeats, work,
                                     args.jobs)
            print(json.dumps(results["s3"]), file=sys.stderr)
        if "dask" in only:
            results["dask"] = bench_dask(plain, args.repeats, work)
            print(json.dumps(results["dask"]), file=sys.stderr)
    results["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _table(results)
    return 0


def _table(r: dict[str, Any]) -> None:
    n, s = r["runs"], r["steps"]
    print(f"{n} runs x {s:,} steps, --jobs {r['jobs']}, {r['cpus']} CPUs, "
          f"load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}")
    print("| work | median wall | CPU (all processes) | peak memory | target |")
    print("|---|---|---|---|---|")
    if "local" in r:
        c, w = r["local"]["cold"], r["local"]["warm"]
        print(f"| cold | {c['seconds']:.1f} s {c['all']} | {c['cpu_seconds']:.0f} s | "
              f"{c['peak_mb']:.0f} MB | <= 60 s, <= 1 GB |")
        print(f"| warm | {w['seconds']:.1f} s {w['all']} | {w['cpu_seconds']:.1f} s | "
              f"{w['peak_mb']:.0f} MB | <= 5 s |")
    if "gzip" in r:
        g = r["gzip"]["cold"]
        print(f"| gzip cold | {g['seconds']:.1f} s {g['all']} | {g['cpu_seconds']:.0f} s | "
              f"{g['peak_mb']:.0f} MB | <= 75 s |")
    if "s3" in r:
        x = r["s3"]
        print(f"| {x['runs']} runs on moto S3 | {x['s3']['seconds']:.1f} s vs local "
              f"{x['local']['seconds']:.1f} s = {x['ratio']:.2f}x (same results: "
              f"{x['same_results']}) | {x['s3']['peak_mb']:.0f} MB | <= 1.5x |")
    if "dask" in r:
        x = r["dask"]
        print(f"| 10 runs on LocalCluster | {x['dask']['seconds']:.1f} s vs local "
              f"{x['local']['seconds']:.1f} s = {x['ratio']:.2f}x (same results: "
              f"{x['same_results']}) | | <= 1.5x |")


if __name__ == "__main__":
    raise SystemExit(main())
