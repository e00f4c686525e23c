"""Tracker config and params -> canonical `Run.params` (shared by the W&B and MLflow readers):
the spellings of HuggingFace, Lightning, Megatron, DeepSpeed and accelerate."""

from __future__ import annotations

from spikelens.readers._params import canonical_params


def test_huggingface_training_arguments() -> None:
    p = canonical_params({"learning_rate": 5e-5, "max_grad_norm": 1.0, "warmup_steps": 500,
                          "per_device_train_batch_size": 8, "fp16": False, "bf16": True,
                          "seed": 42, "adam_epsilon": 1e-8, "gradient_accumulation_steps": 4})
    assert p == {"lr": 5e-5, "clip_grad": 1.0, "warmup_steps": 500, "micro_batch_size": 8,
                 "precision": "bf16", "seed": 42, "adam_eps": 1e-8,
                 "gradient_accumulation_steps": 4}


def test_mlflow_text_values_megatron_names() -> None:
    p = canonical_params({"clip_grad": "1.0", "lr": "0.00015", "lr_warmup_iters": "2000",
                          "global_batch_size": "1536", "micro_batch_size": "2",
                          "fp16": "True", "seq_length": "2048", "padded_vocab_size": "50304"})
    assert p["clip_grad"] == 1.0 and p["lr"] == 0.00015 and p["warmup_steps"] == 2000
    assert p["global_batch_size"] == 1536 and p["micro_batch_size"] == 2
    assert p["precision"] == "fp16" and p["seq_length"] == 2048 and p["vocab_size"] == 50304


def test_lightning_and_accelerate_precision_strings_and_nesting() -> None:
    assert canonical_params({"trainer": {"precision": "bf16-mixed",
                                         "gradient_clip_val": 0.5}}) == \
        {"precision": "bf16", "clip_grad": 0.5}
    assert canonical_params({"mixed_precision": "fp16"})["precision"] == "fp16"
    assert canonical_params({"precision": 32})["precision"] == "fp32"
    assert canonical_params({"fp16": False, "bf16": False})["precision"] == "fp32"


def test_canonical_spelling_wins_and_unknown_keys_are_kept() -> None:
    p = canonical_params({"max_grad_norm": 5.0, "clip_grad": 1.0, "optimizer": "adamw",
                          "scheduler": {"lr": 1.0}, "lr": 3e-4, "notes": "resumed"})
    assert p["clip_grad"] == 1.0 and p["max_grad_norm"] == 5.0  # the alias is kept as written
    assert p["lr"] == 3e-4 and p["scheduler.lr"] == 1.0
    assert p["optimizer"] == "adamw" and p["notes"] == "resumed"
