"""A tiny real training run on CPU whose stdout+stderr is spikelens's sample of llama-recipes'
console output (sample_logs/text/llama_recipes_tiny_gpt2_stdout.log). The loop is the one of
llama-recipes' `train_utils.train` and `evaluation` (meta-llama/llama-cookbook): a tqdm bar
per epoch whose description is `Training Epoch: {epoch+1}/{num_epochs}, step
{step}/{len(train_dataloader)} completed (loss: {loss.detach().float()})` (its step restarts
at 0 every epoch), an evaluation bar, `print(f" {eval_ppl=} {eval_epoch_loss=}")`, the best
eval loss and the epoch summary, with the same print statements. The model is a random-init
2-layer GPT-2 on a synthetic token stream (a noisy repeating grammar), no downloads, seeded.
The batch of epoch 2, step 60 is replaced by uniform random tokens: a bad batch, injected.

    python benchmarks/llama_recipes_sample.py > llama_recipes_tiny_gpt2_stdout.log 2>&1

in a separate environment with transformers (5.25 here), tqdm and a CPU torch: none of
them is a dependency of spikelens."""
import random
import time

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, set_seed

set_seed(0)
V, T = 64, 32
rng = random.Random(0)
NUM_EPOCHS, BATCH, BAD = 3, 8, (1, 60)  # (epoch index, step) of the injected bad batch


def sample() -> list[int]:
    # a repeating pattern with noise: learnable but not trivial
    base = [rng.randrange(V) for _ in range(4)]
    seq: list[int] = []
    while len(seq) < T:
        seq += [(b + rng.choice([0, 0, 0, 1])) % V for b in base]
    return seq[:T]


def batches(n: int) -> list[torch.Tensor]:
    rows = torch.tensor([sample() for _ in range(n)])
    return list(rows.split(BATCH))


train_dataloader, eval_dataloader = batches(1000), batches(200)
model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=2))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.85)


def evaluation() -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    eval_loss = 0.0
    for batch in tqdm(eval_dataloader, colour="green", desc="evaluating Epoch",
                      dynamic_ncols=True):
        with torch.no_grad():
            eval_loss += model(input_ids=batch, labels=batch).loss.detach().float()
    eval_epoch_loss = eval_loss / len(eval_dataloader)
    eval_ppl = torch.exp(eval_epoch_loss)
    print(f" {eval_ppl=} {eval_epoch_loss=}")
    return eval_ppl, eval_epoch_loss


best_val_loss = float("inf")
for epoch in range(NUM_EPOCHS):
    epoch_start_time = time.perf_counter()
    model.train()
    total_loss = 0.0
    total_length = len(train_dataloader)
    pbar = tqdm(colour="blue", desc=f"Training Epoch: {epoch+1}", total=total_length,
                dynamic_ncols=True)
    for step, batch in enumerate(train_dataloader):
        if (epoch, step) == BAD:
            batch = torch.randint(0, V, batch.shape, generator=torch.Generator().manual_seed(7))
        loss = model(input_ids=batch, labels=batch).loss
        total_loss += loss.detach().float()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pbar.update(1)
        pbar.set_description(f"Training Epoch: {epoch+1}/{NUM_EPOCHS}, step {step}/"
                             f"{len(train_dataloader)} completed (loss: {loss.detach().float()})")
    pbar.close()
    epoch_end_time = time.perf_counter() - epoch_start_time
    train_epoch_loss = total_loss / len(train_dataloader)
    train_perplexity = torch.exp(train_epoch_loss)
    lr_scheduler.step()
    eval_ppl, eval_epoch_loss = evaluation()
    if eval_epoch_loss < best_val_loss:
        best_val_loss = eval_epoch_loss
    print(f"best eval loss on epoch {epoch+1} is {best_val_loss}")
    print(f"Epoch {epoch+1}: train_perplexity={train_perplexity:.4f}, "
          f"train_epoch_loss={train_epoch_loss:.4f}, epoch time {epoch_end_time}s")
