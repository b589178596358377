"""The trainer's speed options compute the same weighted loss and gradients as the plain path
(fp32 on CPU), and compiled blocks leave attention out of the compiled graphs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenweight.service.blocks import compile_blocks
from tokenweight.trainer.loss import token_cross_entropy, weighted_mean
from tokenweight.trainer.model import HiddenStates, apply_activation_checkpointing

VOCAB, SEQ = 96, 40


def tiny_lm(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).train()


def batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    weights = torch.rand(2, SEQ - 1, generator=g) * 2
    mask = torch.ones(2, SEQ - 1, dtype=torch.bool)
    mask[1, -5:] = False  # padded targets must count neither in the sum nor in the mean
    return tokens, weights, mask


def loss_and_grads(lm, *, chunk_size=2048, compiled_loss=False, recompute=True):
    tokens, weights, mask = batch()
    hidden = HiddenStates(lm)(tokens[:, :-1])
    token_ce, real = token_cross_entropy(
        hidden, lm.get_output_embeddings(), tokens[:, 1:], mask=mask,
        chunk_size=chunk_size, compiled=compiled_loss, recompute=recompute,
    )
    result = weighted_mean(token_ce, real, weights)
    result.loss.backward()
    grads = {name: p.grad.clone() for name, p in lm.named_parameters()}
    return result.loss.detach(), token_ce, grads


def assert_same(a, b):
    loss_a, ce_a, grads_a = a
    loss_b, ce_b, grads_b = b
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce_b, ce_a, rtol=1e-5, atol=1e-6)
    assert grads_b.keys() == grads_a.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_compiled_blocks_give_the_plain_loss_and_gradients(checkpointed):
    plain = tiny_lm()
    fast = tiny_lm()
    compile_blocks(fast)
    if checkpointed:
        apply_activation_checkpointing(plain)
        apply_activation_checkpointing(fast)
    assert_same(loss_and_grads(plain), loss_and_grads(fast))
    # Parameter names (checkpoints, export) do not change.
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in plain.named_parameters()]


def test_compiled_and_rechunked_loss_give_the_plain_loss_and_gradients():
    reference = loss_and_grads(tiny_lm())
    assert_same(reference, loss_and_grads(tiny_lm(), chunk_size=7))
    assert_same(reference, loss_and_grads(tiny_lm(), chunk_size=16, compiled_loss=True))
    assert_same(reference, loss_and_grads(tiny_lm(), chunk_size=16, recompute=False))
    assert_same(
        reference, loss_and_grads(tiny_lm(), chunk_size=16, compiled_loss=True, recompute=False)
    )


def compiled_graphs(layers: int) -> list:
    """The graphs compile_blocks hands the compiler over two training steps."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    lm = tiny_lm(layers)
    compile_blocks(lm, backend=record)
    tokens, _, _ = batch()
    for _ in range(2):
        HiddenStates(lm)(tokens).sum().backward()
    return graphs


def test_compiled_blocks_compile_once_for_all_layers():
    # Per-layer graphs would pass dynamo's recompile limit (8) and silently run deep models eager.
    assert len(compiled_graphs(12)) == len(compiled_graphs(2))


def test_compiled_blocks_keep_attention_out_of_the_graphs():
    graphs = compiled_graphs(2)
    assert graphs, "no layer was compiled"
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert not [t for t in targets if "scaled_dot_product" in t]
    # The elementwise work around attention is in them: RoPE's rotate-half concatenation.
    assert any("cat" in t for t in targets)


def test_checkpointing_every_other_layer_gives_the_plain_loss_and_gradients():
    selective = tiny_lm(layers=3)
    apply_activation_checkpointing(selective, every=2)
    wrapped = [type(layer).__name__ == "CheckpointWrapper" for layer in selective.model.layers]
    assert wrapped == [True, False, True]
    loss, ce, grads = loss_and_grads(selective)
    grads = {name.replace("._checkpoint_wrapped_module", ""): g for name, g in grads.items()}
    assert_same(loss_and_grads(tiny_lm(layers=3)), (loss, ce, grads))


def test_fast_flag_turns_on_the_speed_set_and_bf16_params_need_fsdp():
    from tokenweight.trainer.args import parse_args

    base = ["--model", "m", "--data", "d", "--out", "o", "--max-steps", "1", "--weighting", "uniform"]
    fast = parse_args([*base, "--fast"])
    assert fast.fused_optimizer and fast.compile_blocks and fast.compile_loss
    plain = parse_args(base)
    assert not (plain.fused_optimizer or plain.compile_blocks or plain.compile_loss)
    with pytest.raises(SystemExit):
        parse_args([*base, "--bf16-params"])  # DDP has no parameter dtype policy
    assert parse_args([*base, "--bf16-params", "--parallel", "fsdp"]).bf16_params


def test_fsdp_bf16_params_give_the_loss_of_the_bf16_model_and_fp32_gradients():
    import torch.distributed as dist
    import torch.nn.functional as F

    from tokenweight.trainer.parallel import init_distributed, parallelize

    tokens, _, _ = batch()
    reference = tiny_lm().to(torch.bfloat16)
    logits = reference(tokens[:, :-1]).logits.float()
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    expected.backward()

    d = init_distributed("cpu")
    try:
        lm = tiny_lm()
        model = parallelize(HiddenStates(lm), "fsdp", d, torch.bfloat16)
        hidden = model(tokens[:, :-1])
        assert hidden.dtype == torch.bfloat16
        token_ce, real = token_cross_entropy(hidden, lm.get_output_embeddings(), tokens[:, 1:])
        loss = weighted_mean(token_ce, real, None).loss
        loss.backward()
        torch.testing.assert_close(loss.detach(), expected.detach(), rtol=0, atol=2e-3)
        for (name, p), (_, q) in zip(lm.named_parameters(), reference.named_parameters()):
            grad = p.grad.full_tensor()
            assert p.dtype == grad.dtype == torch.float32, name  # master weights stay fp32
            torch.testing.assert_close(grad, q.grad.float(), rtol=0.05, atol=2e-3, msg=name)
    finally:
        dist.destroy_process_group()
