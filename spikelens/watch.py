"""`spikelens watch`: the same diagnosis while the run is alive. Each followed log is read
incrementally: a text log (JSONL, CSV, Megatron, generic text) from the byte offset reached at
the last poll, up to its last complete line; a TensorBoard directory file by file, up to the
last complete record, picking up event files as they appear; a W&B run's `.wandb` log up to
the last complete record. A file that shrinks or is replaced (a new inode: log rotation) is
noticed and read again from its start. Only the new bytes go through the format's reader (a
CSV's header line is kept and put in front of each new piece), and the rows are kept in
memory as a trailing table long enough for the detector's baseline plus the longest
confirmation (`tail_points`); the shared `build_run` and the detector (`spikelens.detect`)
then run on that tail, not on the whole log. The first rows read from a log (what it held
when watching started) are analysed once, in full.

An incident is reported once, when the detector can first decide it, and the message says
what the decision waited for:

* a **non-finite** loss at once (delay 0: a NaN is a NaN);
* a **spike** when the loss has been back inside its pre-event band for `recover_run` logged
  points (10 by default), because until then it cannot be told from a rise that stays;
* a **divergence** when the rise has held for `divergence_steps` training steps (200 by
  default) without coming back.

Events are keyed by their peak step (the first non-finite step), so a spike is never
reported twice as the tail slides, and one that starts less than a baseline window into the
tail (where the detector has no baseline for it) is left to the polls that saw its start.
Each incident is printed, POSTed to `--webhook` as JSON (a `text` field for Slack and
Mattermost incoming webhooks, plus the structured event), and makes `watch` exit 1 when its
kind is in `--fail-on`. Ctrl-C (SIGINT) ends watching with a summary."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from spikelens.errors import ConfigError, SpikelensError
from spikelens.model import INCIDENT_KINDS, Config, Event, Run

#: formats followed line by line; the CSV ones need their header in front of each piece
LINE_FORMATS = ("jsonl", "csv", "wandb_csv", "text", "megatron")
_HEADER_FORMATS = ("csv", "wandb_csv")
#: formats small enough to be read again whole when they change
WHOLE_FORMATS = ("hf_trainer_state",)


def tail_points(cfg: Config, interval: int = 1) -> int:
    """Logged points kept for detection: two baseline windows before an event, the longest
    sustained-rise test, a divergence (in points) and a recovery run, with room to spare."""
    div_points = -(-cfg.divergence_steps // max(1, interval))
    # the isolated-outlier noise and the shift test's autocorrelation floor read up to
    # LONG_NOISE_WINDOWS windows of the log (docs/detection.md, sixth pass)
    from spikelens.detect.spikes import LONG_NOISE_WINDOWS

    return max(2 * cfg.window, (LONG_NOISE_WINDOWS + 1) * cfg.window) + max(cfg.shift_windows) \
        + div_points + 3 * cfg.recover_run + 64


@dataclass(frozen=True)
class Incident:
    """One reported incident and when it could be decided."""

    source: str
    run: str | None
    event: Event
    confirmed_step: int  # the logged step whose arrival decided it
    delay_points: int  # logged points from the peak to that step
    rule: str  # what the decision waited for, in words
    top_cause: str | None = None
    before_watch: bool = False  # already in the log when watching started

    def text(self) -> str:
        e = self.event
        where = f"{self.source}" + (f" [{self.run}]" if self.run else "")
        if e.kind == "nonfinite":
            what = f"non-finite loss at step {e.anchor_step}" + (
                f" (after a climb from step {e.start_step})" if e.diverged else "")
        elif e.kind == "divergence":
            what = (f"divergence from step {e.start_step} (peak {e.peak_step}, "
                    f"{e.size.ratio:.3g}x its {e.baseline:.4g} baseline)"
                    if e.baseline is not None else f"divergence from step {e.start_step}")
        else:
            what = (f"spike at step {e.peak_step} ({e.size.ratio:.3g}x its "
                    f"{e.baseline:.4g} baseline, z {e.size.z:.3g}; steps {e.start_step}-"
                    f"{e.end_step})" if e.baseline is not None
                    else f"spike at step {e.peak_step}")
        cause = f"; likely {self.top_cause}" if self.top_cause else ""
        when = ("already in the log when watching started" if self.before_watch else
                f"confirmed at step {self.confirmed_step}, {self.delay_points} logged "
                f"point(s) after the peak: {self.rule}")
        return f"{where}: {what}{cause} — {when}"

    def payload(self) -> dict[str, Any]:
        return {
            "text": f"spikelens: {self.text()}",
            "source": self.source,
            "run": self.run,
            "kind": self.event.kind,
            "event": dataclasses.asdict(self.event),
            "confirmed_step": self.confirmed_step,
            "delay_points": self.delay_points,
            "rule": self.rule,
            "top_cause": self.top_cause,
            "before_watch": self.before_watch,
        }


# ---------------------------------------------------------------------------------------------
# followers: new bytes -> RawLog pieces


class _Follower:
    """Reads what was appended to one log since the last poll."""

    def __init__(self, path: Path, fmt: str, workdir: Path) -> None:
        self.path = path
        self.fmt = fmt
        self.workdir = workdir
        self.notices: list[str] = []

    def poll(self) -> list[Any]:  # list[RawLog]
        raise NotImplementedError

    def _parse(self, name: str, data: bytes, fmt: str | None = None,
               shift: int = 0, header: bool = False) -> list[Any]:
        """The RawLogs of one piece, read from a temporary copy. Their warnings name the log,
        not the copy, and its lines: line k of the piece is line k + `shift` of the log
        (a piece starts where the last one ended), except a `header` line 1 put in front of
        it, which is the log's line 1."""
        from spikelens.readers import READERS

        tmp = self.workdir / name
        tmp.write_bytes(data)
        try:
            raws = list(READERS.get(fmt or self.fmt).read(tmp))
            return [self._own(raw, str(tmp), shift, header) for raw in raws]
        except SpikelensError as exc:
            msg = str(exc).replace(str(tmp), str(self.path))
            # a piece with no metric row in it (log text between two rows) is not an error
            if "no step column" not in msg and "no records" not in msg \
                    and "no scalar" not in msg and "no data rows" not in msg:
                self.notices.append(msg)
            return []
        finally:
            tmp.unlink(missing_ok=True)

    def _own(self, raw: Any, tmp: str, shift: int, header: bool) -> Any:
        """`raw` as the log's: its warnings name the log and its lines, its rows their lines."""
        def line(k: int) -> int:
            return 1 if header and k == 1 else k + shift

        def relined(text: str) -> str:
            text = text.replace(tmp, str(self.path))
            if not shift:
                return text
            return _LINES_RE.sub(lambda m: m.group(1) + " " + ", ".join(
                str(line(int(x))) for x in m.group(2).split(", ")), text)

        row_lines = raw.row_lines
        if shift and raw.row_unit == "line":
            # a data row is never the header line
            piece = row_lines if row_lines is not None else np.arange(2, len(raw.frame) + 2)
            row_lines = np.asarray(piece, dtype=np.int64) + shift
        return dataclasses.replace(raw, warnings=[relined(w) for w in raw.warnings],
                                   row_lines=row_lines)


#: `line 7` / `lines 7, 9, 12` in a reader's warning (`readers._base.lines_note`)
_LINES_RE = re.compile(r"\b(lines?) (\d+(?:, \d+)*)")


class _FileState:
    def __init__(self) -> None:
        self.offset = 0
        self.inode: int | None = None

    def new_bytes(self, path: Path, notices: list[str], align: Callable[[bytes], int]
                  ) -> tuple[bytes, bool]:
        """(complete new data, whether the file was reset). `align` says how much of the new
        bytes is complete (up to the last newline, the last whole record)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return b"", False
        reset = False
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
            why = "replaced (rotated)" if st.st_ino != self.inode else "truncated"
            notices.append(f"{path}: file was {why}; reading it again from the start")
            self.offset = 0
            reset = True
        self.inode = st.st_ino
        if st.st_size <= self.offset:
            return b"", reset
        with open(path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(st.st_size - self.offset)
        n = align(data)
        self.offset += n
        return data[:n], reset


def _to_last_newline(data: bytes) -> int:
    return data.rfind(b"\n") + 1


class LineFollower(_Follower):
    """JSONL, CSV, Megatron and text logs: complete new lines."""

    def __init__(self, path: Path, fmt: str, workdir: Path) -> None:
        super().__init__(path, fmt, workdir)
        self.state = _FileState()
        self.header = b""
        self.lines_before = 0  # lines of the log before the next piece

    def poll(self) -> list[Any]:
        data, reset = self.state.new_bytes(self.path, self.notices, _to_last_newline)
        if reset:
            self.header = b""
            self.lines_before = 0
        if not data:
            return []
        before = self.lines_before
        self.lines_before += data.count(b"\n")
        if self.fmt in _HEADER_FORMATS and self.state.offset == len(data):
            # the first piece: its first line is the header every later piece needs
            self.header = data[:data.find(b"\n") + 1]
            return self._parse(self.path.name, data)
        if self.header:
            # the header in front is the piece's line 1: its line k is the log's before + k - 1
            return self._parse(self.path.name, self.header + data, shift=before - 1,
                               header=True)
        return self._parse(self.path.name, data, shift=before)


def _tf_complete(data: bytes) -> int:
    """Bytes of whole TFRecords at the start of `data` (the rest is still being written)."""
    pos, n = 0, len(data)
    while pos + 12 <= n:
        ln = int.from_bytes(data[pos:pos + 8], "little")
        if pos + 12 + ln + 4 > n:
            break
        pos += 12 + ln + 4
    return pos


class TensorBoardFollower(_Follower):
    """A TensorBoard run directory (or one event file): the new whole records of every event
    file, new files included."""

    def __init__(self, path: Path, fmt: str, workdir: Path) -> None:
        super().__init__(path, fmt, workdir)
        self.files: dict[Path, tuple[str, _FileState]] = {}

    def _list(self) -> list[tuple[str, Path]]:
        from spikelens.readers.tensorboard import _event_files

        if self.path.is_dir():
            return _event_files(self.path)
        return [("", self.path)] if self.path.exists() else []

    def poll(self) -> list[Any]:
        from spikelens.readers.tensorboard import _is_eval_dir

        out: list[Any] = []
        for sub, f in self._list():
            if f not in self.files:
                self.files[f] = (sub, _FileState())
            _, state = self.files[f]
            data, _ = state.new_bytes(f, self.notices, _tf_complete)
            if not data:
                continue
            for raw in self._parse(f.name, data):
                if sub:
                    raw.frame = raw.frame.rename(
                        columns={c: f"{sub}/{c}" for c in raw.frame.columns
                                 if c not in ("step", "wall_time")})
                    raw.nan_mask = {f"{sub}/{k}": v for k, v in raw.nan_mask.items()}
                    if _is_eval_dir(sub):
                        raw.eval_frame, raw.frame = raw.frame, raw.frame.iloc[0:0]
                out.append(raw)
        return out


class WandbFollower(_Follower):
    """A W&B run's `.wandb` transaction log: the new whole records (a record split across
    blocks waits for its last fragment)."""

    def __init__(self, path: Path, fmt: str, workdir: Path) -> None:
        super().__init__(path, fmt, workdir)
        self.state = _FileState()

    def _file(self) -> Path | None:
        if self.path.is_dir():
            from spikelens.readers.wandb_run import wandb_files

            files = wandb_files(self.path)
            return files[-1] if files else None
        return self.path if self.path.exists() else None

    def poll(self) -> list[Any]:
        from spikelens.readers.wandb_run import BLOCK, FILE_HEADER, Frames, decode_records

        f = self._file()
        if f is None:
            return []
        try:
            st = os.stat(f)
        except FileNotFoundError:
            return []
        if self.state.inode is not None and (st.st_ino != self.state.inode
                                             or st.st_size < self.state.offset):
            self.notices.append(f"{f}: file was replaced or truncated; reading it again")
            self.state.offset = 0
        self.state.inode = st.st_ino
        start = max(self.state.offset, len(FILE_HEADER))
        if st.st_size <= start:
            return []
        with open(f, "rb") as fh:
            fh.seek(start)
            data = fh.read(st.st_size - start)
        records, consumed = _wandb_records(data, start, BLOCK)
        self.state.offset = start + consumed
        if not records:
            return []
        lengths = np.array([len(r) for r in records], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        buf = np.frombuffer(b"".join(records) + b"\0" * 16, dtype=np.uint8).copy()
        raw = decode_records(Frames(buf=buf, starts=starts, lengths=lengths), f)
        return [raw] if len(raw.frame) else []


def _wandb_records(data: bytes, base: int, block: int) -> tuple[list[bytes], int]:
    """Whole records in `data` (which starts at file offset `base`, on a record boundary):
    their payloads and how many bytes they took."""
    out: list[bytes] = []
    pos = 0
    done = 0
    parts: list[bytes] = []
    n = len(data)
    while True:
        left = block - (base + pos) % block
        if left < 7:
            pos += left  # zero padding at the end of a block
            if not parts:
                done = min(pos, n)
            continue
        if pos + 7 > n:
            break
        ln = int.from_bytes(data[pos + 4:pos + 6], "little")
        ty = data[pos + 6]
        if ty == 0 and ln == 0:
            pos += left
            continue
        if pos + 7 + ln > n:
            break
        chunk = data[pos + 7:pos + 7 + ln]
        pos += 7 + ln
        if ty == 1:
            out.append(chunk)
            parts = []
            done = pos
        elif ty == 2:
            parts = [chunk]
        elif ty in (3, 4) and parts:
            parts.append(chunk)
            if ty == 4:
                out.append(b"".join(parts))
                parts = []
                done = pos
        else:  # damage: skip to the next block, as the reader does
            pos += block - (base + pos) % block
            parts = []
            done = min(pos, n)
    return out, done


class WholeFollower(_Follower):
    """Small whole-document logs (HF trainer_state.json): read again when they change."""

    replaces = True

    def __init__(self, path: Path, fmt: str, workdir: Path) -> None:
        super().__init__(path, fmt, workdir)
        self.stamp: tuple[int, float] | None = None

    def poll(self) -> list[Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        stamp = (st.st_size, st.st_mtime)
        if stamp == self.stamp:
            return []
        self.stamp = stamp
        return self._parse(self.path.name, self.path.read_bytes())


def follower_for(path: Path, fmt: str, workdir: Path) -> _Follower:
    if fmt in LINE_FORMATS:
        return LineFollower(path, fmt, workdir)
    if fmt == "tensorboard":
        return TensorBoardFollower(path, fmt, workdir)
    if fmt == "wandb_run":
        return WandbFollower(path, fmt, workdir)
    if fmt in WHOLE_FORMATS:
        return WholeFollower(path, fmt, workdir)
    raise ConfigError(f"{path}: cannot follow a {fmt} log while it grows (watch follows "
                      f"{', '.join(LINE_FORMATS + ('tensorboard', 'wandb_run') + WHOLE_FORMATS)}"
                      "); use `spikelens analyze` on it")


# ---------------------------------------------------------------------------------------------
# the trailing table and detection on it


@dataclass
class _Tail:
    """Rows read so far, trimmed to the last `keep` rows."""

    keep: int
    frames: list[pd.DataFrame] = field(default_factory=list)
    masks: list[dict[str, np.ndarray]] = field(default_factory=list)
    evals: list[pd.DataFrame] = field(default_factory=list)
    rows: int = 0  # rows currently held
    dropped: int = 0  # rows trimmed off the front
    step_column: str | None = None
    eval_step_column: str | None = None
    interval: int | None = None
    averaged: bool = False
    name: str | None = None

    def add(self, raw: Any) -> None:
        if self.step_column is None and raw.step_column is not None:
            self.step_column = raw.step_column
        if self.eval_step_column is None and raw.eval_step_column is not None:
            self.eval_step_column = raw.eval_step_column
        if self.interval is None and raw.interval is not None:
            self.interval = raw.interval
        self.averaged = self.averaged or raw.averaged
        self.name = self.name or raw.name
        if len(raw.frame):
            self.frames.append(raw.frame.reset_index(drop=True))
            self.masks.append(dict(raw.nan_mask))
            self.rows += len(raw.frame)
        if raw.eval_frame is not None and len(raw.eval_frame):
            self.evals.append(raw.eval_frame)
        while len(self.frames) > 1 and self.rows - len(self.frames[0]) >= self.keep:
            self.rows -= len(self.frames[0])
            self.dropped += len(self.frames[0])
            self.frames.pop(0)
            self.masks.pop(0)
        if len(self.frames) > 64:  # keep concatenation cheap: one frame for the old rows
            self.frames, self.masks = [self._frame()], [self._masks()]
        if self.rows > 2 * self.keep:
            cut = self.rows - self.keep
            self.frames, self.masks = [self._frame().iloc[cut:].reset_index(drop=True)], \
                [{k: v[cut:] for k, v in self._masks().items()}]
            self.rows -= cut
            self.dropped += cut
        evals = sum(len(e) for e in self.evals)
        if evals > 2 * self.keep:
            ev = pd.concat(self.evals, ignore_index=True, sort=False)
            self.evals = [ev.iloc[-self.keep:]]

    def _frame(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True, sort=False) if len(self.frames) > 1 \
            else self.frames[0]

    def _masks(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        at = 0
        for f, m in zip(self.frames, self.masks, strict=True):
            for k, v in m.items():
                if k not in out:
                    out[k] = np.zeros(self.rows, dtype=bool)
                out[k][at:at + len(f)] = v
            at += len(f)
        return out

    def raw(self) -> Any:
        from spikelens.readers._base import RawLog

        ev = pd.concat(self.evals, ignore_index=True, sort=False) if self.evals else None
        return RawLog(frame=self._frame(), step_column=self.step_column, eval_frame=ev,
                      nan_mask=self._masks(), interval=self.interval, averaged=self.averaged,
                      name=self.name, eval_step_column=self.eval_step_column)


def _decide(ev: Event, run: Run, cfg: Config) -> tuple[int, int, str] | None:
    """(confirming step, points after the peak, rule) once the event is decided, else None."""
    steps = run.steps
    loss = run.series("loss")
    logged = loss.index.to_numpy() if loss is not None else steps
    peak_i = int(np.searchsorted(logged, ev.peak_step))
    if ev.kind == "nonfinite":
        return ev.anchor_step, 0, "a non-finite loss is an incident at once"
    if ev.kind == "spike":
        if not ev.recovered:
            return None
        end_i = int(np.searchsorted(logged, ev.end_step))
        conf_i = end_i + cfg.recover_run - 1
        if conf_i >= len(logged):
            return None
        return (int(logged[conf_i]), conf_i - peak_i,
                f"a spike is confirmed once the loss is back in its band for "
                f"{cfg.recover_run} logged points")
    if ev.kind == "divergence":
        due = ev.start_step + cfg.divergence_steps
        if logged[-1] < due:
            return None
        conf_i = int(np.searchsorted(logged, due))
        # a divergence still climbing has its peak after the step that confirms it
        return (int(logged[conf_i]), max(0, conf_i - peak_i),
                f"a divergence is confirmed when the rise has held for "
                f"{cfg.divergence_steps} steps")
    return None


class Watched:
    """One followed log: its follower, its trailing rows and what was reported."""

    def __init__(self, path: Path, cfg: Config, workdir: Path,
                 metrics: dict[str, str] | None = None) -> None:
        self.path = path
        self.cfg = cfg
        self.metrics = metrics
        self.workdir = workdir
        self.follower: _Follower | None = None
        self.fmt: str | None = None
        self.tail = _Tail(keep=tail_points(cfg))
        self.reported: list[Event] = []
        self.rows_seen = 0
        self.last_step: int | None = None
        self.metric_columns: set[str] = set()  # numeric columns of the last run built
        self.started = False  # rows were read from this log
        self.pending: list[Event] = []  # seen in the last detection, not decided yet

    def open(self) -> bool:
        """Find the log's format and its follower, once it has something to sniff."""
        from spikelens.readers import detect_format

        if self.follower is not None:
            return True
        if not self.path.exists():
            return False
        try:
            self.fmt = detect_format(self.path)
        except SpikelensError:
            if self._too_early():
                return False  # nothing (or only a first partial line) written yet
            raise
        sub = self.workdir / str(abs(hash(str(self.path))))
        sub.mkdir(exist_ok=True)
        self.follower = follower_for(self.path, self.fmt, sub)
        return True

    def _too_early(self) -> bool:
        """Whether a log the readers do not recognise yet may still become one: an empty run
        directory, or a file shorter than the sniffing window (a first line being written)."""
        from spikelens.readers import HEAD_BYTES

        try:
            if self.path.is_dir():
                return not any(self.path.iterdir())
            return self.path.stat().st_size < HEAD_BYTES
        except OSError:
            return True

    def poll(self, initial: bool = False) -> tuple[list[Incident], list[str]]:
        """New rows since the last poll, and the incidents they decided. The first rows of a
        log are analysed whole (what it already holds may be longer than the tail); on the
        `initial` poll, its incidents were there before watching started."""
        if not self.open():
            return [], []
        assert self.follower is not None
        raws = self.follower.poll()
        notices, self.follower.notices = self.follower.notices, []
        if not raws:
            return [], notices
        if getattr(self.follower, "replaces", False):
            self.tail = _Tail(keep=self.tail.keep)
        whole = _Tail(keep=1 << 62) if not self.started else None
        self.started = True
        from spikelens.readers._base import odd_cell_warnings

        for raw in raws:
            notices.extend(raw.warnings)
            # build_run warns about cells that are not numbers, but the runs here are built
            # from a tail that has lost the source lines: each piece says it as it is read.
            # A column the run already holds as a metric stays one in a piece of only odd
            # cells (ten `xyz` losses in a row are not a text column).
            notices.extend(odd_cell_warnings(raw, self.path, self.metric_columns))
            self.rows_seen += len(raw.frame)
            self.tail.add(raw)
            if whole is not None:
                whole.add(raw)
        if self.tail.rows == 0:
            return [], notices
        found = self._detect(whole if whole is not None else self.tail, initial)
        if whole is not None:
            last = f", up to step {self.last_step}" if self.last_step is not None else ""
            notices.append(f"{self.path}: {whole.rows} rows already written{last}, analysed; "
                           "following what is appended")
        return found, notices

    def _detect(self, tail: _Tail, initial: bool) -> list[Incident]:
        from spikelens.detect import detect
        from spikelens.readers._base import build_run

        try:
            run = build_run(tail.raw(), self.path, self.fmt or "?", self.metrics)
        except SpikelensError:
            return []  # no loss-like column yet
        if len(run.steps):
            self.last_step = int(run.steps[-1])
        self.metric_columns = set(map(str, run.frame.columns))
        det = detect(run, self.cfg)
        loss = run.series("loss")
        logged = loss.index.to_numpy() if loss is not None else run.steps
        # no baseline for an event that starts in the first window of a trimmed tail
        min_start = int(logged[min(self.cfg.window, len(logged) - 1)]) \
            if tail.dropped and len(logged) else None
        out: list[Incident] = []
        self.pending = []
        for ev in det.events:
            if ev.metric != "loss" or ev.kind not in INCIDENT_KINDS:
                continue
            if min_start is not None and ev.anchor_step < min_start:
                continue
            if self._seen(ev):
                continue
            decided = _decide(ev, run, self.cfg)
            if decided is None:
                self.pending.append(ev)
                continue
            step, delay, rule = decided
            self.reported.append(ev)
            out.append(Incident(source=str(self.path), run=run.name, event=ev,
                                confirmed_step=step, delay_points=delay, rule=rule,
                                top_cause=_top_cause(run, ev, det.events, self.cfg),
                                before_watch=initial))
        return out

    def _seen(self, ev: Event) -> bool:
        for r in self.reported:
            if r.kind == "nonfinite" and ev.kind == "nonfinite":
                if r.anchor_step == ev.anchor_step:
                    return True
            elif r.peak_step == ev.peak_step or (
                    r.kind != "nonfinite" and ev.kind != "nonfinite"
                    and (r.start_step <= ev.peak_step <= r.end_step
                         # a divergence still climbing: its peak moves past the end it
                         # had when reported, its start stays inside it
                         or r.start_step <= ev.start_step <= r.end_step)):
                return True
        return False


def _top_cause(run: Run, ev: Event, events: Sequence[Event], cfg: Config) -> str | None:
    from spikelens.causes import explain

    try:
        f = explain(run, ev, tuple(events), cfg, None)
    except Exception:  # noqa: BLE001 - a cause rule failing must not stop watching
        return None
    return f.causes[0].cause if f.causes else None


# ---------------------------------------------------------------------------------------------
# the loop


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 5.0) -> str | None:
    """POST `payload` as JSON; the error in words if it failed (watching goes on)."""
    body = json.dumps(_clean(payload), default=_json_default, allow_nan=False).encode()
    req = urllib.request.Request(url, data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user URL
            resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"webhook {url}: {exc}"
    return None


def _clean(o: Any) -> Any:
    """JSON has no NaN or infinity: they are sent as the strings "NaN", "inf", "-inf"."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, float | np.floating) and not np.isfinite(o):
        return "NaN" if o != o else ("inf" if o > 0 else "-inf")
    if isinstance(o, np.generic):
        return o.item()
    return o


def _json_default(o: Any) -> Any:
    return str(o)


@dataclass
class WatchResult:
    exit_code: int
    incidents: list[Incident]
    polls: int
    seconds: float


class Watcher:
    """Polls every log each `interval` seconds until interrupted (or `fail_on` matches)."""

    def __init__(self, paths: Sequence[Path], config: Config | None = None,
                 interval: float = 2.0, fail_on: Sequence[str] = (),
                 webhook: str | None = None, out: TextIO | None = None,
                 err: TextIO | None = None, metrics: dict[str, str] | None = None) -> None:
        if interval <= 0:
            raise ConfigError(f"--interval must be > 0 seconds, got {interval}")
        self.cfg = config or Config()
        self.interval = interval
        self.fail_on = set(fail_on)
        self.webhook = webhook
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._tmp = tempfile.TemporaryDirectory(prefix="spikelens-watch-")
        self.logs = [Watched(p, self.cfg, Path(self._tmp.name), metrics) for p in paths]
        self.incidents: list[Incident] = []
        self.polls = 0
        self.t0 = time.monotonic()

    def _say(self, text: str, err: bool = False) -> None:
        stream = self.err if err else self.out
        stream.write(text + "\n")
        stream.flush()

    def poll_once(self) -> int | None:
        """One pass over every log; the exit code if watching must stop."""
        self.polls += 1
        for w in self.logs:
            incidents, notices = w.poll(initial=self.polls == 1)
            for n in notices:
                self._say(n if "rows already written" in n else f"warning: {n}", err=True)
            for inc in incidents:
                self.incidents.append(inc)
                stamp = time.strftime("%H:%M:%S")
                self._say(f"[{stamp}] {inc.event.kind}: {inc.text()}")
                if self.webhook:
                    problem = post_webhook(self.webhook, inc.payload())
                    if problem:
                        self._say(f"warning: {problem}", err=True)
                if "any" in self.fail_on or any(inc.event.counts_as(k) for k in self.fail_on):
                    return 1
        return None

    def run(self, max_polls: int | None = None) -> WatchResult:
        # import the detector and the cause rules now, not when the first incident is due
        import spikelens.causes
        import spikelens.detect
        import spikelens.readers

        spikelens.readers.format_names()
        del spikelens
        for w in self.logs:
            w.open()  # a log that cannot be followed is an error before watching starts
        names = ", ".join(str(w.path) for w in self.logs)
        self._say(f"watching {names} every {self.interval:g} s (Ctrl-C to stop)", err=True)
        code = 0
        try:
            while True:
                t = time.monotonic()
                stop = self.poll_once()
                if stop is not None:
                    code = stop
                    break
                if max_polls is not None and self.polls >= max_polls:
                    break
                time.sleep(max(0.0, self.interval - (time.monotonic() - t)))
        except KeyboardInterrupt:
            pass
        finally:
            self._say(self.summary())
            self._tmp.cleanup()
        return WatchResult(code, list(self.incidents), self.polls, time.monotonic() - self.t0)

    def summary(self) -> str:
        secs = time.monotonic() - self.t0
        parts = []
        for w in self.logs:
            if w.fmt is None:
                parts.append(f"{w.path}: nothing written yet")
                continue
            last = f", last step {w.last_step}" if w.last_step is not None else ""
            mine = [i for i in self.incidents if i.source == str(w.path)]
            inc = ", ".join(f"{i.event.kind} at {i.event.peak_step}" for i in mine) or \
                "no incident"
            if w.pending:
                # a rise still open when watching stopped: neither confirmed nor dismissed
                inc += "; not decided yet: " + ", ".join(
                    f"a rise peaking at step {e.peak_step}" for e in w.pending)
            parts.append(f"{w.path} ({w.fmt}): {w.rows_seen} rows read{last}; {inc}")
        return (f"watched {len(self.logs)} log(s) for {secs:.1f} s ({self.polls} polls): "
                + "; ".join(parts))


__all__ = ["Incident", "Watcher", "post_webhook", "tail_points"]
