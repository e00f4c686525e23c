"""Canonical metric roles and the names frameworks give them. Every reader goes through
`assign_roles`, so a W&B `train/loss`, a Megatron `lm loss`, an HF `loss`, a Lightning
`train_loss_step` and llm.c's `trl` all become the `loss` role without any reader knowing
about the others. Matching is on a normalised name (lower case, separators folded) against
an ordered alias list per role; the first alias that matches wins, so the most specific
spelling is preferred when a log carries several candidates. The user can always override
with `--metric ROLE=NAME`."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

from spikelens.errors import ConfigError

#: Roles in display order. `loss` is the train loss; `eval_loss` never enters it.
ROLES: tuple[str, ...] = (
    "loss",
    "eval_loss",
    "lr",
    "grad_norm",
    "loss_scale",
    "skipped",
    "nan_count",
    "update_norm",
    "tokens",
    "samples",
    "epoch",
    "step_time",
    "wall_time",
    "param_norm",
    "update_ratio",
    "global_batch_size",
    "world_size",
    "tflops",
)

#: Column names that hold the step counter, most specific first.
STEP_NAMES: tuple[str, ...] = (
    "step",
    "_step",
    "global_step",
    "trainer/global_step",
    "train/global_step",
    "iteration",
    "iter",
    "steps",
    "it",
    "s",
    "num_updates",
    "update",
    "batch",
)

_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": (
        "loss", "lm_loss", "train_loss", "loss_step", "train_loss_step", "training_loss",
        "trl", "train_lm_loss", "ce_loss", "crossentropyloss", "train_ce_loss", "nll_loss",
        "loss_mean", "total_loss", "avg_loss", "loss_avg", "mean_loss", "batch_loss",
        "running_loss", "train_loss_avg", "objective", "lm_loss_avg", "cross_entropy",
        "cross_entropy_loss", "xent", "mse", "mse_loss", "nll", "ce", "bce", "bce_loss",
        "l1_loss", "huber_loss", "smooth_l1_loss", "languagecrossentropy",
    ),
    "eval_loss": (
        "eval_loss", "val_loss", "validation_loss", "valid_loss", "test_loss", "tel",
        "lm_loss_value", "eval_lm_loss", "val_loss_epoch", "eval_crossentropyloss",
        "val_crossentropyloss", "eval_epoch_loss", "val_epoch_loss", "eval_ppl", "val_ppl",
        "dev_loss", "ppl", "perplexity",
    ),
    "lr": (
        "lr", "learning_rate", "lr_adamw", "lr_adam", "lr_sgd", "learning_rate_group0",
        "lr_group0", "lr_group_0", "lr_pg0", "lr_adamw_pg1", "current_lr", "lr_0", "lrate",
        "learningrate",
        "epoch_learning_rate", "epoch_lr",
    ),
    "grad_norm": (
        "grad_norm", "gradnorm", "gnorm", "grad_norm_total", "total_grad_norm",
        "global_grad_norm", "grad_l2_norm", "gradient_norm", "total_norm", "grad_norm_total",
        "preclip_grad_norm", "grad_norm_before_clip", "unclipped_grad_norm", "global_norm",
        "norm", "clip_norm",
    ),
    "loss_scale": (
        "loss_scale", "scale", "grad_scale", "scaler_scale", "amp_scale", "amp_loss_scale",
        "loss_scaler", "cur_scale", "loss_scaling", "dynamic_loss_scale",
    ),
    "skipped": (
        "skipped", "skipped_step", "skipped_steps", "number_of_skipped_iterations",
        "skipped_iterations", "skipped_iter", "overflow", "overflows", "is_skipped",
        "num_skipped", "found_inf", "skip", "skipped_update", "is_overflow", "has_overflow",
        "overflowed", "inf_or_nan",
    ),
    "nan_count": (
        "number_of_nan_iterations", "nan_iterations", "nan_count", "num_nan", "nans",
    ),
    "update_norm": ("update_norm", "param_update_norm", "update_l2_norm", "delta_norm"),
    "tokens": (
        "tokens", "consumed_tokens", "tokens_seen", "num_input_tokens_seen", "total_tokens",
        "ntokens", "tokens_processed", "num_tokens", "total_tokens_seen",
    ),
    "samples": (
        "samples", "consumed_samples", "samples_seen", "num_samples", "total_samples",
        "nsamples",
    ),
    "epoch": ("epoch", "epochs"),
    "step_time": (
        "elapsed_time_per_iteration_ms", "elapsed_time_per_iteration_s", "step_time",
        "iteration_time", "time_per_step", "iter_time", "step_avg", "batch_time", "dt",
    ),
    "wall_time": ("wall_time", "time", "timestamp", "_timestamp", "train_time", "_runtime",
                  "elapsed"),
    # the model's own statistics and the run's operations (issue 14)
    "param_norm": ("param_norm", "params_norm", "parameter_norm", "parameters_norm",
                   "param_l2_norm", "total_param_norm", "weight_norm", "model_norm",
                   "param_norm_total"),
    "update_ratio": ("update_to_param_ratio", "update_param_ratio", "update_ratio",
                     "update_to_weight_ratio", "update_weight_ratio", "param_update_ratio",
                     "update_magnitude_rel", "relative_update_norm"),
    "global_batch_size": ("global_batch_size", "global_batch", "gbs", "batch_size",
                          "train_batch_size", "effective_batch_size"),
    "world_size": ("world_size", "num_gpus", "n_gpus", "num_ranks", "num_devices",
                   "world_size_rank_logs"),
    "tflops": ("tflops", "tflops_per_gpu", "model_tflops", "tflops_per_device",
               "hardware_tflops", "achieved_tflops", "approx_flops_per_gpu"),
}

#: Path prefixes that say a metric was measured on evaluation data.
_EVAL_PREFIXES = ("eval", "evaluation", "val", "valid", "validation", "test", "dev")
#: Words in a prefix that name a part of the model: `layer3/grad_norm` is a per-layer extra,
#: not the total. Any digit in the prefix says the same (`h.11/grad_norm`).
_COMPONENT_WORDS = {
    "layer", "layers", "block", "blocks", "param", "params", "parameter", "parameters",
    "module", "modules", "weight", "weights", "bias", "attn", "attention", "mlp", "ffn",
    "head", "heads", "embed", "embedding", "embeddings", "encoder", "decoder", "transformer",
    "per_layer", "grad_norms", "norms", "h", "wte", "wpe", "lm_head",
}
#: A leaf that only says where it was measured: `loss/train` is `train/loss` turned round.
_SPLIT_WORDS = {"train", "training"} | set(_EVAL_PREFIXES)
#: A trailing part that qualifies the metric before it: `grad_norm/total`, `lr/group_0`,
#: `lr-Adam/pg1`, `loss/train/mean`.
_QUALIFIER = re.compile(r"(total|all|global|mean|avg|average|value|val_?0?|step|pg_?\d+|"
                        r"group_?\d+|param_group_?\d+|\d+)$")

_SEP = re.compile(r"[\s\-.:()\[\]]+")


def normalise(name: str) -> str:
    """Lower case, separators folded to `_`, path slashes kept."""
    s = _SEP.sub("_", name.strip().lower())
    return re.sub(r"_+", "_", s).strip("_")


def _split(name: str) -> tuple[str, str]:
    """(prefix, leaf) of a normalised name: `train/loss` -> (`train`, `loss`).

    A W&B panel export names columns `"<run> - <metric>"`; the run part is not the metric's.
    """
    if " - " in name:
        name = name.split(" - ", 1)[1]
    norm = normalise(name)
    while "/" in norm:
        head, _, leaf = norm.rpartition("/")
        if _QUALIFIER.fullmatch(leaf) and leaf not in _SPLIT_WORDS:
            norm = head
            continue
        break
    if "/" in norm:
        head, _, leaf = norm.rpartition("/")
        if leaf in _SPLIT_WORDS:  # `loss/train` -> (`train`, `loss`)
            rest, _, metric = head.rpartition("/")
            return (f"{rest}/{leaf}" if rest else leaf), metric
        return head, leaf
    return "", norm


def _component(prefix: str) -> bool:
    """Does the prefix name a part of the model (a per-layer metric), not the whole run?
    A number does (`h.11/`, `layers/3/`), except the index of an optimizer parameter group
    (`param_groups/0/lr`)."""
    parts = set(re.split(r"[/_]", prefix)) | set(prefix.split("/"))
    grouped = "group" in prefix or "pg" in parts
    if grouped:
        parts -= {"param", "params", "parameter", "parameters"}
    if parts & _COMPONENT_WORDS:
        return True
    return any(ch.isdigit() for ch in prefix) and not grouped


def _is_eval(prefix: str, leaf: str) -> bool:
    first = prefix.split("/")[0] if prefix else ""
    if first in _EVAL_PREFIXES or any(p in _EVAL_PREFIXES for p in prefix.split("/")):
        return True
    return bool(re.match(r"(eval|val|valid|validation|test|dev)_", leaf))


def find_step_column(columns: Iterable[str]) -> str | None:
    """The column that holds the step counter, or None."""
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(normalise(c), c)
    for name in STEP_NAMES:
        if name in by_norm:
            return by_norm[name]
    return None


def _alias_rank(role: str, leaf: str) -> int | None:
    aliases = _ALIASES[role]
    try:
        return aliases.index(leaf)
    except ValueError:
        return None


def role_of(name: str, is_eval: bool = False) -> tuple[str, int] | None:
    """The role a column name maps to by alias, with its rank (lower is more specific).

    `is_eval` says the reader found the column on evaluation rows (whatever its name).
    """
    prefix, leaf = _split(name)
    if leaf.endswith(("__min", "__max")):
        return None
    evalish = is_eval or _is_eval(prefix, leaf)
    for role in ROLES:
        rank = _alias_rank(role, leaf)
        if rank is None:
            continue
        if role == "loss" and evalish:
            return ("eval_loss", 50 + rank)
        if role == "eval_loss" and leaf in ("ppl", "perplexity"):
            if not evalish:
                continue  # a train perplexity is not an eval loss
            # an eval set's perplexity is exp of its loss: the loss itself, when the log
            # has it (OLMo's `eval/<set>/CrossEntropyLoss` beside `.../Perplexity`), wins
            return (role, 100 + rank)
        # a prefixed match (`train/loss`, `metrics/loss`) is as good as the bare one, but a
        # prefix that names a part of the model (`layer3/grad_norm`) makes a per-layer extra
        if prefix and not evalish and _component(prefix):
            continue
        return (role, rank + (10 if prefix and evalish and role != "eval_loss" else 0))
    return None


def _fallback(role: str, name: str, is_eval: bool = False) -> bool:
    prefix, leaf = _split(name)
    if leaf.endswith(("__min", "__max")) or prefix and _component(prefix):
        return False
    evalish = is_eval or _is_eval(prefix, leaf)
    if role == "loss":
        return ("loss" in leaf and not evalish and "scale" not in leaf
                and not leaf.endswith("epoch"))
    if role == "eval_loss":
        return evalish and ("loss" in leaf or "perplexity" in leaf)
    if role == "grad_norm":
        return "grad" in leaf and "norm" in leaf and not evalish
    if role == "lr":
        return leaf.startswith(("lr_", "learning_rate")) and not evalish
    return False


def assign_roles(
    columns: Iterable[str],
    overrides: Mapping[str, str] | None = None,
    eval_columns: Iterable[str] = (),
    empty: Collection[str] = (),
) -> dict[str, str]:
    """Map roles to column names. Overrides (role -> column) win and are validated.

    `eval_columns` are columns of evaluation rows: only eval roles can take them. `empty`
    columns (no value logged) take a role only by override.
    """
    cols = [c for c in columns]
    evals = set(eval_columns)
    empty = set(empty)
    roles: dict[str, str] = {}
    overrides = dict(overrides or {})
    for role, col in overrides.items():
        if role == "step":
            continue  # the step axis, chosen by the reader's shared half (build_run)
        if role not in ROLES:
            raise ConfigError(f"unknown metric role {role!r} (known: {', '.join(ROLES)})")
        if col not in cols:
            raise ConfigError(
                f"--metric {role}={col}: no such metric (found: {', '.join(cols) or 'none'})"
            )
        roles[role] = col
    taken = set(roles.values())
    best: dict[str, tuple[int, int, str]] = {}
    for i, col in enumerate(cols):
        if col in taken or col in empty:
            continue
        hit = role_of(col, col in evals)
        if hit is None:
            continue
        role, rank = hit
        if col in evals and role != "eval_loss":
            continue
        if role in roles:
            continue
        cand = (rank, i, col)
        if role not in best or cand < best[role]:
            best[role] = cand
    for role, (_, _, col) in best.items():
        roles[role] = col
    taken = set(roles.values())
    for role in ("loss", "eval_loss", "grad_norm", "lr"):
        if role in roles:
            continue
        cands = [c for c in cols if c not in taken and c not in empty
                 and _fallback(role, c, c in evals)
                 and (role == "eval_loss" or c not in evals)]
        if cands:
            pick = min(cands, key=len)
            roles[role] = pick
            taken.add(pick)
    return {r: roles[r] for r in ROLES if r in roles}


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse `ROLE=NAME` strings from the command line. `step=NAME` names the step column
    (a counter, or a column of dates or timestamps)."""
    out: dict[str, str] = {}
    for item in items:
        role, sep, name = item.partition("=")
        role, name = role.strip(), name.strip()
        if not sep or not role or not name:
            raise ConfigError(f"--metric expects ROLE=NAME, got {item!r}")
        if role not in ROLES and role != "step":
            raise ConfigError(f"unknown metric role {role!r} (known: step, "
                              f"{', '.join(ROLES)})")
        out[role] = name
    return out
