"""Run configuration -> `Run.params` under canonical keys. Trackers store the settings of a run
as their framework wrote them: HuggingFace's `max_grad_norm`, `per_device_train_batch_size`,
`bf16`; Megatron's `clip_grad`, `lr_warmup_iters`; Lightning's `gradient_clip_val`,
`precision="bf16-mixed"`; MLflow params as strings. `canonical_params` maps the usual
spellings to the keys documented on `Run.params` (clip_grad, lr, warmup_steps,
global_batch_size, micro_batch_size, seq_length, precision, world_size, seed, vocab_size,
adam_beta1, adam_beta2, adam_eps, weight_decay), turns numbers written as text into numbers,
and keeps every other key as written. A key already spelled canonically wins over an alias;
between aliases, the first in the alias list wins. Precision becomes "fp16", "bf16" or
"fp32" from the boolean flags (`fp16`, `bf16`), Lightning's `precision`, accelerate's
`mixed_precision` or a `dtype`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

#: canonical key -> accepted spellings (the canonical one first). Matching ignores case;
#: a dotted prefix (`optimizer.lr`, `trainer.gradient_clip_val`) is looked through.
ALIASES: dict[str, tuple[str, ...]] = {
    "clip_grad": ("clip_grad", "max_grad_norm", "gradient_clip_val", "grad_clip",
                  "clip_grad_norm", "gradient_clipping", "grad_clip_norm", "max_norm"),
    "lr": ("lr", "learning_rate", "max_lr", "base_lr", "peak_lr"),
    "warmup_steps": ("warmup_steps", "lr_warmup_iters", "warmup_iters", "num_warmup_steps",
                     "lr_warmup_steps", "warmup_updates"),
    "global_batch_size": ("global_batch_size", "total_batch_size", "total_train_batch_size",
                          "gbs"),
    "micro_batch_size": ("micro_batch_size", "per_device_train_batch_size",
                         "train_micro_batch_size_per_gpu", "per_gpu_train_batch_size", "mbs"),
    "seq_length": ("seq_length", "max_seq_length", "seq_len", "block_size", "context_length"),
    "world_size": ("world_size", "num_processes"),
    "seed": ("seed",),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "adam_beta1": ("adam_beta1", "beta1"),
    "adam_beta2": ("adam_beta2", "beta2"),
    "adam_eps": ("adam_eps", "adam_epsilon", "eps"),
    "weight_decay": ("weight_decay", "wd"),
}

_PRECISION_WORDS = {
    "fp16": "fp16", "16": "fp16", "16-mixed": "fp16", "float16": "fp16", "half": "fp16",
    "torch.float16": "fp16", "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16",
    "bfloat16": "bf16", "torch.bfloat16": "bf16", "fp32": "fp32", "32": "fp32",
    "32-true": "fp32", "float32": "fp32", "no": "fp32", "torch.float32": "fp32",
    "16-true": "fp16",
}
_PRECISION_KEYS = ("precision", "mixed_precision", "dtype", "torch_dtype")


def coerce(value: Any) -> Any:
    """A value written as text (MLflow params, YAML dumps) as the number or flag it says."""
    if not isinstance(value, str):
        return value
    s = value.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return value
    return f if math.isfinite(f) or low in ("nan", "inf", "-inf") else value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as dotted keys (`optim.beta1`)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower()


def _precision(params: Mapping[str, Any]) -> str | None:
    for k, v in params.items():
        if _leaf(k) in _PRECISION_KEYS and isinstance(v, str | int):
            p = _PRECISION_WORDS.get(str(v).strip().lower())
            if p is not None:
                return p
    flags = {_leaf(k): v for k, v in params.items() if isinstance(v, bool)}
    if flags.get("bf16"):
        return "bf16"
    if flags.get("fp16") or flags.get("half"):
        return "fp16"
    if flags.get("fp16") is False and flags.get("bf16") is False:
        return "fp32"
    return None


def canonical_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened config with the known spellings renamed to the canonical keys."""
    flat = {k: coerce(v) for k, v in flatten(config).items()}
    out: dict[str, Any] = {}
    used: set[str] = set()
    by_leaf: dict[str, list[str]] = {}
    for k in flat:
        by_leaf.setdefault(_leaf(k), []).append(k)
    for canon, names in ALIASES.items():
        for name in names:
            keys = by_leaf.get(name)
            if not keys:
                continue
            # the shortest path wins (`lr` over `scheduler.lr`)
            key = min(keys, key=lambda s: (s.count("."), s))
            value = flat[key]
            if isinstance(value, bool) or value is None:
                continue
            out[canon] = value
            used.add(key)
            break
    prec = _precision(flat)
    if prec is not None:
        out["precision"] = prec
        used.update(k for k in flat if _leaf(k) in _PRECISION_KEYS + ("fp16", "bf16", "half"))
    for k, v in flat.items():
        if k not in used and k not in out:
            out[k] = v
    return out


def json_value(text: str) -> Any:
    """A JSON value as W&B writes it (`NaN`, `Infinity` included); text that is not JSON is
    kept as the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


__all__ = ["ALIASES", "canonical_params", "coerce", "flatten", "json_value"]
