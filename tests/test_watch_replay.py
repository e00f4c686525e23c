"""Watching a log as it is written gives the batch diagnosis: real sample logs are replayed
into a file a few lines at a time, with one poll after each piece (in process, no timing),
and the incidents `watch` reports are the ones `analyze` finds in the whole log; a rise the
log ends too soon to decide is named as such in the summary, not reported."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import SAMPLES

from spikelens import read_log
from spikelens.detect import detect
from spikelens.model import Config
from spikelens.watch import Watcher


def _replay(src: Path, dst: Path, piece: int) -> Watcher:
    lines = src.read_bytes().splitlines(keepends=True)
    w = Watcher([dst], interval=1, out=io.StringIO(), err=io.StringIO())
    w.poll_once()  # the log does not exist yet
    for i in range(0, len(lines), piece):
        with dst.open("ab") as fh:
            fh.write(b"".join(lines[i:i + piece]))
        w.poll_once()
    return w


@pytest.mark.parametrize("name, piece", [
    ("jsonl/r18_bad_batch_lr_metrics.jsonl", 7),
    ("csv/bench_r01_wandb_bad_batch.csv", 13),
    ("text/modded_nanogpt_124M_2024-11-06_ShortcutsTweaks.log", 25),
])
def test_replayed_log_gives_the_batch_incidents(name: str, piece: int, tmp_path: Path) -> None:
    src = SAMPLES / name
    w = _replay(src, tmp_path / src.name, piece)
    run = read_log(src)
    batch = [(e.kind, e.peak_step) for e in detect(run, Config()).events
             if e.metric == "loss" and e.kind in ("spike", "divergence", "nonfinite")]
    assert batch, "the sample has incidents"
    # a rise peaking within the last recover_run logged points cannot be decided yet: the
    # summary names it (ShortcutsTweaks' 3194, six steps before the log ends)
    late = int(run.steps[-Config().recover_run])
    decided = [b for b in batch if b[1] < late]
    assert [(i.event.kind, i.event.peak_step) for i in w.incidents] == decided
    for _, peak in batch[len(decided):]:
        assert f"a rise peaking at step {peak}" in w.summary()
    assert not any(i.before_watch for i in w.incidents)


def test_a_rise_the_log_ends_too_soon_to_decide_is_pending(tmp_path: Path) -> None:
    # an 11-line excerpt: the loss is back 3 steps after the spike, but 10 points back in
    # band are needed before it can be told from a rise that stays
    src = SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"
    w = _replay(src, tmp_path / src.name, 3)
    assert w.incidents == []
    assert "not decided yet: a rise peaking at step 31219" in w.summary()
