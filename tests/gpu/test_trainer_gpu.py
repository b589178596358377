"""The trainer's compiled and fused paths give the plain path's losses and gradients on the GPU,
within bf16 rounding (skipped without CUDA)."""

import subprocess
import sys

import pytest
import torch

from bench.common import save_llama, write_tokens
from tokenweight.trainer.loss import token_cross_entropy, weighted_mean
from tokenweight.trainer.metrics_log import read_metrics
from tokenweight.service.blocks import compile_blocks
from tokenweight.trainer.model import HiddenStates, apply_activation_checkpointing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB, SEQ = 2048, 1024
SPEED_FLAGS = ("--compile-blocks", "--compile-loss", "--fused-optimizer", "--loss-chunk-size", "300")


def small_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to("cuda").train()  # fp32 master weights, as the trainer


def loss_and_grads(fast: bool):
    lm = small_lm()
    if fast:
        compile_blocks(lm)
    apply_activation_checkpointing(lm)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=g).cuda()
    weights = (torch.rand(2, SEQ - 1, generator=g) * 2).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = HiddenStates(lm)(tokens[:, :-1])
        token_ce, real = token_cross_entropy(
            hidden, lm.get_output_embeddings(), tokens[:, 1:],
            chunk_size=300 if fast else 2048, compiled=fast, recompute=not fast,
        )
        loss = weighted_mean(token_ce, real, weights).loss
    loss.backward()
    return loss.detach(), token_ce, {n: p.grad for n, p in lm.named_parameters()}


def test_compiled_blocks_and_loss_match_the_plain_path_in_bf16():
    loss_plain, ce_plain, grads_plain = loss_and_grads(fast=False)
    loss_fast, ce_fast, grads_fast = loss_and_grads(fast=True)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=2e-3, atol=0)
    assert (ce_fast - ce_plain).abs().max() < 0.05  # per token: bf16 logits of ~8 nats
    for name, g in grads_plain.items():
        error = (grads_fast[name] - g).norm() / g.norm()
        assert error < 0.03, f"{name}: relative gradient error {error:.4f}"


@pytest.mark.parametrize("more_flags", [
    (),  # as the 1B benchmark: compiled blocks inside activation checkpointing, under FSDP
    ("--no-loss-recompute", "--no-activation-checkpointing"),
    # the 1B shape's next candidates: bf16 FSDP parameters, every other layer checkpointed
    ("--bf16-params", "--activation-checkpointing-every", "2"),
])
def test_trainer_with_the_speed_options_follows_the_plain_losses(tmp_path, more_flags):
    model = save_llama("tiny", tmp_path / "model", SEQ)
    data = write_tokens(tmp_path / "data", 256, 17)
    losses = {}
    for name, flags in (("plain", ()), ("fast", SPEED_FLAGS + more_flags)):
        out = tmp_path / name
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "1", "-m", "tokenweight.trainer", "--model", str(model), "--data", str(data),
             "--out", str(out), "--batch-size", "4", "--max-steps", "4", "--device", "cuda",
             "--parallel", "fsdp", "--weighting", "uniform", "--lr", "1e-3", "--no-progress",
             *flags],
            check=True, timeout=300,
        )
        losses[name] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses["fast"]) == len(losses["plain"]) == 4
    torch.testing.assert_close(
        torch.tensor(losses["fast"]), torch.tensor(losses["plain"]), rtol=1e-2, atol=0
    )
