"""Issue 8's Lightning-style stall after a short drop (third round): a language model that
falls from ln(vocab) = 10.8 to 7.6 within a few hundred steps and then stays flat for 11k
steps, logged every step, has learned only the frequencies of its tokens (7.6 nats is the
entropy of Zipf-distributed frequencies over ~50k tokens). It is a `stall`; the same drop
followed by a slow descent, a run that converges early to a low loss, a fine-tune whose first
loss is not ln(vocab_size), and a classifier (ln 10 at the start) are not."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from spikelens.detect import detect
from spikelens.detect.stall import unigram_level, zipf_entropy
from spikelens.model import Config, Run

sys.path.insert(0, str(Path(__file__).parent))
from test_detect_issue8_gaps import make_run, stuck_at_7_6  # noqa: E402

CFG = Config()


def with_vocab(run: Run, vocab: int) -> Run:
    import dataclasses

    return dataclasses.replace(run, params={"vocab_size": vocab})


def test_zipf_entropy_is_about_0_7_ln_vocab() -> None:
    # p_k ~ 1/k: 7.57 nats for GPT-2's 50,257 tokens, 5.19 for 1,000
    assert zipf_entropy(50_257) == pytest.approx(7.566, abs=0.01)
    assert zipf_entropy(1_000) == pytest.approx(5.191, abs=0.01)
    assert unigram_level(10.8, None) == pytest.approx(zipf_entropy(round(math.exp(10.8))))
    assert unigram_level(2.3, None) is None  # ln 10: a classifier, not a token vocabulary
    assert unigram_level(3.0, 50_257) is None  # not a uniform guess over 50k tokens


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_short_drop_then_flat_at_the_unigram_level_is_a_stall(seed: int) -> None:
    loss, steps = stuck_at_7_6(seed, 1, drop=True)
    for run in (make_run(loss, steps), with_vocab(make_run(loss, steps), 50_257)):
        det = detect(run, CFG)
        assert det.verdict == "healthy"  # a stall is informational
        [ev] = det.events
        assert ev.kind == "stall" and ev.detail is not None
        assert "learned only token frequencies" in ev.detail
        assert ev.start_step <= 2_000 and ev.end_step == 11_000
    assert "over 50,257 tokens" in (detect(with_vocab(make_run(loss, steps), 50_257),
                                           CFG).events[0].detail or "")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_runs_of_the_same_start_stay_quiet(seed: int) -> None:
    loss, steps = stuck_at_7_6(seed, 1, drop=True)
    t = np.arange(len(loss), dtype=np.float64)
    noise = loss / (7.6 + 3.2 * np.exp(-t / 60))  # the same smoothed noise, as a factor
    # converges early, to a language model's level: 10.8 -> 3.0 in a few hundred steps, flat
    early = (3.0 + 7.8 * np.exp(-t / 60)) * noise
    det = detect(make_run(early, steps), CFG)
    assert [e.kind for e in det.events] == []
    # a fine-tune: vocab_size says 50k but the first loss is 3.4, not ln(50k); flat after
    tune = loss * 0.45
    det = detect(with_vocab(make_run(tune, steps), 50_257), CFG)
    assert [e.kind for e in det.events] == []
    # a 10-class classifier: starts at ln 10, drops, flat
    clf = loss * (2.3 / 10.8)
    assert [e.kind for e in detect(make_run(clf, steps), CFG).events] == []


def test_the_verbose_report_says_why_it_is_a_stall() -> None:
    # the reason is in the event's detail; the terminal and Markdown reports print it where an
    # incident would list its causes
    from spikelens import analyze
    from spikelens.report import render

    loss, steps = stuck_at_7_6(0, 1, drop=True)
    report = analyze(make_run(loss, steps))
    term = " ".join(render(report, [], "terminal", color=False, verbose=True).split())
    assert "the run learned only token frequencies: it started at 10.8" in term
    md = " ".join(render(report, [], "markdown").split())
    assert "learned only token frequencies" in md
