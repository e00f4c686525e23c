"""Small REAL training runs on a CPU, faults injected by mechanism, labelled like the bench.

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install /opt/wheels/torch-*.whl numpy   # a CPU wheel, by path
    /work/venv-torch/bin/python benchmarks/real_runs.py OUT_DIR [--set v1..v5|all] [--only ID]

torch is a tool of this benchmark only, never a dependency of spikelens (`pip install torch`
with the CPU index, or a CPU wheel by path; without it the script stops with a one-line
hint). Every run trains a model for real, one thread, on CPU: an MLP classifier on a
noisy-teacher task (Gaussian inputs, labels from a random two-layer teacher with Gumbel label
noise, so the loss has a floor), or a tiny causal transformer (2 layers, d = 48) on
synthetic text from a seeded first-order Markov source (so the loss has a known entropy
floor and the run never depends on a corpus file). Faults are mechanisms, not curves: the
labels of a batch shuffled, its tokens replaced by random ones, its inputs scaled out of
distribution, an LR multiplied, a cosine schedule restarted, an LR too high for the model,
NaN/inf written into an input, an fp16 forward emulated (any activation above 65504 is an
overflow) behind a dynamic loss scaler with GradScaler's logic on the real gradients, a
learning rate of 1e-7, dead ReLUs, a deep sigmoid stack, a run killed and resumed from an
earlier checkpoint. Each run is written in the shared bench's layout
(`OUT/runs/<id>/<file>` + `OUT/labels.json`, same fields) in one of the formats real
trainers write (CSV, JSONL, a Megatron-LM text log, a HuggingFace `trainer_state.json`),
and labelled by `labelled.label_event`: the bench's rule, one implementation for both
generators. A fault whose loss never leaves the band of the 100 steps before it is drawn
again with the next seed (the seed used is recorded). The run sets are fixed lists (`SETS`)
so the committed data can be regenerated exactly: same seeds, same torch build (CPU kernels
are deterministic with one thread; another torch version may move the last digits)."""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labelled import _fmt as _num  # noqa: E402  one number format for both generators
from labelled import label_event  # noqa: E402  the bench's labelling rule, not a second one

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
    _Module = nn.Module
except ImportError:  # pragma: no cover - the hint is the point
    torch = None  # type: ignore[assignment]
    _Module = object  # the model classes are defined, never built, without torch

HINT = ("real_runs.py needs torch (a benchmark-only tool): python3 -m venv /work/venv-torch && "
        "/work/venv-torch/bin/pip install /opt/wheels/torch-*.whl numpy (or torch from "
        "https://download.pytorch.org/whl/cpu)")

FP16_MAX = 65504.0


# ---------------------------------------------------------------------------------------
# what a run is
# ---------------------------------------------------------------------------------------
@dataclass
class Job:
    rid: str
    family: str
    seed: int
    notes: str
    model: str = "mlp"  # mlp | lm | deep (a 12-layer sigmoid stack)
    opt: str = "adamw"  # adamw | sgd (momentum 0.9)
    lr: float = 1e-3
    batch: int = 32
    steps: int = 2000
    warmup: int = 0
    decay: str = "cos"  # cos | const
    lr_fn: Callable[[int, float], float] | None = None  # (step, scheduled lr) -> lr
    torch_cosine: int | None = None  # CosineAnnealingLR(T_max=...) stepped every step
    order: str = "shuffle"  # shuffle | fixed (no shuffling) | sorted (by class, no shuffling)
    n_train: int = 20000
    hidden: int = 128
    fault: str | None = None  # labels | tokens | ood | nan | inf | fp16_storm
    fault_step: int | None = None
    fault_len: int = 1
    fault_frac: float = 1.0  # share of the batch the fault touches
    nan_guard: bool = True  # skip the update on a non-finite loss (Megatron/DeepSpeed do)
    amp: bool = False
    amp_growth: int = 200
    clip: float | None = 1.0
    dead_relu: bool = False
    eval_every: int | None = None
    fmt: str = "csv"  # csv | jsonl | megatron_log | hf_trainer_state
    resume: tuple[int, int] | None = None  # (checkpoint step, last step before the kill)
    cause: str | None = None
    oscillating: bool = False
    osc_cause: str | None = None
    for_good: bool = False  # label a climb to the end: from where it leaves the band for good


@dataclass
class Log:
    rows: list[dict[str, float]] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # index of each segment's first row


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
D_IN, N_CLASS, VOCAB, CTX = 32, 10, 32, 32
TEACHER_SCALE = 8.0  # teacher logits scale: the label noise, so the loss floor


class Teacher:
    """Noisy-teacher classification: x ~ N(0, I), y = argmax(teacher(x) + Gumbel noise)."""

    def __init__(self, seed: int, n: int) -> None:
        g = torch.Generator().manual_seed(seed)
        w1 = torch.randn(D_IN, 64, generator=g) / math.sqrt(D_IN)
        w2 = torch.randn(64, N_CLASS, generator=g) * TEACHER_SCALE / math.sqrt(64)
        def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(k, D_IN, generator=g)
            u = torch.rand(k, N_CLASS, generator=g).clamp_min(1e-9)
            y = (torch.tanh(x @ w1) @ w2 - torch.log(-torch.log(u))).argmax(1)
            return x, y
        self.x, self.y = draw(n)
        self.ex, self.ey = draw(1024)


class Markov:
    """Text from a seeded first-order Markov source over VOCAB symbols (sparse rows:
    an entropy floor near 1.3 nats), cut into CTX-token windows."""

    def __init__(self, seed: int, n: int) -> None:
        rng = np.random.default_rng(seed)
        p = rng.dirichlet(np.full(VOCAB, 0.15), VOCAB)
        cum = np.cumsum(p, 1)
        length = n + CTX + 1 + 1024 * (CTX + 1)
        u = rng.random(length)
        seq = np.empty(length, np.int64)
        s = 0
        for i in range(length):
            s = min(int(np.searchsorted(cum[s], u[i])), VOCAB - 1)
            seq[i] = s
        t = torch.from_numpy(seq)
        idx = torch.arange(n)[:, None] + torch.arange(CTX + 1)[None, :]
        win = t[idx]
        self.x, self.y = win[:, :-1], win[:, 1:]
        off = n + CTX + 1
        ev = t[off:off + 1024 * (CTX + 1)].view(1024, CTX + 1)
        self.ex, self.ey = ev[:, :-1], ev[:, 1:]


class Sampler:
    """Index batches: a fresh permutation per epoch (shuffle), or the stored order every
    epoch (fixed; sorted = the dataset stored sorted by class, a classic unshuffled bug)."""

    def __init__(self, n: int, batch: int, order: str, seed: int, y: torch.Tensor) -> None:
        self.n, self.batch, self.order = n, batch, order
        self.g = torch.Generator().manual_seed(seed)
        self.base = torch.argsort(y, stable=True) if order == "sorted" else torch.arange(n)
        self.perm = self._epoch()
        self.pos = 0

    def _epoch(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.g) if self.order == "shuffle" else self.base

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.perm, self.pos = self._epoch(), 0
        out = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return out


# ---------------------------------------------------------------------------------------
# models (forward returns the logits and the largest |activation|, for the fp16 emulation)
# ---------------------------------------------------------------------------------------
class MLP(_Module):  # type: ignore[misc,valid-type]
    def __init__(self, hidden: int, depth: int = 2, act: str = "relu") -> None:
        super().__init__()
        dims = [D_IN] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.out = nn.Linear(dims[-1], N_CLASS)
        self.act = torch.relu if act == "relu" else torch.sigmoid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        amax = 0.0
        for lin in self.layers:
            x = self.act(lin(x))
            amax = max(amax, float(x.detach().abs().max()))
        y = self.out(x)
        return y, max(amax, float(y.detach().abs().max()))


class TinyLM(_Module):  # type: ignore[misc,valid-type]
    def __init__(self, d: int = 48) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(CTX, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CTX))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        h = self.enc(self.tok(x) + self.pos, mask=self.mask, is_causal=True)
        y = self.head(h)
        return y, float(y.detach().abs().max())


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _sched(job: Job, step: int) -> float:
    """Warmup then cosine to 10 % (or constant), then the job's own LR rule on top."""
    lr = job.lr * min(1.0, step / job.warmup) if job.warmup else job.lr
    if job.decay == "cos" and step > job.warmup:
        t = (step - job.warmup) / max(1, job.steps - job.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return job.lr_fn(step, lr) if job.lr_fn else lr


def _corrupt(job: Job, x: torch.Tensor, y: torch.Tensor,
             g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(1, round(job.fault_frac * len(x)))
    x, y = x.clone(), y.clone()
    if job.fault == "labels":  # the labels of the batch shuffled against its inputs
        y[:k] = torch.randint(0, N_CLASS, (k,), generator=g)
    elif job.fault == "tokens":  # a corrupt shard: random tokens
        x[:k] = torch.randint(0, VOCAB, x[:k].shape, generator=g)
        y[:k] = torch.randint(0, VOCAB, y[:k].shape, generator=g)
    elif job.fault == "ood":  # unnormalised features (another pipeline's scale)
        x[:k] = x[:k] * 12.0 + 4.0
    elif job.fault in ("nan", "inf"):  # one corrupt value in one sample's input
        x[0, int(torch.randint(0, D_IN, (1,), generator=g))] = (
            float("nan") if job.fault == "nan" else float("inf"))
    elif job.fault == "fp16_storm":  # raw, unscaled features: fp16 activations overflow
        x[:k] = x[:k] * 3.0e4
    return x, y


def _new(job: Job, seed: int) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    if job.model == "lm":
        model: nn.Module = TinyLM()
    elif job.model == "deep":
        model = MLP(64, depth=12, act="sigmoid")
    else:
        model = MLP(job.hidden)
    if job.dead_relu:  # a bad init: every first-layer unit starts (and stays) dead
        with torch.no_grad():
            model.layers[0].bias.fill_(-20.0)
    if job.opt == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=0.01)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.torch_cosine,
                                                        eta_min=job.lr * 0.05)
             if job.torch_cosine else None)
    return model, opt, sched


def train(job: Job, seed: int) -> Log:
    torch.set_num_threads(1)
    data: Teacher | Markov = (Markov(seed, job.n_train) if job.model == "lm"
                              else Teacher(seed, job.n_train))
    n_out = VOCAB if job.model == "lm" else N_CLASS
    model, opt, sched = _new(job, seed)
    sampler = Sampler(job.n_train, job.batch, job.order, seed + 7, data.y if job.model != "lm"
                      else torch.zeros(job.n_train))
    gfault = torch.Generator().manual_seed(seed + 11)
    per_sample = CTX if job.model == "lm" else 1
    log = Log(segments=[0])
    scale, good = 2.0 ** 16, 0
    ckpt: Any = None
    step = 1
    last = job.steps
    if job.resume:
        last = job.resume[1]
    while step <= last:
        if job.resume and step == job.resume[0]:  # the checkpoint the run will go back to
            ckpt = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
                    scale, good)
        idx = sampler.next()
        x, y = data.x[idx], data.y[idx]
        faulty = (job.fault is not None and job.fault_step is not None
                  and job.fault_step <= step < job.fault_step + job.fault_len
                  and len(log.segments) == 1)
        if faulty:
            x, y = _corrupt(job, x, y, gfault)
        lr = opt.param_groups[0]["lr"] if sched else _sched(job, step)
        for pg in opt.param_groups:
            pg["lr"] = lr
        opt.zero_grad(set_to_none=True)
        logits, amax = model(x)
        loss = F.cross_entropy(logits.reshape(-1, n_out), y.reshape(-1))
        lv = float(loss.detach())
        row: dict[str, float] = {"step": step, "lr": lr}
        skipped = 0
        gn = math.nan
        if job.amp and amax > FP16_MAX:
            lv = math.nan  # the fp16 forward overflowed: inf activations, NaN loss
        if not math.isfinite(lv) and (job.amp or job.nan_guard):
            skipped = 1  # nothing to step with: the update is skipped
        else:
            (loss * scale if job.amp else loss).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if job.amp:
                over = any(not bool(torch.isfinite(gr).all()) or float(gr.abs().max()) > FP16_MAX
                           for gr in grads)
                for gr in grads:
                    gr.div_(scale)
                if over:
                    skipped = 1
            if not skipped:
                gn = float(nn.utils.clip_grad_norm_(model.parameters(),
                                                    job.clip if job.clip else math.inf))
                opt.step()
        if job.amp:
            # GradScaler: halve on an overflow (the step is skipped), double after
            # `amp_growth` good steps in a row
            if skipped:  # DeepSpeed's default floor: min_loss_scale 1
                scale, good = max(1.0, scale / 2), 0
            else:
                good += 1
                if good % job.amp_growth == 0:
                    scale *= 2
            row["loss_scale"] = scale
            row["skipped"] = skipped
        elif job.fault in ("nan", "inf"):
            row["skipped"] = skipped
        if sched is not None:
            sched.step()
        row["loss"] = lv
        row["grad_norm"] = gn
        row["samples" if job.model != "lm" else "tokens"] = float(
            step * job.batch * per_sample)
        if job.eval_every and step % job.eval_every == 0:
            with torch.no_grad():
                el, _ = model(data.ex)
                row["eval_loss"] = float(F.cross_entropy(el.reshape(-1, n_out),
                                                         data.ey.reshape(-1)))
        log.rows.append(row)
        if job.resume and step == job.resume[1] and len(log.segments) == 1:
            # killed here; restarted from the checkpoint, with a fresh data order
            model.load_state_dict(ckpt[0])
            opt.load_state_dict(ckpt[1])
            scale, good = ckpt[2], ckpt[3]
            sampler = Sampler(job.n_train, job.batch, job.order, seed + 1007,
                              torch.zeros(job.n_train))
            log.segments.append(len(log.rows))
            step = job.resume[0] + 1
            last = job.steps
            continue
        step += 1
    return log


# ---------------------------------------------------------------------------------------
# writing, in the formats real trainers write
# ---------------------------------------------------------------------------------------
def _cols(rows: list[dict[str, float]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    order = ["step", "loss", "lr", "grad_norm", "samples", "tokens", "loss_scale", "skipped",
             "eval_loss"]
    return [k for k in order if k in names]


def write(out: Path, job: Job, log: Log) -> dict[str, Any]:
    d = out / "runs" / job.rid
    d.mkdir(parents=True, exist_ok=True)
    rows = log.rows
    segs = log.segments + [len(rows)]
    names = _cols(rows)
    ints = ("step", "samples", "tokens", "skipped")
    if job.fmt == "csv":
        lines: list[str] = []
        for a, b in zip(segs, segs[1:], strict=False):
            lines.append(",".join(names))  # a resumed job appends its header again
            for r in rows[a:b]:
                lines.append(",".join(
                    "" if k not in r or (k == "grad_norm" and math.isnan(r[k]) and r.get(
                        "skipped")) else str(int(r[k])) if k in ints else _num(r[k])
                    for k in names))
        (d / "train_log.csv").write_text("\n".join(lines) + "\n")
        return {"file": f"runs/{job.rid}/train_log.csv", "format": "csv"}
    if job.fmt == "jsonl":
        out_lines: list[str] = []
        for si, (a, b) in enumerate(zip(segs, segs[1:], strict=False)):
            for r in rows[a:b]:
                rec: dict[str, Any] = {}
                for k in names:
                    if k not in r or (k == "grad_norm" and math.isnan(r[k])
                                      and r.get("skipped")):
                        continue
                    v = r[k]
                    rec[k] = int(v) if k in ints else v
                out_lines.append(json.dumps(rec))
            if si < len(segs) - 2:  # the crash cut the last record mid-write
                out_lines.append(out_lines[-1][: len(out_lines[-1]) // 2])
        (d / "metrics.jsonl").write_text("\n".join(out_lines) + "\n")
        return {"file": f"runs/{job.rid}/metrics.jsonl", "format": "jsonl"}
    if job.fmt == "megatron_log":
        lines = ["using world size: 1, data-parallel size: 1, tensor-model-parallel size: 1",
                 "------------------------ arguments ------------------------",
                 f"  global_batch_size ............................... {job.batch}",
                 f"  train_iters ..................................... {job.steps}",
                 "-------------------- end of arguments ---------------------"]
        nan_count = 0
        skip_count = 0
        for r in rows:
            st = int(r["step"])
            sk = int(r.get("skipped", 0))
            skip_count = sk
            fin = math.isfinite(r["loss"])
            nan_count = 0 if fin else 1
            parts = [f" iteration {st:8d}/{job.steps:8d} |",
                     f" consumed samples: {int(st * job.batch):12d} |",
                     f" learning rate: {r['lr']:.6E} |",
                     f" global batch size: {job.batch:5d} |"]
            if not sk or not job.amp:
                parts.append(f" lm loss: {r['loss']:.6E} |")
            parts.append(f" loss scale: {r.get('loss_scale', 1.0):.1f} |")
            if not sk:
                parts.append(f" grad norm: {r['grad_norm']:.3f} |")
            parts.append(f" number of skipped iterations: {skip_count:3d} |")
            parts.append(f" number of nan iterations: {nan_count:3d} |")
            lines.append("".join(parts))
            if "eval_loss" in r:
                ev = r["eval_loss"]
                lines.append("-" * 100)
                lines.append(f" validation loss at iteration {st} | lm loss value: {ev:.6E} | "
                             f"lm loss PPL: {math.exp(min(ev, 50)):.6E} | ")
                lines.append("-" * 100)
        (d / "train.log").write_text("\n".join(lines) + "\n")
        return {"file": f"runs/{job.rid}/train.log", "format": "megatron_log"}
    # HuggingFace trainer_state.json: loss rounded to 4 decimals, eval rows mixed in
    per_epoch = job.n_train / job.batch
    hist: list[dict[str, Any]] = []
    for r in rows:
        st = int(r["step"])
        ep = round(st / per_epoch, 4)
        e: dict[str, Any] = {"epoch": ep, "learning_rate": r["lr"],
                             "loss": round(r["loss"], 4) if math.isfinite(r["loss"])
                             else r["loss"], "step": st}
        if math.isfinite(r["grad_norm"]) or not r.get("skipped"):
            e["grad_norm"] = r["grad_norm"]
        hist.append(e)
        if "eval_loss" in r:
            hist.append({"epoch": ep, "eval_loss": r["eval_loss"], "step": st})
    state = {"best_metric": None, "epoch": round(job.steps / per_epoch, 4),
             "eval_steps": job.eval_every or 500, "global_step": job.steps,
             "log_history": hist, "logging_steps": 1, "max_steps": job.steps,
             "num_train_epochs": math.ceil(job.steps / per_epoch), "save_steps": 500,
             "train_batch_size": job.batch}
    (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return {"file": f"runs/{job.rid}/trainer_state.json", "format": "hf_trainer_state"}


# ---------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------
def logged(fmt: str, v: float) -> float:
    """A loss as the format writes it."""
    if not math.isfinite(v):
        return v
    if fmt == "hf_trainer_state":
        return round(v, 4)
    if fmt == "megatron_log":
        return float(f"{v:.6E}")
    return v


def label(job: Job, log: Log, info: dict[str, Any], seed: int) -> dict[str, Any] | None:
    rows = log.rows
    first = rows[: log.segments[1]] if len(log.segments) > 1 else rows
    steps = np.array([r["step"] for r in first], dtype=np.int64)
    # the rule reads the loss as the log holds it (HF rounds to 4 decimals, Megatron prints
    # 7 digits), so the labels agree with what any reader of the file sees
    loss = np.array([logged(job.fmt, r["loss"]) for r in first], dtype=np.float64)
    events = []
    if job.fault_step is not None and job.cause is not None:
        ev = label_event(steps, loss, job.fault_step, for_good=job.for_good)
        if ev is None:
            return None  # the fault never left the band: draw again
        ev["cause"] = job.cause
        if len(log.segments) > 1:
            last = int(steps[-1])
            ev["end"] = min(ev["end"], last)
            ev["superseded"] = True
            ev["recovered"] = ev["recovered"] and ev["end"] < last
        events.append(ev)
    return {
        **info, "segments": len(log.segments),
        "scenario": f"{job.family}_{job.osc_cause or job.cause or 'none'}",
        "family": job.family, "seed": seed, "events": events,
        "causes": [job.cause] if job.cause and events else ["none"],
        "verdict": job.cause if events else "none",
        "oscillating": job.oscillating, "oscillation_cause": job.osc_cause,
        "notes": job.notes, "last_step": int(rows[-1]["step"]), "steps_logged": len(rows),
        "amp": job.amp, "has_nonfinite_loss": bool(any(not math.isfinite(r["loss"])
                                                       for r in rows)),
        "real_training": {"model": job.model, "optimizer": job.opt, "batch": job.batch,
                          "peak_lr": job.lr, "data_order": job.order,
                          "torch": str(torch.__version__)},
    }


# ---------------------------------------------------------------------------------------
# the families (each builder: a seeded rng and a variant number -> a Job)
# ---------------------------------------------------------------------------------------
Rng = np.random.Generator


def clean(rid: str, seed: int, v: int, rng: Rng) -> Job:
    kinds = [
        dict(model="mlp", opt="sgd", lr=0.05, batch=8, warmup=100, notes="clean MLP, SGD+momentum, "
             "batch 8, warmup + cosine"),
        dict(model="lm", opt="adamw", lr=3e-3, batch=16, warmup=100, steps=1500, eval_every=100,
             notes="clean tiny transformer, AdamW, 16x32 tokens, warmup + cosine, eval every 100"),
        dict(model="mlp", opt="adamw", lr=1e-3, batch=128, decay="const",
             notes="clean MLP, AdamW, batch 128, constant LR"),
        dict(model="mlp", opt="adamw", lr=2e-3, batch=32, warmup=200, resume=(900, 1150),
             notes="clean MLP, killed after step 1150, resumed from the step-900 checkpoint"),
        dict(model="mlp", opt="sgd", lr=0.02, batch=64, decay="const", eval_every=50,
             notes="clean MLP, SGD+momentum, batch 64, constant LR, eval every 50"),
        dict(model="lm", opt="sgd", lr=0.3, batch=8, warmup=50, steps=1500,
             notes="clean tiny transformer, SGD+momentum, 8x32 tokens, warmup + cosine"),
    ]
    k = kinds[v % len(kinds)]
    return Job(rid, "clean", seed, **k)  # type: ignore[arg-type]


def osc(rid: str, seed: int, v: int, rng: Rng) -> Job:
    kind = v % 5
    if kind == 0:  # triangular cyclic LR, SGD: the loss rises with the LR
        per = int(rng.integers(150, 300))
        lo, hi = 0.01, float(rng.uniform(0.25, 0.4))

        def tri(step: int, lr: float) -> float:
            ph = (step % per) / per
            return lo + (hi - lo) * (1 - abs(2 * ph - 1))
        return Job(rid, "osc", seed, f"triangular cyclic LR {lo}-{hi:.2f}, period {per}, SGD, "
                   "batch 128", opt="sgd", batch=128, lr_fn=tri, oscillating=True,
                   osc_cause="cyclic_lr")
    if kind == 1:  # CosineAnnealingLR with T_max in epochs, stepped per batch
        tmax = int(rng.integers(100, 160))
        return Job(rid, "osc", seed, f"CosineAnnealingLR(T_max={tmax}) stepped every batch: "
                   f"the LR cycles every {2 * tmax} steps, AdamW, batch 128", opt="adamw",
                   lr=float(rng.uniform(0.02, 0.04)), batch=128, torch_cosine=tmax,
                   oscillating=True, osc_cause="cyclic_lr")
    if kind == 2:  # epoch sawtooth: a small dataset sorted by class, never shuffled
        b = int(rng.choice([16, 32]))
        n = b * int(rng.integers(40, 80))
        return Job(rid, "osc", seed, f"{n} samples stored sorted by class, iterated without "
                   f"shuffling: {n // b}-step epochs", opt="adamw", lr=3e-3, batch=b,
                   n_train=n, order="sorted", decay="const", oscillating=True,
                   osc_cause="data_order")
    if kind == 3:  # tiny batches
        b = int(rng.choice([2, 3, 4]))
        return Job(rid, "osc", seed, f"batch of {b}: very noisy loss", opt="adamw", lr=1e-3,
                   batch=b, warmup=100, oscillating=True, osc_cause="batch_noise")
    # a small LM dataset iterated in a fixed order
    b = 16
    n = b * int(rng.integers(30, 60))
    return Job(rid, "osc", seed, f"tiny transformer, {n} windows in a fixed order (no "
               f"shuffling): {n // b}-step epochs", model="lm", opt="adamw", lr=3e-3, batch=b,
               n_train=n, order="fixed", decay="const", steps=1500, oscillating=True,
               osc_cause="data_order")


def bb(rid: str, seed: int, v: int, rng: Rng) -> Job:
    kind = v % 4
    f = int(rng.integers(600, 1400))
    if kind == 0:
        return Job(rid, "bb", seed, f"step {f}: one batch with its labels shuffled",
                   opt="adamw", lr=2e-3, batch=int(rng.choice([32, 64])), warmup=100,
                   fault="labels", fault_step=f, cause="bad_batch")
    if kind == 1:
        return Job(rid, "bb", seed, f"step {f}: one batch of random tokens", model="lm",
                   opt="adamw", lr=3e-3, batch=16, warmup=100, steps=1600, fault="tokens",
                   fault_step=f, cause="bad_batch", eval_every=100)
    if kind == 2:
        return Job(rid, "bb", seed, f"step {f}: one batch of unnormalised (out-of-distribution) "
                   "inputs", opt="sgd", lr=0.05, batch=32, warmup=100, fault="ood",
                   fault_step=f, cause="bad_batch")
    m = int(rng.integers(5, 41))
    frac = float(rng.choice([0.5, 1.0]))
    if rng.random() < 0.5:
        return Job(rid, "bb", seed, f"steps {f}-{f + m - 1}: a bad shard ({frac:.0%} of each "
                   "batch: random tokens)", model="lm", opt="adamw", lr=3e-3, batch=16,
                   warmup=100, steps=1600, fault="tokens", fault_step=f, fault_len=m,
                   fault_frac=frac, cause="bad_batch")
    return Job(rid, "bb", seed, f"steps {f}-{f + m - 1}: a bad shard ({frac:.0%} of each batch: "
               "labels shuffled)", opt="adamw", lr=2e-3, batch=64, warmup=100, fault="labels",
               fault_step=f, fault_len=m, fault_frac=frac, cause="bad_batch")


def lr(rid: str, seed: int, v: int, rng: Rng) -> Job:
    f = int(rng.integers(700, 1300))
    if v % 2 == 0:
        k = float(rng.uniform(8, 30))
        model = "lm" if v % 4 == 2 else "mlp"

        def jump(step: int, x: float) -> float:
            return x * k if step >= f else x
        return Job(rid, "lr", seed, f"from step {f} the LR is x{k:.1f} (a config typo on "
                   "restart)", model=model, opt="adamw", lr=1e-3, batch=32 if model == "mlp"
                   else 16, warmup=100, lr_fn=jump, fault_step=f, cause="lr_schedule",
                   steps=2000 if model == "mlp" else 1600)
    peak = float(rng.uniform(0.1, 0.2))

    def restart(step: int, x: float) -> float:
        if step < f:
            return x
        t = (step - f) / 2000  # a second cosine cycle, from the peak
        return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    return Job(rid, "lr", seed, f"SGD, cosine to step {f}, then a warm restart at the peak LR "
               f"{peak:.2f}", opt="sgd", lr=peak, batch=32, warmup=100, lr_fn=restart,
               fault_step=f, cause="lr_schedule", clip=None)


def gx(rid: str, seed: int, v: int, rng: Rng) -> Job:
    f = int(rng.integers(600, 1200))
    rate = float(rng.uniform(60, 150))

    def ramp(step: int, x: float) -> float:
        return x if step < f else x * math.exp((step - f) / rate)
    if v % 2 == 0:
        return Job(rid, "gx", seed, f"SGD, no clipping; from step {f} the LR grows e-fold every "
                   f"{rate:.0f} steps until the run diverges", opt="sgd", lr=0.05, batch=32,
                   warmup=100, decay="const", lr_fn=ramp, clip=None, fault_step=f,
                   cause="grad_explosion", for_good=True, steps=1600)
    return Job(rid, "gx", seed, f"tiny transformer, AdamW; from step {f} the LR grows e-fold "
               f"every {rate:.0f} steps until the run diverges", model="lm", opt="adamw",
               lr=3e-3, batch=16, warmup=100, decay="const", lr_fn=ramp, clip=None,
               fault_step=f, cause="grad_explosion", for_good=True, steps=1600)


def nan_(rid: str, seed: int, v: int, rng: Rng) -> Job:
    f = int(rng.integers(600, 1300))
    what = "nan" if v % 3 != 1 else "inf"
    guard = v % 3 != 2
    return Job(rid, "nan", seed, f"step {f}: one {what.upper()} in one sample's input; "
               + ("the non-finite step is skipped" if guard else
                  "no guard: the NaN poisons the weights to the end"),
               opt="adamw", lr=2e-3, batch=int(rng.choice([32, 64])), warmup=100, fault=what,
               fault_step=f, nan_guard=guard, cause="numerical_nan")


def amp(rid: str, seed: int, v: int, rng: Rng) -> Job:
    growth = int(rng.choice([100, 200]))
    if v % 2 == 0:
        return Job(rid, "amp", seed, f"fp16 emulated, dynamic loss scale (x2 every {growth} "
                   "good steps, /2 and skip on overflow): routine sawtooth", opt="adamw",
                   lr=2e-3, batch=32, warmup=100, amp=True, amp_growth=growth)
    f = int(rng.integers(700, 1300))
    m = int(rng.integers(10, 40))
    return Job(rid, "amp", seed, f"fp16 emulated; steps {f}-{f + m - 1}: raw unscaled features "
               "overflow the fp16 forward (NaN loss), every step skipped, the scale collapses",
               opt="adamw", lr=2e-3, batch=32, warmup=100, amp=True, amp_growth=growth,
               fault="fp16_storm", fault_step=f, fault_len=m, cause="amp_overflow")


def stall(rid: str, seed: int, v: int, rng: Rng) -> Job:
    kind = v % 3
    if kind == 0:
        return Job(rid, "stall", seed, "LR 1e-7 (a typo for 1e-3): the run never learns",
                   opt="adamw", lr=1e-7, batch=32, warmup=100)
    if kind == 1:
        return Job(rid, "stall", seed, "dead ReLUs (first-layer bias -20): the loss stops at the "
                   "class prior", opt="sgd", lr=0.05, batch=32, warmup=100, dead_relu=True)
    return Job(rid, "stall", seed, "12-layer sigmoid stack, SGD: vanishing gradients, the loss "
               "stays flat", model="deep", opt="sgd", lr=0.01, batch=32, warmup=100)


def resume(rid: str, seed: int, v: int, rng: Rng) -> Job:
    back = int(rng.integers(700, 1100))
    kill = back + int(rng.integers(150, 300))
    f = kill - int(rng.integers(20, 80))
    if v % 2 == 0:
        return Job(rid, "resume", seed, f"a bad shard of shuffled labels at step {f}; killed "
                   f"after step {kill}, resumed from the step-{back} checkpoint and replayed "
                   "clean", opt="adamw", lr=2e-3, batch=32, warmup=100, fault="labels",
                   fault_step=f, fault_len=int(rng.integers(3, 10)), resume=(back, kill),
                   cause="bad_batch")
    return Job(rid, "resume", seed, f"a batch of random tokens at step {f}; killed after step "
               f"{kill}, resumed from the step-{back} checkpoint and replayed clean",
               model="lm", opt="adamw", lr=3e-3, batch=16, warmup=100, steps=1600,
               fault="tokens", fault_step=f, fault_len=3, resume=(back, kill),
               cause="bad_batch", fmt="jsonl")


FAMILIES: dict[str, Callable[[str, int, int, Rng], Job]] = {
    "clean": clean, "osc": osc, "bb": bb, "lr": lr, "gx": gx, "nan": nan_, "amp": amp,
    "stall": stall, "resume": resume,
}
FORMATS = ("csv", "jsonl", "megatron_log", "hf_trainer_state")

#: The run sets: (family, variant, seed). v1 is the first set (one or more per family,
#: handed over for CV); v2 adds seeds and variants. Never edit a published set.
SETS: dict[str, list[tuple[str, int, int]]] = {
    "v1": [("clean", 0, 101), ("clean", 1, 102), ("clean", 3, 103),
           ("osc", 0, 201), ("osc", 1, 202), ("osc", 2, 203), ("osc", 3, 204),
           ("bb", 0, 301), ("bb", 1, 302), ("bb", 3, 303),
           ("lr", 0, 401), ("lr", 1, 402),
           ("gx", 0, 501), ("nan", 0, 601), ("nan", 2, 602),
           ("amp", 0, 701), ("amp", 1, 702),
           ("stall", 0, 801), ("stall", 2, 802),
           ("resume", 0, 901)],
    "v2": [("clean", 2, 111), ("clean", 4, 112), ("clean", 5, 113), ("clean", 0, 114),
           ("clean", 1, 115),
           ("osc", 0, 211), ("osc", 1, 212), ("osc", 2, 213), ("osc", 3, 214), ("osc", 4, 215),
           ("bb", 0, 311), ("bb", 1, 312), ("bb", 2, 313), ("bb", 3, 314), ("bb", 3, 315),
           ("lr", 0, 411), ("lr", 1, 412), ("lr", 2, 413), ("lr", 3, 414),
           ("gx", 1, 511), ("gx", 0, 512),
           ("nan", 1, 611), ("nan", 0, 612), ("nan", 2, 613),
           ("amp", 0, 711), ("amp", 1, 712), ("amp", 1, 713),
           ("stall", 1, 811), ("stall", 0, 812),
           ("resume", 1, 911), ("resume", 0, 912)],
    # made 2026-12-04 (third session) and scored once before any rule was looked at again
    "v3": [("clean", 3, 121), ("clean", 4, 122), ("clean", 5, 123), ("clean", 2, 124),
           ("osc", 0, 221), ("osc", 1, 222), ("osc", 2, 223), ("osc", 3, 224), ("osc", 4, 225),
           ("bb", 0, 321), ("bb", 1, 322), ("bb", 2, 323), ("bb", 3, 324), ("bb", 1, 325),
           ("lr", 0, 421), ("lr", 1, 422), ("lr", 2, 423), ("lr", 3, 424),
           ("gx", 0, 521), ("gx", 1, 522), ("gx", 0, 523),
           ("nan", 0, 621), ("nan", 1, 622), ("nan", 2, 623),
           ("amp", 0, 721), ("amp", 1, 722),
           ("stall", 0, 821), ("stall", 1, 822), ("stall", 2, 823),
           ("resume", 0, 921), ("resume", 1, 922)],
    # made 2026-12-04 (fourth session) and scored once before any rule was looked at again
    "v4": [("clean", 0, 131), ("clean", 1, 132), ("clean", 2, 133), ("clean", 3, 134),
           ("clean", 4, 135), ("clean", 5, 136),
           ("osc", 0, 231), ("osc", 1, 232), ("osc", 2, 233), ("osc", 3, 234), ("osc", 4, 235),
           ("bb", 0, 331), ("bb", 1, 332), ("bb", 2, 333), ("bb", 3, 334), ("bb", 0, 335),
           ("bb", 2, 336),
           ("lr", 0, 431), ("lr", 1, 432), ("lr", 2, 433), ("lr", 3, 434),
           ("gx", 0, 531), ("gx", 1, 532), ("gx", 1, 533), ("gx", 0, 534),
           ("nan", 0, 631), ("nan", 1, 632), ("nan", 2, 633),
           ("amp", 0, 731), ("amp", 1, 732), ("amp", 0, 733),
           ("stall", 0, 831), ("stall", 1, 832), ("stall", 2, 833),
           ("resume", 0, 931), ("resume", 1, 932)],
    # made 2026-12-04 (fourth session) after the eighth pass, scored once, never calibrated on
    "v5": [("clean", 0, 141), ("clean", 2, 142), ("clean", 3, 143), ("clean", 4, 144),
           ("clean", 5, 145), ("clean", 1, 146),
           ("osc", 0, 241), ("osc", 1, 242), ("osc", 2, 243), ("osc", 3, 244), ("osc", 4, 245),
           ("bb", 0, 341), ("bb", 1, 342), ("bb", 2, 343), ("bb", 3, 344), ("bb", 1, 345),
           ("bb", 3, 346),
           ("lr", 0, 441), ("lr", 1, 442), ("lr", 2, 443), ("lr", 3, 444),
           ("gx", 0, 541), ("gx", 1, 542), ("gx", 0, 543), ("gx", 1, 544),
           ("nan", 0, 641), ("nan", 1, 642), ("nan", 2, 643),
           ("amp", 0, 741), ("amp", 1, 742), ("amp", 1, 743),
           ("stall", 0, 841), ("stall", 1, 842), ("stall", 2, 843),
           ("resume", 0, 941), ("resume", 1, 942)],
    # made 2026-12-04 (fifth session), scored once as a held-out check, never calibrated on
    "v6": [("clean", 1, 151), ("clean", 3, 152), ("clean", 4, 153), ("clean", 5, 154),
           ("clean", 0, 155), ("clean", 2, 156),
           ("osc", 0, 251), ("osc", 1, 252), ("osc", 2, 253), ("osc", 3, 254), ("osc", 4, 255),
           ("bb", 0, 351), ("bb", 1, 352), ("bb", 2, 353), ("bb", 3, 354), ("bb", 2, 355),
           ("bb", 0, 356),
           ("lr", 0, 451), ("lr", 1, 452), ("lr", 2, 453), ("lr", 3, 454),
           ("gx", 0, 551), ("gx", 1, 552), ("gx", 1, 553), ("gx", 0, 554),
           ("nan", 0, 651), ("nan", 1, 652), ("nan", 2, 653),
           ("amp", 0, 751), ("amp", 1, 752), ("amp", 0, 753),
           ("stall", 0, 851), ("stall", 1, 852), ("stall", 2, 853),
           ("resume", 0, 951), ("resume", 1, 952)],
    # made 2026-12-04 (sixth session), scored once as a held-out check, never calibrated on
    "v7": [("clean", 2, 161), ("clean", 5, 162), ("clean", 0, 163), ("clean", 1, 164),
           ("clean", 4, 165), ("clean", 3, 166),
           ("osc", 4, 261), ("osc", 3, 262), ("osc", 1, 263), ("osc", 0, 264), ("osc", 2, 265),
           ("bb", 3, 361), ("bb", 1, 362), ("bb", 0, 363), ("bb", 2, 364), ("bb", 1, 365),
           ("bb", 3, 366),
           ("lr", 3, 461), ("lr", 2, 462), ("lr", 0, 463), ("lr", 1, 464),
           ("gx", 1, 561), ("gx", 0, 562), ("gx", 0, 563), ("gx", 1, 564),
           ("nan", 2, 661), ("nan", 0, 662), ("nan", 1, 663),
           ("amp", 1, 761), ("amp", 0, 762), ("amp", 1, 763),
           ("stall", 2, 861), ("stall", 0, 862), ("stall", 1, 863),
           ("resume", 1, 961), ("resume", 0, 962)],
    # made 2026-12-05 (sixth session, after the tenth pass), scored once as a held-out check
    "v8": [("clean", 0, 171), ("clean", 4, 172), ("clean", 2, 173), ("clean", 5, 174),
           ("clean", 1, 175), ("clean", 3, 176),
           ("osc", 2, 271), ("osc", 4, 272), ("osc", 0, 273), ("osc", 3, 274), ("osc", 1, 275),
           ("bb", 1, 371), ("bb", 2, 372), ("bb", 3, 373), ("bb", 0, 374), ("bb", 2, 375),
           ("bb", 1, 376),
           ("lr", 1, 471), ("lr", 3, 472), ("lr", 2, 473), ("lr", 0, 474),
           ("gx", 0, 571), ("gx", 1, 572), ("gx", 1, 573), ("gx", 0, 574),
           ("nan", 1, 671), ("nan", 2, 672), ("nan", 0, 673),
           ("amp", 0, 771), ("amp", 1, 772), ("amp", 0, 773),
           ("stall", 1, 871), ("stall", 2, 872), ("stall", 0, 873),
           ("resume", 0, 971), ("resume", 1, 972)],
    # made 2026-12-05 (seventh session, after the lift rule), scored once as a held-out check
    "v9": [("clean", 3, 181), ("clean", 1, 182), ("clean", 5, 183), ("clean", 0, 184),
           ("clean", 2, 185), ("clean", 4, 186),
           ("osc", 1, 281), ("osc", 0, 282), ("osc", 3, 283), ("osc", 2, 284), ("osc", 4, 285),
           ("bb", 0, 381), ("bb", 3, 382), ("bb", 1, 383), ("bb", 2, 384), ("bb", 0, 385),
           ("bb", 3, 386),
           ("lr", 2, 481), ("lr", 0, 482), ("lr", 3, 483), ("lr", 1, 484),
           ("gx", 1, 581), ("gx", 0, 582), ("gx", 0, 583), ("gx", 1, 584),
           ("nan", 0, 681), ("nan", 1, 682), ("nan", 2, 683),
           ("amp", 1, 781), ("amp", 0, 782), ("amp", 1, 783),
           ("stall", 0, 881), ("stall", 1, 882), ("stall", 2, 883),
           ("resume", 1, 981), ("resume", 0, 982)],
}


def jobs_of(set_name: str) -> list[Job]:
    out = []
    counts: dict[str, int] = {}
    for j, (fam, v, seed) in enumerate(SETS[set_name]):
        i = counts.get(fam, 0)
        counts[fam] = i + 1
        rid = f"{set_name}{fam}{i:02d}"
        job = FAMILIES[fam](rid, seed, v, np.random.default_rng(seed))
        if not job.resume:
            job.fmt = FORMATS[j % len(FORMATS)]
            # the HF state has no loss-scale field; Megatron prints no loss on a skipped step,
            # so a storm's NaN losses would not be in its log
            if job.amp and job.fault and job.fmt in ("hf_trainer_state", "megatron_log"):
                job.fmt = "csv" if j % 2 else "jsonl"
            elif job.amp and job.fmt == "hf_trainer_state":
                job.fmt = "megatron_log"
        out.append(job)
    return out


def run_job(out: Path, job: Job) -> dict[str, Any]:
    for attempt in range(4):
        seed = job.seed + 100000 * attempt
        if attempt:  # redraw the fault's place and size with the next seed
            fmt = job.fmt
            job = FAMILIES[job.family](job.rid, seed, _variant(job), np.random.default_rng(seed))
            job.fmt = fmt
        log = train(job, seed)
        info = write(out, job, log)
        lab = label(job, log, info, seed)
        if lab is not None:
            return lab
    raise RuntimeError(f"{job.rid}: the fault never left the band in 4 draws")


def _variant(job: Job) -> int:
    for name, entries in SETS.items():
        for fam, v, seed in entries:
            if job.rid.startswith(name) and fam == job.family and seed == job.seed % 100000:
                return v
    return 0


def pack(src: Path, dst: Path) -> int:
    """Copy a generated set gzipped (what the repository commits: about 10x smaller; the
    readers open .gz by its magic bytes), with `file` in labels.json pointing at the .gz."""
    labels = json.loads((src / "labels.json").read_text())
    for lab in labels.values():
        data = (src / lab["file"]).read_bytes()
        lab["file"] += ".gz"
        target = dst / lab["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                     mtime=0, compresslevel=9) as gz:
            gz.write(data)
    (dst / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    print(f"{len(labels)} runs packed into {dst}")
    return 0


def score(dirs: list[Path]) -> int:
    """Per family, the detector's figures on generated sets (no torch needed; spikelens and
    `accuracy.py` do the reading and the matching): labelled events detected / missed, false
    incidents, verdicts wrong, oscillating runs called oscillating, and quiet runs called
    oscillating; then every run that is not fully right."""
    from accuracy import SPIKELENS, evaluate_bench, match, verdict_ok

    from spikelens.model import Config

    fams: dict[str, dict[str, int]] = {}
    wrong: list[str] = []
    for d in dirs:
        labels = json.loads((d / "labels.json").read_text())
        results, _ = evaluate_bench(d, Config())
        for r in results:
            fam = str(labels[r.run].get("family") or r.scenario.split("_")[0])
            f = fams.setdefault(fam, dict.fromkeys(
                ("runs", "events", "found", "missed", "false", "verdict_wrong", "osc_runs",
                 "osc_called", "quiet_called_osc"), 0))
            spans = [(int(i["start"]), int(i["end"])) for i in r.incidents]
            hit = match(spans, r.labelled)
            f["runs"] += 1
            f["events"] += len(r.labelled)
            f["found"] += hit
            f["missed"] += len(r.labelled) - hit
            f["false"] += len(spans) - hit
            ok = verdict_ok(r.expected, r.verdict)
            f["verdict_wrong"] += int(not ok)
            f["osc_runs"] += int(r.expected == "oscillating")
            f["osc_called"] += int(r.expected == "oscillating" and r.verdict == "oscillating")
            f["quiet_called_osc"] += int(r.expected == "healthy" and r.verdict == "oscillating")
            if not ok or hit != len(r.labelled) or len(spans) != hit or r.error:
                wrong.append(f"{d.name}/{r.run} ({labels[r.run]['notes']}): expected "
                             f"{r.expected}, got {r.verdict}; labelled {r.labelled}, found "
                             f"{[(i['start'], i['end'], i['kind']) for i in r.incidents]}"
                             + (f" [{r.error}]" if r.error else ""))
    cols = ["runs", "events", "found", "missed", "false", "verdict_wrong", "osc_runs",
            "osc_called", "quiet_called_osc"]
    tot = {c: sum(f[c] for f in fams.values()) for c in cols}
    print(f"{SPIKELENS} on {tot['runs']} real runs ({', '.join(str(d) for d in dirs)})\n")
    print("| family | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, f in [*sorted(fams.items()), ("all", tot)]:
        print(f"| {name} | " + " | ".join(str(f[c]) for c in cols) + " |")
    print(f"\n{len(wrong)} run(s) not fully right:")
    for w in wrong:
        print(f"  {w}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", default="v1", choices=[*SETS, "all"])
    ap.add_argument("--only", action="append", help="run ids to (re)make; the others kept")
    ap.add_argument("--pack-from", type=Path, metavar="DIR",
                    help="no training: copy the generated set in DIR into OUT, gzipped")
    ap.add_argument("--score", action="store_true",
                    help="no training: score the detector on the sets OUT (and --also)")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another set for --score")
    args = ap.parse_args()
    if args.score:
        return score([args.out, *args.also])
    if args.pack_from:
        return pack(args.pack_from, args.out)
    if torch is None:
        print(HINT, file=sys.stderr)
        return 2
    names = list(SETS) if args.set == "all" else [args.set]
    lab_path = args.out / "labels.json"
    labels: dict[str, Any] = json.loads(lab_path.read_text()) if lab_path.exists() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for job in jobs_of(name):
            if args.only and job.rid not in args.only:
                continue
            t0 = time.process_time()
            labels[job.rid] = run_job(args.out, job)
            ev = labels[job.rid]["events"]
            print(f"{job.rid:16s} {job.fmt:17s} {time.process_time() - t0:6.1f} s CPU  "
                  f"{labels[job.rid]['steps_logged']:5d} rows  "
                  + (f"event {ev[0]['start']}-{ev[0]['end']}" if ev else "no event"),
                  flush=True)
            lab_path.write_text(json.dumps(labels, indent=1, sort_keys=True))
    print(f"{len(labels)} labelled runs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
