"""Stall: a loss that makes no progress for a long stretch (informational).

A run that never learned (a loss that sits at 7.6 for 11k steps) or whose gradients vanished
is not oscillating: it is stuck. A stretch that runs to the end of the log (at least
`stall_blocks` baseline windows long) makes progress when the median of its second half is
below the median of its first half by more than the noise explains: three standard errors
of that difference, 3 * sqrt(2) * 1.2533 * sigma * sqrt(infl / half), sigma the IQR scale of
the residuals around the stretch's line and infl = (1 + rho) / (1 - rho) their
autocorrelation inflation (the estimates the shift test uses). Halves of a long stretch
resolve a slow descent that block-to-block comparisons would call flat. The earliest such
stretch without progress is a stall when one of the two mechanisms the seed names holds:

* the run never learned: the stall starts within the first fifth of the log and its level is
  within 10 % of the loss's median over its first points (a quarter of its first tenth, at
  most a quarter window, at least 8 points) (a run that learned and then converged has left its
  starting level far behind, so its plateau is not reported), or
* vanishing gradients: over the stall the grad norm's median is `stall_grad_drop` (10x) below
  its median before it, or
* the run learned only token frequencies: a language model trained from scratch starts at
  the loss of a uniform guess, ln(vocabulary) (at least ln 1000: a token vocabulary, not
  classes), drops within a few hundred steps to the entropy of the tokens' unigram
  frequencies, and sits there. Token frequencies follow Zipf's law (p_k ~ 1/k), whose entropy
  is about 0.7 ln(V) (7.57 nats for GPT-2's 50,257 tokens). The stall must hold at least half
  of the logged points and sit no more than `UNIGRAM_MARGIN` below that entropy: a model that
  has learned anything about context is well below it, and a clean run that converged early
  converges to a level far below ln(V), so its plateau is not reported. The vocabulary is
  Run.params' vocab_size when the first loss is within 10 % of its logarithm, else exp(first
  loss) for a first loss between ln(1000) and ln(10^6); a first loss away from
  ln(vocab_size) (a fine-tune) or outside that band (other units) is never judged this way,
  so a loss rescaled into the band can be (this one reason is not scale-invariant).

A stall never changes the verdict."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from spikelens.detect.baseline import IQR_TO_SIGMA, REL_SCALE_FLOOR, fast_median
from spikelens.detect.spikes import MEDIAN_SE


@dataclass(frozen=True)
class Stall:
    start: int  # first point of the first block without progress
    end: int  # last point of the stall
    level: float  # median over the stall (test units)
    progress_bar: float  # the decrease a block needed to count as progress (test units)
    why: str  # "never learned", "grad norm collapsed" or "unigram"
    grad_drop: float | None
    first: float = 0.0  # the loss at the first points (test units)
    vocab: float | None = None  # the vocabulary a "unigram" stall was judged with
    unigram: float | None = None  # that vocabulary's Zipf unigram entropy (nats)


def _row_quartiles(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """`np.percentile(a, [25, 75], axis=1)` of a 2-D float array, bit for bit, from one sort
    of the rows: numpy's row sort is vectorised while its multi-kth partition along axis 1 is
    not (9,000 rows of 100 points: 3 ms against 20 ms). The order statistics are the same
    values; their interpolation below repeats numpy's "linear" method step for step. Only
    the sign of a zero can differ (which of -0.0 and 0.0 lands at a rank), and a quartile
    range or its square does not keep it."""
    m = a.shape[1]
    srt = np.sort(a, axis=1)
    out = np.empty((2, a.shape[0]))
    if m == 0:
        out.fill(np.nan)
        return out
    for k, q in enumerate(np.true_divide(np.array([25, 75]), 100)):
        # numpy's "linear" virtual index, then its _get_indexes and _get_gamma
        vi = (m - 1) * q
        lo = np.floor(vi)
        if vi >= m - 1:
            i0 = i1 = m - 1
        else:
            i0, i1 = int(lo), int(lo) + 1
        g = vi - lo
        a0, a1 = srt[:, i0], srt[:, i1]
        d = a1 - a0
        # numpy's _lerp: from the nearer end
        out[k] = a1 - d * (1 - g) if g >= 0.5 else a0 + d * g
    # a row holding a NaN gives NaN (np.sort puts it last, as the partition does)
    out[:, np.isnan(srt[:, -1])] = np.nan
    return out


def _block_noise(x: NDArray[np.float64], block: int) -> tuple[NDArray[np.float64],
                                                                 NDArray[np.float64]]:
    """Per block of `block` points: sigma (the IQR scale of the residuals around the block's
    least-squares line) and the AR(1) inflation (1 + rho) / (1 - rho), rho from the IQR
    scale of the first differences (as the shift test estimates it). Vectorised."""
    nb = len(x) // block
    w = x[: nb * block].reshape(nb, block)
    t = np.arange(block) - (block - 1) / 2
    slope = (w @ t) / float(t @ t)
    r = w - slope[:, None] * t[None, :]
    q = _row_quartiles(r)
    sigma = np.maximum((q[1] - q[0]) / IQR_TO_SIGMA, REL_SCALE_FLOOR)
    dq = _row_quartiles(np.diff(r, axis=1))
    sd = (dq[1] - dq[0]) / IQR_TO_SIGMA
    rho = np.clip(1.0 - sd * sd / (2 * sigma * sigma), 0.0, 0.9)
    return sigma, (1 + rho) / (1 - rho)


#: A run that never learned is still within 10 % (the `min_ratio` of an incident, in log
#: units) of the loss it started from.
NEVER_LEARNED = math.log(1.10)

#: A language model's first loss at or above ln(1000) is a uniform guess over a token
#: vocabulary (a classifier's ln(classes) is smaller).
MIN_VOCAB_LOG = math.log(1000)
#: ... and at most ln(1,000,000): the largest tokenizers in use hold about 256k tokens, so a
#: larger first loss is a loss in other units (or a sum over tokens), not nats per token.
MAX_VOCAB = 1_000_000
MAX_VOCAB_LOG = math.log(MAX_VOCAB)
#: A plateau within this many nats of the Zipf unigram entropy has learned nothing the token
#: frequencies do not give (a perplexity within 1.65x of the unigram model's).
UNIGRAM_MARGIN = 0.5


@lru_cache(maxsize=64)
def zipf_entropy(vocab: int) -> float:
    """Entropy (nats) of token frequencies p_k ~ 1/k over `vocab` tokens: ln(H_V) + sum(ln k /
    k) / H_V, H_V the harmonic number."""
    k = np.arange(1, max(2, vocab) + 1, dtype=np.float64)
    h = float(np.sum(1.0 / k))
    return math.log(h) + float(np.sum(np.log(k) / k)) / h


def unigram_level(first: float, vocab: float | None) -> float | None:
    """The no-learning plateau (nats) of a language model whose first loss is `first`, or
    None when that loss is not a uniform guess over a token vocabulary."""
    if vocab is not None and vocab > 1:
        if abs(first / math.log(vocab) - 1.0) > 0.10:
            return None  # not a uniform guess over this vocabulary: a fine-tune
    elif not MIN_VOCAB_LOG <= first <= MAX_VOCAB_LOG:
        return None  # a loss in other units, or no uniform guess over a token vocabulary
    v = int(round(vocab)) if vocab is not None and vocab > 1 else int(round(math.exp(first)))
    if not 1000 <= v <= MAX_VOCAB:
        return None
    return zipf_entropy(v)


def align_to(steps: NDArray[np.int64], at: NDArray[np.int64],
             values: NDArray[np.float64]) -> NDArray[np.float64]:
    """`values` (logged at the steps `at`) placed at the (sorted) `steps`, NaN where not
    logged: what `out[pos[ok]] = values[ok]` gives after `pos = np.searchsorted(steps, at)`
    and `ok` the exact matches. When `steps` increase strictly over a span of at most four
    times their number, a table from step to position finds the same matches, in the same
    order, without a binary search per value (a million grad norms: 22 ms of searching)."""
    out = np.full(len(steps), np.nan)
    n = len(steps)
    if n == 0:
        return out
    lo, span = int(steps[0]), int(steps[-1]) - int(steps[0]) + 1
    if 0 < span <= 4 * n + 1024 and bool(np.all(steps[1:] > steps[:-1])):
        table = np.full(span, -1, dtype=np.intp)
        table[steps - lo] = np.arange(n)
        inside = (at >= lo) & (at < lo + span)
        pos = table[at[inside] - lo]
        hit = pos >= 0
        out[pos[hit]] = values[inside][hit]
        return out
    pos = np.searchsorted(steps, at)
    ok = (pos < n)
    ok[ok] &= steps[pos[ok]] == at[ok]
    out[pos[ok]] = values[ok]
    return out


#: Candidate starts tried for a stall (evenly spaced over the log after its first tenth).
_STARTS = 40


def find_stall(x: NDArray[np.float64], block: int, min_blocks: int, grad_drop: float,
               grad: Callable[[], NDArray[np.float64] | None],
               vocab: float | None = None) -> Stall | None:
    """The longest stretch that runs to the end of x (finite points, log of the loss) without
    progress, or None. `grad()` gives the grad norm aligned with x (NaN where not logged),
    or None; it is called only once a stretch is found (the alignment of a million grad
    norms holds about 60 MB of temporaries, for nothing on a run that learns). `vocab` the
    vocabulary size from the run's parameters, if known."""
    n = len(x)
    head = n // 10
    if n - head < min_blocks * block:
        return None
    sig, infl = _block_noise(x[head:], block)
    found: tuple[int, float] | None = None
    for s0 in np.linspace(head, n - min_blocks * block, _STARTS).astype(int):
        seg = x[s0:]
        h = len(seg) // 2
        drop = fast_median(seg[:h]) - fast_median(seg[h:])  # np.median's, bit for bit
        b0 = (s0 - head) // block
        se = MEDIAN_SE * float(np.median(sig[b0:])) * math.sqrt(
            float(np.median(infl[b0:])) / max(1, h))
        bar = 3 * math.sqrt(2) * se
        if drop <= bar:
            found = (int(s0), bar)
            break
    if found is None:
        return None
    s0, bar = found
    # the grid of starts is coarse: the stall begins where the loss has come down to the
    # plateau, i.e. once a block's median is no longer above the plateau's level by more
    # than three standard errors of a block median
    plateau = fast_median(x[(s0 + n) // 2:])
    step = max(1, block // 5)
    while s0 + block < n - min_blocks * block:
        b = min(len(sig) - 1, max(0, (s0 - head) // block))
        se_blk = MEDIAN_SE * float(sig[b]) * math.sqrt(float(infl[b]) / block)
        if float(np.median(x[s0:s0 + block])) - plateau <= 3 * se_blk:
            break
        s0 += step
    s1 = n - 1
    drop_gn = None
    gn = grad()
    if gn is not None:
        before = gn[:s0][np.isfinite(gn[:s0]) & (gn[:s0] > 0)]
        during = gn[s0:][np.isfinite(gn[s0:])]
        if len(before) >= 8 and len(during) >= 8:
            d = float(np.median(during))
            drop_gn = float(np.median(before)) / d if d > 0 else math.inf
    start_level = float(np.median(x[:max(8, min(block, n // 10) // 4)]))
    # the loss before training moved it (the vocabulary test): a median of three points
    # resists one odd first value, and a longer one would already hold the first drop
    first = float(np.median(x[:3]))
    level = fast_median(x[s0:])
    if s0 <= n // 5 and level >= start_level - NEVER_LEARNED:
        why = "never learned"
    elif drop_gn is not None and drop_gn >= grad_drop:
        why = "grad norm collapsed"
    elif n - s0 >= n / 2 and (uni := unigram_level(math.exp(first), vocab)) is not None \
            and math.exp(level) >= uni - UNIGRAM_MARGIN:
        why = "unigram"
    else:
        return None
    v = None
    if why == "unigram":
        v = vocab if vocab is not None and vocab > 1 else math.exp(math.exp(first))
    return Stall(start=s0, end=s1, level=level, progress_bar=bar,
                 why=why, grad_drop=drop_gn, first=first, vocab=v,
                 unigram=zipf_entropy(int(round(v))) if v is not None else None)
