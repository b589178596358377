"""A Hugging Face Trainer run with tokenweight's collator and loss, started by torchrun from
tests/e2e/test_integration_transformers.py. Its settings mirror `torchrun_args` of
train_helpers.py (tokenweight's own trainer) so the two runs' losses can be compared:
the same checkpoint, rows in the same per-rank order, AdamW, constant learning rate, clipping.

    torchrun --nproc-per-node 2 tests/hf_trainer_run.py MODEL DATA OUT SCORER_URL SOURCE STEPS GRAD_ACCUM LAM
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from tokenweight.integrations.transformers import (
    ScoreCollator,
    ServiceScores,
    TokenWeightLoss,
    TokenWeightTrainer,
    WeightingConfig,
)
from tokenweight.trainer.data import RankBatches, TokenShards

BATCH_SIZE = 2  # per rank, as train_helpers.torchrun_args
WORLD_SIZE = 2
SEED = 0


def rows_in_trainer_order(data: str, micro_batches: int) -> list[dict]:
    """Examples laid out so that Trainer's sequential sampler, sharded by accelerate (rank r
    takes batches r, r + W, ...), hands every rank the rows tokenweight's trainer gives it."""
    shards = TokenShards(data)
    ranks = [RankBatches(shards, BATCH_SIZE, r, WORLD_SIZE, SEED) for r in range(WORLD_SIZE)]
    indices = [
        i for step in range(micro_batches) for order in ranks for i in order.indices_at(step)
    ]
    return [{"input_ids": torch.as_tensor(shards[i], dtype=torch.long)} for i in indices]


def main(model, data, out, url, source, steps, grad_accum, lam) -> None:
    steps, grad_accum, hybrid = int(steps), int(grad_accum), source == "hybrid"
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=grad_accum,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=SEED,
        train_sampling_strategy="sequential",
        dataloader_num_workers=1,
        dataloader_prefetch_factor=2,
        remove_unused_columns=False,
        use_cpu=True,
        ddp_backend="gloo",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = TokenWeightTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        args=args,
        train_dataset=rows_in_trainer_order(data, steps * grad_accum),
        data_collator=ScoreCollator(ServiceScores(url, hybrid=hybrid)),
        token_weight_loss=TokenWeightLoss(
            WeightingConfig.from_preset("dense", lam=float(lam), seed=SEED), hybrid=hybrid
        ),
    )
    trainer.train()
    if trainer.is_world_process_zero():
        losses = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
        (Path(out) / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(*sys.argv[1:])
