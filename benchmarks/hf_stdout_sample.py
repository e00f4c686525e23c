"""A tiny real HuggingFace Trainer run on CPU whose stdout+stderr is spikelens's sample of
the `hf_stdout` format (sample_logs/hf/tiny_gpt2_trainer_stdout.log). Random-init 2-layer
GPT-2 on a synthetic token stream (a noisy repeating grammar), no downloads. Seeded. The
batch of step 251 (global_step 250 when it is drawn) is replaced by uniform random tokens:
a bad batch, injected.

    python benchmarks/hf_stdout_sample.py > tiny_gpt2_trainer_stdout.log 2>&1

in a separate environment with transformers (5.25 here) and a CPU torch: neither is a
dependency of spikelens."""
import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

set_seed(0)
V, T = 64, 32
rng = random.Random(0)


def sample():
    # a repeating pattern with noise: learnable but not trivial
    base = [rng.randrange(V) for _ in range(4)]
    seq = []
    while len(seq) < T:
        seq += [(b + rng.choice([0, 0, 0, 1])) % V for b in base]
    return seq[:T]


class DS(torch.utils.data.Dataset):
    def __init__(self, n):
        self.rows = [torch.tensor(sample()) for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class BadBatchTrainer(Trainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and self.state.global_step == 250:
            ids = torch.randint(0, V, inputs["input_ids"].shape,
                                generator=torch.Generator().manual_seed(250))
            inputs = {**inputs, "input_ids": ids, "labels": ids}
        return super().compute_loss(model, inputs, *args, **kwargs)


model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=2))
args = TrainingArguments(output_dir="hf_stdout_sample_out", per_device_train_batch_size=8,
                         num_train_epochs=3, learning_rate=3e-3, warmup_steps=30,
                         logging_steps=5, eval_strategy="epoch", save_strategy="no",
                         report_to=[], seed=0, use_cpu=True, dataloader_num_workers=0)
trainer = BadBatchTrainer(model=model, args=args, train_dataset=DS(1000), eval_dataset=DS(200))
out = trainer.train()
print(out)
