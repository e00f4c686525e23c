"""Generic key-value text logs: the fallback for training scripts that print one line per step. One
reader covers the common dialects: nanoGPT (`iter 100: loss 4.2012, time 33.21ms, mfu 12.3%` and
`step 0: train loss .., val loss ..`), llm.c (`s:0 trl:11.0091 lr:.. norm:..` and `s:0 tel:..`),
modded-nanogpt (`step:1/20344 train_loss:22.6 train_time:81991ms step_avg:nanms`), mmengine/mmcv
(`Epoch(train) [1][50/500] lr: 1e-04 ... loss: 2.51`), NeMo/Lightning progress bars (`Epoch 0:
2%|..| 188/10000 [.., reduced_train_loss=7.560, global_step=188.0]`, each carriage-return redraw
read, the last of a step winning), pytorch/examples word_language_model (`| epoch 4 | 2200/ 2983
batches | .. | loss 17.21 |`, step (epoch - 1) x batches + batch, its `| end of epoch 4 | .. | valid
loss ..` lines eval rows at the last train step; fairseq's `| epoch 001: 100 / 1102 loss=..,
num_updates=100` lines at num_updates, also behind the `2025-10-15 11:33:32 | INFO | train_inner |`
prefix of fairseq >= 0.10, its `valid on 'valid' subset` lines eval rows),
build-nanogpt's `log.txt` (`{step} train|val|hella {value}`, read only when most lines are such),
llama-recipes' progress bar (`Training Epoch: 2/3, step 17/249 completed (loss: ..)`, step (epoch -
1) x steps per epoch + step; its `eval_epoch_loss=tensor(..)` lines eval rows at the last train
step), torchtune's (`1|25|Loss: 1.2345: 25%|..`, at its global step), Keras `fit()` output (`Epoch
3/60` then `100/100 [===] - 2s - loss: 0.69 - val_loss: 0.7`, a row per epoch) and counters that
restart every epoch (`Epoch 2/10, Batch 40/500`, pytorch/examples mnist, the CIFAR-10 tutorial's
`[2,  4000] loss:`), made run steps when they do, and LitGPT (`iter 400 step 100: loss ..`, read at
its optimizer `step`). Each line is searched for a step token, then for
`key: value`, `key=value` and `key value` pairs; a pair's key takes up to two preceding words
(`train loss`, `val loss`) so that such keys stay apart. Units (`ms`, `s`, `%`, `GB`) are stripped,
`nan`/`inf` are kept as logged non-finite values. A line with an evaluation key (`val_loss`, `tel`,
`eval/...`) or an mmengine `(val)`/`(test)` tag goes whole to the eval table, so eval numbers never
mix with train ones. Lines without a step are ignored; those that still carry several numbers are
counted in a warning. The frame helpers at the bottom are shared with the Megatron reader."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError
from spikelens.metrics import normalise, role_of
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary, series_order, skip_warning
from spikelens.readers._ranks import MessageSink, fold_table

STEP = "step"

# mmengine / mmcv: `Epoch(train) [1][50/500]`, `Epoch [1][50/500]`, `Iter(val) [10/100]`
_MMENGINE = re.compile(
    r"\b(Epoch|Iter)\s*(?:\((\w+)\))?\s*\[\s*(\d{1,9})\s*(?:/\s*(\d{1,9})\s*)?\]"
    r"(?:\s*\[\s*(\d{1,9})\s*/\s*(\d{1,9})\s*\])?"
)
# `step 5`, `step:5/100`, `iter 100:`, `iteration 7`, `global_step=9`, and the terse
# `s:0` / `it=3` forms, which need the `:`/`=` so a lone "s" in prose is not a step.
# Numbers are bounded (15 digits) so that no line can overflow the int64 step column.
_STEP = re.compile(
    r"(?<![\w./\-])(?:(?:global_step|step|iteration|iter)\s*[:=]?\s*|(?:s|it)[:=])"
    r"(\d{1,15}|\d{1,3}(?:,\d{3}){1,4})(?:\s*/\s*[\d,]+)?(?![\w.]|,\d)",
    re.IGNORECASE,
)
# NeMo's progress bar writes `global_step=188.0`: a whole float after `=` is a step too (only
# after `=`, so that prose such as "step 3.0 of the recipe" stays prose)
_WHOLE_STEP = re.compile(r"(?<![\w./\-])(?:global_step|step)\s*=\s*(\d{1,15})\.0+(?![\w.])")
# (`1,234,567`: Python's `{:,}`, thousands separated by commas, is a number too)
_NUM = (r"[-+]?(?:\d+(?:\.\d*)?|\d{1,3}(?:,\d{3})+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
        r"|[-+]?(?:[nN][aA][nN]|[iI][nN][fF](?:inity)?)")
_UNIT = r"ms|us|µs|ns|sec|secs|s|min|h|%|x|GiB|MiB|KiB|GB|MB|KB|B"
_KEY = r"[A-Za-z_][\w./@\-]*"
# one pair: a key (perhaps quoted, as in a printed dict), then `:`/`=` or just spaces, then a
# number with an optional unit, ending at a separator (so neither `0:10:00` nor the `1` of
# `1,234` passes for a number)
_PAIR = re.compile(
    rf"(?<![\w./@\-])({_KEY})['\"]?(?:\s*[:=]\s*|\s+)({_NUM})(?:{_UNIT})?"
    r"(?=$|[\s;|)\]}]|,(?!\d))"
)
# up to two plain words right before a key (`train loss`, `val loss`, `grad norm`)
_LEAD = re.compile(rf"(?:^|(?<=[\s,;|:(\[{{]))((?:{_KEY} ){{1,2}})$")
# (epoch and batch numbers are bounded so that (epoch - 1) x batches + batch fits in int64)
# pytorch/examples word_language_model (main.py): `| epoch   4 |  2200/ 2983 batches | lr
# 20.00 | ms/batch 10.71 | loss 17.21 | ppl ...`, then `| end of epoch   4 | time: 33.07s |
# valid loss 12.21 | valid ppl ...` and `| End of training | test loss ... |`
_WORDLM = re.compile(
    r"^\s*\|\s*epoch\s+(\d{1,6})\s*\|\s*(\d{1,9})\s*/\s*(\d{1,9})\s+batches\s*\|"
)
_WORDLM_END = re.compile(r"^\s*\|\s*end of (?:epoch\s+\d{1,9}|training)\s*\|", re.IGNORECASE)
# old fairseq's simple progress bar (the same `| epoch` look): `| epoch 001:    100 / 1102
# loss=9.453, ..., num_updates=100, ...`, the epoch's `| epoch 001 | loss 7.853 | ... |
# num_updates 1102 | ...` summary and `| epoch 001 | valid on 'valid' subset | loss 6.5 | ...`
_FAIRSEQ = re.compile(r"^\s*\|\s*epoch\s+(\d{1,6}):\s+(\d{1,9})\s*/\s*(\d{1,9})(?=\s)")
_FAIRSEQ_END = re.compile(r"^\s*\|\s*epoch\s+\d{1,9}\s*\|(?:\s*valid on '(\w+)' subset\s*\|)?")
_UPDATES = re.compile(r"\bnum_updates[= ](\d{1,15})(?![\w.])")
# fairseq since 0.10 prints those lines through `logging`: `2025-10-15 11:33:32 | INFO |
# train_inner | epoch 001:    100 / 487 loss=4.655, ..., num_updates=100, ...` (and `| train |`,
# `| valid |` for the summaries); without the prefix they are the old lines
_FAIRSEQ_LOGGING = re.compile(
    r"^\s*(?:\d{4}-\d\d-\d\d[ T][\d:.,]+\s*)?\|\s*[A-Z]+\s*\|\s*[\w.]+\s*(?=\|\s*epoch\s)")
# Karpathy's build-nanogpt `log.txt`: `{step} train {loss:.6f}`, `{step} val {loss:.4f}`,
# `{step} hella {acc:.4f}`, one per line
_NANO_LOG = re.compile(rf"^(\d{{1,15}}) (train|val|hella) ({_NUM})\s*$")
_NANO_KEYS = {"train": "train loss", "val": "val loss", "hella": "hella acc"}
# PyTorch Lightning's progress bar (NeMo): `Epoch 0:   2%|▏  | 188/10000 [05:06<4:26:30,
# 1.6s/it, loss=7.75, v_num=3-16, reduced_train_loss=7.560, global_step=188.0, ...]`
_PTL_BAR = re.compile(r"^\s*Epoch (\d{1,9}):\s*\d{1,3}%\|")
# the bar's own count, `| 40/100 [`
_BAR_COUNT = re.compile(r"\|\s*(\d{1,9})/(\d{1,9})\s*\[")
# llama-recipes (`train_utils.train`): its tqdm bar's description `Training Epoch: 2/3, step
# 17/249 completed (loss: 0.117)`, a step that restarts every epoch (an epoch counter, below:
# the run's step is then what it logs to W&B as `train/step`). Its evaluation prints
# `eval_ppl=tensor(1.16, device='cuda:0') eval_epoch_loss=tensor(0.149, device='cuda:0')`
# with no step
_LLAMA = re.compile(
    r"Training Epoch:\s*(\d{1,6})/\d{1,6},\s*step\s+(\d{1,9})/(\d{1,9})\s+completed")
# torchtune's recipes: the tqdm bar's description `{epoch}|{global_step}|Loss: {loss}`
# (`1|25|Loss: 1.2345: 25%|...`), redrawn with carriage returns
# Keras `model.fit` stdout: `Epoch 3/60`, then the epoch's progress line `100/100
# [====] - 5s 50ms/step - loss: 0.69 - accuracy: 0.5 - val_loss: 0.7` (Keras 3 draws the bar
# with `━`): a row per epoch, the val_ values an eval row at the same step
_KERAS_EPOCH = re.compile(r"^Epoch (\d{1,9})/\d{1,9}\s*$")
_KERAS_LINE = re.compile(r"^\s*\d{1,12}/\d{1,12}\s")
# counters that restart every epoch, read as (epoch, count in the epoch, its total or None):
# `Epoch 2/10, Batch 40/500, Loss: ..` (any of Batch/Step/Iter/Iteration), pytorch/examples
# mnist `Train Epoch: 2 [2560/60000 (4%)]\tLoss: ..` (the count in samples) and the PyTorch
# CIFAR-10 tutorial's `[2,  4000] loss: ..`; `Test set: Average loss: ..` (mnist) is an eval
_EPOCH_COUNT = re.compile(
    r"\bEpoch\s*\[?\s*(\d{1,6})(?:\s*/\s*\d{1,6})?\s*\]?\s*[,|:]?\s*"
    r"(?:Batch|Step|Iter|Iteration)\s*\[?\s*(\d{1,12})(?:\s*/\s*(\d{1,12}))?\s*\]?[,|:]?",
    re.IGNORECASE)
_MNIST = re.compile(r"^Train Epoch: (\d{1,6}) \[(\d{1,12})/(\d{1,12}) \(\d{1,3}%\)\]")
_CIFAR = re.compile(r"^\[(\d{1,6}),\s*(\d{1,12})\] (?=loss: )")
_MNIST_TEST = re.compile(r"^Test set: Average loss: ")
_TORCHTUNE = re.compile(rf"(?:^|(?<=\s))(\d{{1,6}})\|(\d{{1,15}})\|Loss:\s*({_NUM})")
_TENSOR = re.compile(rf"tensor\(\s*({_NUM})\s*(?:,\s*device='[^']*')?\s*\)")
_LEVELS = {"INFO", "DEBUG", "WARNING", "WARN", "ERROR", "CRITICAL", "TRACE", "NOTICE"}
_EVAL_PREFIX = re.compile(r"^(val|eval|valid|validation|test)([_/]|$)")
_EVAL_TAGS = {"val", "valid", "validation", "eval", "test"}


def _is_eval_key(key: str, cache: dict[str, bool]) -> bool:
    hit = cache.get(key)
    if hit is None:
        norm = normalise(key)
        role = role_of(key)
        # a bare `ppl` on a train line is a train perplexity, not an evaluation
        hit = bool(_EVAL_PREFIX.match(norm)) or (
            role is not None and role[0] == "eval_loss" and norm not in ("ppl", "perplexity")
        )
        cache[key] = hit
    return hit


def _looks_like_metrics(pairs: dict[str, float]) -> bool:
    """A line without a step worth a warning: several numbers, one of them a loss or a
    grad norm (not a config dump's `lr=0.01, weight_decay=0.05`)."""
    if len(pairs) < 2:
        return False
    for key in pairs:
        hit = role_of(key)
        if hit is not None and hit[0] in ("loss", "eval_loss", "grad_norm"):
            return True
    return False


def parse_pairs(text: str) -> dict[str, float]:
    """The numeric key/value pairs of one line (step token already removed)."""
    out: dict[str, float] = {}
    prev_end = 0
    for m in _PAIR.finditer(text):
        key = m.group(1)
        lead = _LEAD.search(text, prev_end, m.start(1))
        if lead is not None:
            words = lead.group(1).split()
            while words and words[0] in _LEVELS:
                words.pop(0)
            if words:
                key = " ".join(words) + " " + key
        value = m.group(2)
        # every spelling _NUM admits is one float() reads, once thousands separators are gone
        out[key] = float(value.replace(",", "") if "," in value else value)
        prev_end = m.end()
    return out


class RowTable:
    """Rows of one table in file order, with their columns in first-seen order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.lines: list[int] = []
        self.steps: list[int] = []
        self.columns: dict[str, None] = {}

    def add(self, step: int, values: dict[str, float], line: int) -> None:
        """Append a row; `values` is kept as is (callers hand over a fresh dict)."""
        self.rows.append(values)
        self.steps.append(step)
        self.lines.append(line)
        if not values.keys() <= self.columns.keys():  # set test in C; new keys are rare
            for k in values:
                self.columns.setdefault(k, None)

    def pop(self) -> None:
        self.rows.pop()
        self.steps.pop()
        self.lines.pop()


def row_columns(rows: Iterable[dict[str, float]]) -> dict[str, None]:
    """The keys of `rows` in first-seen order (an ordered set), the columns of their frame."""
    return {key: None for r in rows for key in r}


def frame_from_rows(
    rows: list[dict[str, float]], steps: list[int], columns: Iterable[str], step_column: str
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Float64 frame (missing cell = NaN) and the logged-NaN mask of each column."""
    n = len(rows)
    nan = float("nan")
    data: dict[str, np.ndarray] = {step_column: np.asarray(steps, dtype=np.int64)}
    masks: dict[str, np.ndarray] = {}
    for col in columns:
        if col == step_column:
            continue
        arr = np.fromiter((r.get(col, nan) for r in rows), dtype=np.float64, count=n)
        isnan = np.isnan(arr)
        if isnan.any():  # a NaN is logged where the key was there, missing where it was not
            present = np.fromiter((col in r for r in rows), dtype=bool, count=n)
            logged = isnan & present
            if logged.any():
                masks[col] = logged
        data[col] = arr
    return pd.DataFrame(data, index=pd.RangeIndex(n), copy=False), masks


def eval_frame_from_rows(
    rows: list[dict[str, float]], steps: list[int], columns: Iterable[str], step_column: str
) -> pd.DataFrame:
    """Eval rows as object columns for `build_run` to coerce (it takes no NaN mask for eval
    rows): a logged NaN is written as the word "nan", which it flags as logged, and a
    missing cell as None. (A float NaN would not do: pandas reads it back as missing.)"""
    data: dict[str, pd.Series] = {step_column: pd.Series(steps, dtype=np.int64)}
    for col in columns:
        if col != step_column:
            cells = [r.get(col) for r in rows]
            data[col] = pd.Series(
                ["nan" if v is not None and v != v else v for v in cells], dtype=object
            )
    return pd.DataFrame(data)


def records_log(path: Path, train: list[tuple[int, int, dict[str, float]]],
                evals: list[tuple[int, dict[str, float]]], warnings: list[str],
                sink: MessageSink) -> RawLog:
    """The RawLog of a log read as records: train records (line, step, values) and eval
    records (step, values), in file order (the OLMo and Composer readers)."""
    rows = [r for _, _, r in train]
    frame, masks = frame_from_rows(rows, [s for _, s, _ in train], row_columns(rows), STEP)
    eval_frame = None
    if evals:
        erows = [r for _, r in evals]
        eval_frame = eval_frame_from_rows(erows, [s for s, _ in evals], row_columns(erows),
                                          STEP)
    return RawLog(frame=frame, step_column=STEP, eval_frame=eval_frame,
                  eval_step_column=STEP, nan_mask=masks,
                  row_lines=np.asarray([no for no, _, _ in train], dtype=np.int64),
                  warnings=warnings + sink.warnings(path), messages=sink.messages)


def read_lines(path: Path) -> tuple[list[str], bool]:
    """The file's lines (split on newline only, so numbers match an editor's) and whether
    the file ends with a newline (if not, the last line may have been cut by a crash)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    ends_nl = text.endswith("\n")
    if ends_nl:
        lines.pop()
    return lines, ends_nl


def nano_log_lines(lines: list[str]) -> bool:
    """Whether the lines are a build-nanogpt `log.txt`: at least 3, and more than half of
    the non-blank ones `{step} train|val|hella {number}` (so that a file with the odd
    number-word-number line is not taken for one)."""
    hits = blank = 0
    for line in lines:
        if not line.strip():
            blank += 1
        elif _NANO_LOG.match(line):
            hits += 1
    return hits >= 3 and 2 * hits > len(lines) - blank


def _step_after(line: str, pos: int) -> re.Match[str] | None:
    """The first `step`/`global_step` token of `line` from `pos`. LitGPT prints both counters
    (`iter 400 step 100: loss 2.31, ...`): with gradient accumulation `iter` counts
    micro-batches and `step` optimizer steps, the counter its checkpoints are named by
    (`step-00000100`), so where a line has both, a restart step must be the `step`."""
    for t in _STEP.finditer(line, pos):
        if t.group(0).lower().startswith(("step", "global_step")):
            return t
    return None


def _step_of(line: str, last_train: int) -> tuple[int, str, str | None] | None:
    """(step, rest of the line without the step token, mmengine tag) or None."""
    logged = False
    if "num_updates" in line and "| epoch" in line:
        p = _FAIRSEQ_LOGGING.match(line)
        if p is not None:
            line, logged = line[p.end():], True
    if line.lstrip().startswith("|"):
        w = _WORDLM.match(line)
        if w is not None:
            batches = int(w.group(3))
            step = (int(w.group(1)) - 1) * batches + int(w.group(2))
            return step, line[w.end():], "batches"  # a train line (not an mmengine tag)
        e = _WORDLM_END.match(line)
        if e is not None:  # the evaluation after an epoch, at the train step reached
            return last_train, line[e.end():], "valid"
        if "num_updates" in line:
            u = _UPDATES.search(line)
            f = _FAIRSEQ.match(line)
            if f is not None:
                step = int(u.group(1)) if u is not None else \
                    (int(f.group(1)) - 1) * int(f.group(3)) + int(f.group(2))
                # since 0.10 the `train_inner` meters restart at every print: the values are
                # means over the log interval (before, over the epoch so far)
                return step, line[f.end():], "fairseq interval" if logged else "fairseq"
            g = _FAIRSEQ_END.match(line)
            if g is not None:
                step = int(u.group(1)) if u is not None else last_train
                # an evaluation's keys are named by its subset (`valid loss`), as printed
                return step, line[g.end():], \
                    f"subset {g.group(1)}" if g.group(1) else "fairseq summary"
    if "poch" in line or "Iter" in line:
        m = _MMENGINE.search(line)
        if m is not None:
            tag = (m.group(2) or "train").lower()
            a, total, inner, per_epoch = m.group(3, 4, 5, 6)
            if tag in _EVAL_TAGS:
                step = last_train  # an evaluation runs at the train step reached so far
            elif m.group(1) == "Epoch" and inner is not None:
                step = (int(a) - 1) * int(per_epoch) + int(inner)
            elif m.group(1) == "Epoch" and total is not None and "%|" in line and \
                    (count := _BAR_COUNT.search(line, m.end())) is not None:
                # a tqdm bar described `Epoch [E/N]` (ColossalAI's examples): the bar's count
                # is the batch, `| 40/100 [`, and the step (E - 1) x batches + batch
                return (int(a) - 1) * int(count.group(2)) + int(count.group(1)), \
                    line[count.end():], None
            else:
                step = int(a)
            return step, line[: m.start()] + " | " + line[m.end():], tag
    if "|Loss:" in line:
        tt = _TORCHTUNE.search(line)
        if tt is not None:
            # the number is followed by the bar's own `: 25%|`, not by a separator
            return int(tt.group(2)), f"loss {tt.group(3)} epoch {tt.group(1)} | " + \
                line[tt.end():].lstrip(":"), None
    m2 = _STEP.search(line)
    if m2 is not None and m2.group(0)[:4].lower() == "iter":
        m2 = _step_after(line, m2.end()) or m2
    if m2 is None:
        m2 = _WHOLE_STEP.search(line) if "=" in line else None
        if m2 is None:
            if "%|" in line and "poch" in line:
                # a Lightning bar without NeMo's global_step: `Epoch 2: ..| 40/100 [`, the
                # step epoch x batches + batch (the epoch counts from 0)
                bar, count = _PTL_BAR.match(line), _BAR_COUNT.search(line)
                if bar is not None and count is not None:
                    step = int(bar.group(1)) * int(count.group(2)) + int(count.group(1))
                    return step, line[count.end():], None
            return None
    return int(m2.group(1).replace(",", "")), line[: m2.start()] + " | " + line[m2.end():], None


def _bar_pairs(pairs: dict[str, float], epoch: int) -> dict[str, float]:
    """The values of a Lightning progress bar line, with its `Epoch N:` as `epoch`. The
    bar's own `loss` is Lightning's running mean (over the last 20 batches): when the line
    also has the step's loss (NeMo's `reduced_train_loss`), the mean is kept as `loss
    (running mean)`, last, so that it does not take the train loss role (it would smooth a
    one-step spike away)."""
    out = dict(pairs)
    out.setdefault("epoch", float(epoch))
    if "loss" in out and any("train_loss" in k for k in out):
        out["loss (running mean)"] = out.pop("loss")
    return out


def _bar_evals(pairs: dict[str, float], step: int, line: int, evals: RowTable,
               shown: dict[str, float], cache: dict[str, bool]) -> None:
    """Move a progress bar's eval values (`val_loss=`) out of its train values. The bar
    keeps showing the last validation on every step after it: an eval row is written only
    where they change (the first bar after each validation)."""
    ev = {k: v for k, v in pairs.items() if _is_eval_key(k, cache)}
    if not ev:
        return
    for k in ev:
        del pairs[k]
    changed = any(k not in shown or not (shown[k] == v or (v != v and shown[k] != shown[k]))
                  for k, v in ev.items())
    if changed:
        evals.add(step, ev, line)
        shown.update(ev)


#: (epoch, count within it, the epoch's length or None, whether the count restarts every
#: epoch by the format's definition rather than by what the log shows)
EpochCount = tuple[int, int, int | None, bool]


def _epoch_count(line: str) -> tuple[EpochCount, str] | None:
    """The epoch counter of a line whose count may restart every epoch, and the rest of the
    line, or None."""
    if line.startswith("["):
        c = _CIFAR.match(line)
        if c is not None:
            return (int(c.group(1)), int(c.group(2)), None, True), line[c.end():]
    if "poch" not in line:
        return None
    m = _LLAMA.search(line) if "Training Epoch" in line else None
    if m is not None:
        return (int(m.group(1)), int(m.group(2)), int(m.group(3)), True), \
            line[: m.start()] + " | " + line[m.end():]
    m = _MNIST.match(line)
    if m is not None:
        return (int(m.group(1)), int(m.group(2)), int(m.group(3)), True), line[m.end():]
    m = _EPOCH_COUNT.search(line)
    if m is None:
        return None
    if "iter" in m.group(0).lower() and _step_after(line, m.end()) is not None:
        return None  # LitGPT's `Epoch 1 | iter 400 step 100 |`: the step token decides
    total = int(m.group(3)) if m.group(3) is not None else None
    return (int(m.group(1)), int(m.group(2)), total, False), \
        line[: m.start()] + " | " + line[m.end():]


def _epoch_steps(counts: dict[int, EpochCount], steps: list[int]) -> None:
    """Make the counts of `counts` (train row -> its counter) run steps, in place, when they
    restart every epoch (by the format's definition, or seen going back at an epoch
    boundary): step (epoch - first) x the epoch's length + count, `first` 0 when the log
    prints an epoch 0 (older llama-recipes, Lightning), else 1; the length is the printed
    one, else the largest count (a step is then exact to within one print interval). A
    counter that goes on across epochs is the run's step already."""
    rows = sorted(counts)
    if not any(known for _, _, _, known in counts.values()) and \
            not any(counts[b][0] > counts[a][0] and counts[b][1] < counts[a][1]
                    for a, b in zip(rows, rows[1:], strict=False)):
        return
    first = 0 if min(e for e, _, _, _ in counts.values()) == 0 else 1
    largest = max(c for _, c, _, _ in counts.values())
    for r in rows:
        epoch, count, total, _ = counts[r]
        steps[r] = (epoch - first) * (total if total else largest) + count


def _add_split(values: dict[str, float], step: int, no: int, train: RowTable,
               evals: RowTable, cache: dict[str, bool]) -> RowTable | None:
    """Add one line's values as a train row and, for its evaluation keys, an eval row at the
    same step; the table added to last, if any."""
    last = None
    for is_eval, target in ((False, train), (True, evals)):
        part = {k: v for k, v in values.items() if _is_eval_key(k, cache) == is_eval}
        if part:
            target.add(step, part, no)
            last = target
    return last


def _split_by_key(rows: RowTable, cache: dict[str, bool]) -> tuple[RowTable, RowTable]:
    """A log whose every line with a step has an evaluation key (`epoch 0 step 5 train_loss
    2.1 val_loss 2.3`, a script that prints its last validation on every line): there are
    no train lines to keep its numbers apart from, so its other keys are the train rows."""
    train, evals = RowTable(), RowTable()
    for step, row, no in zip(rows.steps, rows.rows, rows.lines, strict=True):
        _add_split(row, step, no, train, evals, cache)
    return train, evals


class TextReader:
    name = "text"
    description = "generic key-value text logs (nanoGPT, llm.c, modded-nanogpt, mmengine)"

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir() or not head or looks_binary(head):
            return 0.0
        head_lines = head.decode("utf-8", errors="replace").split("\n")[:400]
        if nano_log_lines(head_lines[:-1] if len(head_lines) > 1 else head_lines):
            return 0.6  # the whole head is build-nanogpt log.txt lines
        for i, line in enumerate(head_lines):
            if not any(c.isdigit() for c in line):
                continue
            if line.startswith("Epoch ") and _KERAS_EPOCH.match(line) and i + 1 < len(
                    head_lines) and _KERAS_LINE.match(head_lines[i + 1]) and "loss" in \
                    parse_pairs(head_lines[i + 1]):
                return 0.2  # Keras fit() output
            ec = _epoch_count(line)
            if ec is not None and parse_pairs(ec[1]):
                return 0.2
            hit = _step_of(line, 0)
            if hit is not None and parse_pairs(hit[1]):
                return 0.2
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        lines, ends_nl = read_lines(path)
        train, evals = RowTable(), RowTable()
        eval_cache: dict[str, bool] = {}
        stepless: list[int] = []
        last_train = 0
        last_kind: RowTable | None = None
        sink = MessageSink()  # error, warning and checkpoint lines (issue 14)
        # the head decides first (as the sniff does), so other logs pay for 400 lines only
        nano = nano_log_lines(lines[:400]) and nano_log_lines(lines)
        summaries: list[int] = []  # fairseq end-of-epoch summary lines
        bar_evals: dict[str, float] = {}  # the eval values a progress bar last showed
        averaged = False
        keras_epoch: int | None = None  # the `Epoch E/N` line before a Keras progress line
        counts: dict[int, EpochCount] = {}  # train row -> its epoch counter
        follows: dict[int, int] = {}  # eval row -> the train row whose step it takes
        by_key = 0  # eval rows that are eval rows for an evaluation key alone
        for no, full in enumerate(lines, start=1):
            # a progress bar redrawn with carriage returns: each redraw is read, in order
            # (the last one of a step wins, as for any repeated step)
            segments = full.split("\r") if "\r" in full and "\r" in full.rstrip("\r") \
                else (full,)
            for line in segments:
                if line.startswith("Epoch "):
                    ke = _KERAS_EPOCH.match(line)
                    if ke is not None:
                        keras_epoch = int(ke.group(1))
                        continue
                if keras_epoch is not None and _KERAS_LINE.match(line):
                    pairs = parse_pairs(line)
                    if pairs:
                        last_kind = _add_split(pairs, keras_epoch, no, train, evals, eval_cache)
                        last_train = keras_epoch
                        continue
                if nano:
                    n = _NANO_LOG.match(line)
                    if n is not None:
                        kind = n.group(2)
                        target = train if kind == "train" else evals
                        target.add(int(n.group(1)), {_NANO_KEYS[kind]: float(n.group(3))}, no)
                        last_kind = target
                        continue
                ec = _epoch_count(line) if "poch" in line or line.startswith("[") else None
                if ec is not None:
                    counter, rest = ec
                    pairs = parse_pairs(rest)
                    pairs.pop(STEP, None)
                    # a line with an evaluation key goes the general way (to the eval table)
                    if pairs and not any(_is_eval_key(k, eval_cache) for k in pairs):
                        counts[len(train.rows)] = counter
                        train.add(counter[1], {**pairs, "epoch": float(counter[0])}, no)
                        last_kind, last_train = train, counter[1]
                        continue
                # the evaluations printed without a step, at the train step reached so far:
                # mnist's `Test set: Average loss: ..`, llama-recipes' `eval_..=tensor(..)`
                ev = None
                if train.rows and line.startswith("Test set: ") and _MNIST_TEST.match(line):
                    ev = parse_pairs(line[len("Test set: Average "):])
                    ev = {"test loss": ev["loss"]} if "loss" in ev else None
                elif train.rows and "=tensor(" in line:
                    ev = parse_pairs(_TENSOR.sub(r"\1", line))
                    ev = ev if ev and all(_is_eval_key(k, eval_cache) for k in ev) else None
                if ev is not None:
                    evals.add(last_train, ev, no)
                    follows[len(evals.rows) - 1] = len(train.rows) - 1
                    last_kind = evals
                    continue
                hit = _step_of(line, last_train)
                if hit is None:
                    sink.feed(line, no, last_train if train.rows else None)
                    # not a metric row; remember it only if it carries several numbers
                    if len(line) > 3 and any(c.isdigit() for c in line) and \
                            _looks_like_metrics(parse_pairs(line)):
                        stepless.append(no)
                    continue
                step, rest, tag = hit
                pairs = parse_pairs(rest)
                pairs.pop(STEP, None)
                if tag is not None and tag.startswith(("fairseq", "subset ")) and \
                        "num_updates" in pairs:
                    del pairs["num_updates"]  # fairseq's step counter, read as the step
                if tag == "fairseq summary":
                    summaries.append(no)  # the epoch's means, not one step's values
                    continue
                if tag is not None and tag.startswith("subset "):
                    pairs = {f"{tag[7:]} {k}": v for k, v in pairs.items()}
                    tag = "valid"
                if not pairs:
                    continue
                is_bar = False
                if tag is None and "poch" in line:
                    bar = _PTL_BAR.match(line)
                    if bar is not None:
                        is_bar = True
                        pairs = _bar_pairs(pairs, int(bar.group(1)))
                        _bar_evals(pairs, step, no, evals, bar_evals, eval_cache)
                elif tag in ("batches", "fairseq interval"):  # the mean since the last print
                    averaged = True
                is_eval = tag in _EVAL_TAGS if tag is not None else \
                    not is_bar and any(_is_eval_key(k, eval_cache) for k in pairs)
                target = evals if is_eval else train
                target.add(step, pairs, no)
                last_kind = target
                if not is_eval:
                    last_train = step
                elif tag is None:
                    by_key += 1
        if counts:
            _epoch_steps(counts, train.steps)
            for er, tr in follows.items():
                evals.steps[er] = train.steps[tr]
        if not train.rows and by_key and by_key == len(evals.rows):
            train, evals = _split_by_key(evals, eval_cache)
            if not train.rows:
                # evaluation values alone (`step 5 val_loss 2.3`): one table, as a CSV of
                # them is read, and the verdict says there is no train loss
                train, evals = evals, RowTable()
            last_kind = train
        warnings: list[str] = []
        # A last line without its newline may have been cut mid-write: if it has fewer
        # values than the row before it of the same kind, it is torn; drop it.
        if not ends_nl and last_kind is not None and last_kind.lines and \
                last_kind.lines[-1] == len(lines) and len(last_kind.rows) > 1 and \
                len(last_kind.rows[-1]) < len(last_kind.rows[-2]):
            warnings.append(skip_warning(path, 1, "truncated line(s)", [len(lines)]))
            last_kind.pop()
        if not train.rows and not evals.rows:
            raise LogFormatError(
                f"{path}: no lines with a step number and key: value metrics found"
            )
        folded = fold_table(train, lines, path)  # several ranks: rank<N>/<key> columns
        if folded is not None:
            warnings.append(folded)
        if summaries:
            warnings.append(skip_warning(
                path, len(summaries), "fairseq end-of-epoch summary line(s) (means over the "
                "epoch, not one step's values)", summaries))
        if stepless:
            warnings.append(
                skip_warning(path, len(stepless), "line(s) with metrics but no step", stepless)
            )
        frame, masks = frame_from_rows(train.rows, train.steps, train.columns, STEP)
        row_lines = np.asarray(train.lines, dtype=np.int64)
        # lines of different kinds can count steps differently (DeepSpeed's `step=` next to
        # DeepSpeed-Chat's `step:`): restarts are where a key's own steps go back
        steps = frame[STEP].to_numpy()
        order = None
        if len(steps) > 1 and not bool(np.all(steps[1:] >= steps[:-1])):
            order = series_order(steps, {c: frame[c].notna().to_numpy() | masks.get(c, False)
                                         for c in frame.columns if c != STEP})
        if order is not None:
            frame = frame.iloc[order].reset_index(drop=True)
            masks = {c: m[order] for c, m in masks.items()}
            row_lines = row_lines[order]
        eval_frame = eval_frame_from_rows(evals.rows, evals.steps, evals.columns, STEP) \
            if evals.rows else None
        return [RawLog(
            frame=frame,
            step_column=STEP,
            eval_frame=eval_frame,
            eval_step_column=STEP,
            nan_mask=masks,
            row_lines=row_lines,
            warnings=warnings + sink.warnings(path),
            messages=sink.messages,
            averaged=averaged,
        )]


READERS.add("text", TextReader())
