"""Forward batches collated in tensor calls, launched ahead of the previous batch's results:
the same inputs as a row-by-row build, and bit-identical log-probs to a synchronous loop."""

import pytest
import torch

from tokenweight.service.chunking import plan_sequence
from tokenweight.service.collate import collate
from tokenweight.service.logprobs import ForwardOptions, batches_by_budget, run_segments

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


def tiny_model(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).to(device).eval().requires_grad_(False)


def segments():
    """Long passes and short chunks (score_from > 0) of ragged sequences, one with BOS."""
    gen = torch.Generator().manual_seed(1)
    segs = []
    for i, n in enumerate((300, 171, 64, 40, 9, 2)):
        tokens = torch.randint(3, 97, (n,), generator=gen)
        if i == 1:
            tokens[0] = 1
        segs += plan_sequence(i, tokens, 32, 24, 1, True, True, short_is_long=False)
    return segs


@pytest.mark.parametrize("device", DEVICES)
def test_collate_matches_a_row_by_row_build(device):
    for batch in batches_by_budget(segments(), token_budget=1024):
        got = collate(batch, torch.device(device))
        width = len(batch[0])
        rows = torch.zeros(len(batch), width, dtype=torch.long)
        positions, labels = [], []
        for r, seg in enumerate(batch):
            rows[r, : len(seg)] = seg.input_ids
            positions += range(r * width + seg.score_from, r * width + len(seg))
            labels.append(seg.labels)
        assert got.rows.device.type == device
        assert torch.equal(got.rows.cpu(), rows)
        assert got.positions.cpu().tolist() == positions
        assert torch.equal(got.labels.cpu(), torch.cat(labels))
        assert got.kept == [seg.labels.numel() for seg in batch]


@pytest.mark.parametrize("device", DEVICES)
def test_pipelined_batches_are_bit_identical_to_a_synchronous_loop(device):
    model, segs = tiny_model(device), segments()
    options = ForwardOptions(token_budget=512)
    batches = batches_by_budget(segs, options.token_budget)
    assert len(batches) > 3  # several batches in flight one after another

    want = {}
    with torch.inference_mode():
        for batch in batches:  # one forward, then its results, then the next batch
            width = len(batch[0])
            rows = torch.zeros(len(batch), width, dtype=torch.long)
            for r, seg in enumerate(batch):
                rows[r, : len(seg)] = seg.input_ids
            positions = torch.arange(width, device=device).expand(len(batch), width)
            hidden = model.base_model(
                input_ids=rows.to(device), position_ids=positions
            ).last_hidden_state
            # every kept position through the LM head at once, as the engine does (a matmul's
            # rounding may depend on its row count)
            kept = torch.cat([hidden[r, seg.score_from : len(seg)] for r, seg in enumerate(batch)])
            logits = model.lm_head(kept).float()
            labels = torch.cat([seg.labels for seg in batch]).to(device)[:, None]
            logp = (logits.gather(1, labels).squeeze(1) - torch.logsumexp(logits, dim=-1)).cpu()
            for seg, part in zip(batch, logp.split([seg.labels.numel() for seg in batch])):
                want[id(seg)] = part
        got = run_segments(model, segs, options)
    for seg, logp in zip(segs, got):
        assert torch.equal(logp, want[id(seg)]), f"segment of sequence {seg.sequence} differs"


def test_skipped_segments_are_left_out_of_every_batch():
    model, segs = tiny_model("cpu"), segments()
    with torch.inference_mode():
        got = run_segments(
            model, segs, ForwardOptions(token_budget=512), skip=lambda s: s.sequence == 0
        )
    for seg, logp in zip(segs, got):
        assert (logp.numel() == 0) == (seg.sequence == 0)
