"""`spikelens watch` end to end: a writer process appends to a log (JSONL; a TensorBoard
directory gaining event files; a W&B run) while `watch` runs in its own process; a local HTTP
server on 127.0.0.1 receives the webhooks. Each incident must be reported once, at the right
step, within two polling intervals of the point that confirms it being written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

INTERVAL = 0.5

#: the writer: a smooth loss, a 3x one-step spike at step 150 and a NaN loss at step 250
_JSONL_WRITER = r'''
import json, math, sys, time
path, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(path, "a") as f:
    for s in range(n):
        loss = 2.0 + 3.0 * math.exp(-s / 80) + 0.01 * math.sin(1.3 * s)
        if s == 150:
            loss *= 3
        if s == 250:
            loss = float("nan")
        f.write(json.dumps({"step": s, "loss": loss, "lr": 1e-3}) + "\n")
        f.flush()
        print(f"{time.time():.4f} {s}", flush=True)
        time.sleep(1 / rate)
'''


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/abc", _Hook.received
    server.shutdown()
    server.server_close()


_LIVE: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    yield
    while _LIVE:
        p = _LIVE.pop()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


class _Proc:
    """A process whose stdout lines are collected with the time each arrived."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        _LIVE.append(self.p)
        self.lines: list[tuple[float, str]] = []
        self.err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def _pump_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.err.append(line)

    def wait_for_err(self, text: str, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(text in e for e in self.err):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} on stderr: {self.err}")


def _watch(args: list[str]) -> _Proc:
    w = _Proc([sys.executable, "-m", "spikelens", "watch", *args, "--interval", str(INTERVAL)])
    w.wait_for_err("watching")
    time.sleep(2 * INTERVAL)  # the first polls (and imports) are done before writing starts
    return w


def _stop(w: _Proc) -> int:
    w.p.send_signal(signal.SIGINT)
    code = w.p.wait(timeout=30)
    time.sleep(0.1)
    return code


def _written_at(writer: _Proc) -> dict[int, float]:
    out = {}
    for _, line in writer.lines:
        t, s = line.split()
        out[int(s)] = float(t)
    return out


def _incidents(w: _Proc) -> list[tuple[float, str]]:
    return [(t, line) for t, line in w.lines if re.match(r"\[\d\d:\d\d:\d\d\] ", line)]


def _confirmed(line: str) -> int:
    m = re.search(r"confirmed at step (\d+)", line)
    assert m, line
    return int(m.group(1))


def test_jsonl_incidents_once_at_the_right_step_on_time(
        tmp_path: Path, hook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = hook
    log = tmp_path / "train.jsonl"
    w = _watch([str(log), "--webhook", url])  # the log does not exist yet
    writer = _Proc([sys.executable, "-c", _JSONL_WRITER, str(log), "320", "60"])
    assert writer.p.wait(timeout=60) == 0
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0  # Ctrl-C ends cleanly
    written = _written_at(writer)
    inc = _incidents(w)
    kinds = [re.match(r"\[.{8}\] (\w+):", line).group(1) for _, line in inc]  # type: ignore[union-attr]
    assert kinds == ["spike", "nonfinite"], [line for _, line in inc]
    (t_spike, spike), (t_nan, nan) = inc
    assert "spike at step 150" in spike
    # the spike is decided when the loss has been back in band for 10 points: 151..160
    assert _confirmed(spike) == 160 and "back in its band for 10 logged points" in spike
    assert "non-finite loss at step 250" in nan and _confirmed(nan) == 250
    for t, line in inc:
        lag = t - written[_confirmed(line)]
        assert lag <= 2 * INTERVAL, f"{lag:.2f} s after the confirming point: {line}"
    summary = w.lines[-1][1]
    assert summary.startswith("watched 1 log(s)") and "320 rows read" in summary
    assert "spike at 150" in summary and "nonfinite at 250" in summary
    # one webhook per incident: Slack/Mattermost text plus the structured event
    assert [r["kind"] for r in received] == ["spike", "nonfinite"]
    assert received[0]["text"].startswith("spikelens: ") and "step 150" in received[0]["text"]
    assert received[0]["event"]["peak_step"] == 150 and received[0]["confirmed_step"] == 160
    assert received[1]["event"]["size"]["z"] == "inf"  # JSON has no infinity


def test_fail_on_exits_1_when_the_incident_is_confirmed(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    w = _watch([str(log), "--fail-on", "nonfinite"])
    writer = _Proc([sys.executable, "-c", _JSONL_WRITER, str(log), "400", "80"])
    code = w.p.wait(timeout=60)
    assert code == 1
    written = _written_at(writer)
    assert max(written) < 399  # it stopped while the run was still writing
    inc = _incidents(w)
    assert [("nonfinite" in line) for _, line in inc] == [False, True]  # the spike, then NaN
    writer.p.kill()


def test_csv_header_kept_and_truncation_reread(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    rows = [f"{s},{2.0 + 0.001 * (s % 5) + (4.0 if s == 120 else 0.0)}\n" for s in range(200)]
    log.write_text("step,train_loss\n" + "".join(rows[:100]))
    w = _watch([str(log)])
    with log.open("a") as f:
        for r in rows[100:]:
            f.write(r)
            f.flush()
            time.sleep(0.005)
    time.sleep(3 * INTERVAL)
    log.write_text("step,train_loss\n" + "".join(rows[:50]))  # the job restarted the file
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0
    inc = _incidents(w)
    assert len(inc) == 1 and "spike at step 120" in inc[0][1]
    assert any("truncated; reading it again from the start" in e for e in w.err)


def test_warnings_name_the_log_and_its_lines_not_the_piece(tmp_path: Path) -> None:
    # each appended piece is read on its own: its warnings must still name the log (not the
    # watch's temporary copy) and the log's lines (not the piece's), and a cell that is not
    # a number is said there, even in a piece whose loss cells are all odd
    log = tmp_path / "metrics.csv"
    rows = [f"{s},{2.0 + 0.001 * (s % 5)}\n" for s in range(1, 200)]
    rows[9] = "10,abc\n"  # line 11
    log.write_text("step,train_loss\n" + "".join(rows[:150]))
    w = _watch([str(log)])
    with log.open("a") as f:  # one write: one piece, whatever the poll's timing
        f.write("".join(rows[150:])  # lines 152-200
                + "".join(f"{s},xyz\n" for s in range(200, 205))  # lines 201-205
                + "205,1,2,3\n"  # line 206, one field too many
                + "206,2.0\n")
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0
    warned = [e.rstrip("\n") for e in w.err if e.startswith("warning: ")]
    assert warned == [
        f"warning: {log}: 1 value(s) of column 'train_loss' are not numbers (first 'abc'), "
        "read as missing (line 11)",
        f"warning: {log}: skipped 1 malformed row(s) (line 206)",
        f"warning: {log}: 5 value(s) of column 'train_loss' are not numbers (first 'xyz'), "
        "read as missing (lines 201, 202, 203, ...)",
    ]


_TB_WRITER = r'''
import math, sys, time
from pathlib import Path
from spikelens.readers._tfrecord import write_scalar_events
d, rate = Path(sys.argv[1]), float(sys.argv[2])
tmp = d.parent / "piece"
def append(path, step, loss, first):
    write_scalar_events(tmp, [(step, "train/loss", loss, 1.7e9 + step),
                              (step, "train/lr", 1e-3, 1.7e9 + step)], file_version=first,
                        start_time=1.7e9 + step)
    with open(path, "ab") as f:
        f.write(tmp.read_bytes())
for s in range(400):
    # a resumed job: from step 200 on, a new event file in the same directory
    path = d / ("events.out.tfevents.1700000000.host.1.0" if s < 200
                else "events.out.tfevents.1700000500.host.2.0")
    loss = 2.0 + 2.0 * math.exp(-s / 60) + 0.01 * math.cos(s)
    if s == 300:
        loss *= 2.5
    append(path, s, loss, s in (0, 200))
    print(f"{time.time():.4f} {s}", flush=True)
    time.sleep(1 / rate)
'''


def test_tensorboard_directory_gaining_event_files(tmp_path: Path) -> None:
    d = tmp_path / "tb"
    d.mkdir()
    w = _watch([str(d)])  # an empty run directory: waits for event files
    writer = _Proc([sys.executable, "-c", _TB_WRITER, str(d), "80"])
    assert writer.p.wait(timeout=60) == 0, writer.err
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0
    written = _written_at(writer)
    inc = _incidents(w)
    assert len(inc) == 1, [line for _, line in inc]
    t, line = inc[0]
    assert "spike at step 300" in line and _confirmed(line) == 310
    assert t - written[310] <= 2 * INTERVAL
    assert "400 rows read" in w.lines[-1][1]


def test_wandb_run_being_written(tmp_path: Path) -> None:
    from spikelens.readers.wandb_run import LogWriter, history_record, run_record

    run_dir = tmp_path / "wandb" / "offline-run-20240101_000000-abc123"
    run_dir.mkdir(parents=True)
    path = run_dir / "run-abc123.wandb"
    lw = LogWriter(path)
    lw.write(run_record(1, "abc123", "live", {"max_grad_norm": 1.0}))
    pad = {f"extra/metric_{i:02d}": 0.5 for i in range(40)}  # records cross block edges
    for s in range(100):
        lw.write(history_record(s + 2, s, {"train/loss": 2.0 + 0.001 * (s % 3), **pad}))
    w = _watch([str(run_dir)])
    t_conf = 0.0
    for s in range(100, 220):
        loss = 2.0 + 0.001 * (s % 3) + (5.0 if s == 150 else 0.0)
        lw.write(history_record(s + 2, s, {"train/loss": loss, **pad}))
        if s == 160:
            t_conf = time.time()
        time.sleep(0.01)
    lw.close()
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0
    inc = _incidents(w)
    assert len(inc) == 1 and "spike at step 150" in inc[0][1] and "[live]" in inc[0][1]
    assert _confirmed(inc[0][1]) == 160 and inc[0][0] - t_conf <= 2 * INTERVAL
    assert "220 rows read" in w.lines[-1][1]


_WANDB_LIVE = r'''
import os, sys, time
import wandb
go = sys.argv[1]
run = wandb.init(project="spikelens-watch", name="live-real", config={"max_grad_norm": 1.0})
for s in range(200):
    while s == 50 and not os.path.exists(go):  # the watcher is up before the spike
        time.sleep(0.05)
    wandb.log({"train/loss": 2.0 + 0.001 * (s % 3) + (5.0 if s == 120 else 0.0)}, step=s)
    time.sleep(0.03)
run.finish()
'''


def test_real_wandb_offline_run_while_it_logs(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="the wandb package (dev extra) is not installed")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", _WANDB_LIVE, str(go)], env=env)
    _LIVE.append(writer)
    end = time.time() + 60
    while not list((tmp_path / "wandb").glob("offline-run-*/*.wandb")):
        assert time.time() < end and writer.poll() is None, "wandb did not start a run"
        time.sleep(0.1)
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    w = _watch([str(run_dir)])
    go.touch()
    assert writer.wait(timeout=120) == 0
    time.sleep(3 * INTERVAL)
    assert _stop(w) == 0
    inc = _incidents(w)
    # wandb-core flushes its log on its own schedule, so only the step is checked here
    assert len(inc) == 1 and "spike at step 120" in inc[0][1] and "[live-real]" in inc[0][1]
    assert _confirmed(inc[0][1]) == 130
    assert "200 rows read" in w.lines[-1][1]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spikelens.cli import app

    res = CliRunner().invoke(app, ["watch", str(tmp_path / "x.jsonl"), "--interval", "0"])
    assert res.exit_code == 2 and res.stderr == "Error: --interval must be > 0 seconds, got 0.0\n"
    db = ROOT / "sample_logs" / "mlflow" / "mlflow.db"
    res = CliRunner().invoke(app, ["watch", str(db)])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"Error: {db}: cannot follow a mlflow log while it grows")
    assert "Traceback" not in res.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_end_watching_with_the_summary_even_if_sigint_was_ignored(
        tmp_path: Path, sig: signal.Signals) -> None:
    # a watch started as a background job of a script (`spikelens watch .. &`, a nohup'd CI
    # step) inherits SIGINT ignored: kill -INT must still end it, and SIGTERM (a CI runner
    # cancelling the job) must end it with the summary, not kill it mid-line
    log = tmp_path / "metrics.csv"
    log.write_text("step,train_loss\n" + "".join(f"{s},{2.0 + 0.001 * (s % 5)}\n"
                                                 for s in range(1, 60)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "spikelens", "watch", str(log), "--interval", str(INTERVAL)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _LIVE.append(p)
    assert p.stderr is not None
    assert "watching" in p.stderr.readline()
    time.sleep(3 * INTERVAL)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert out.splitlines()[-1].startswith("watched 1 log(s)") and "59 rows read" in out
