"""bf16 engine vs an fp32 reference on a small model: how far apart are the log-probs?

    python -m bench.precision_bench   ->  bench/results/precision_h200.json
"""


import numpy as np
import torch

from bench.common import machine, write_results
from tokenweight.service.engine import ScoringEngine

SMALL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=32000)


def main():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SMALL, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2)
    reference = LlamaForCausalLM(config).cuda().eval().requires_grad_(False)
    low = LlamaForCausalLM(config).cuda().eval().requires_grad_(False)
    low.load_state_dict(reference.state_dict())
    low.to(torch.bfloat16)
    length, window = 4096, 1024
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, config.vocab_size, (length,), generator=g).numpy() for _ in range(8)]
    want = ScoringEngine(reference, window=window).score(seqs)
    got = ScoringEngine(low, window=window).score(seqs)
    row = {"model": "llama-small (d512, 4 layers, vocab 32000)", "seq_len": length, "window": window}
    for name in ("logp_long", "logp_short", "score"):
        delta = np.concatenate([np.abs(getattr(a, name) - getattr(b, name)) for a, b in zip(got, want)])
        row[f"{name}_mean_abs_diff"] = float(delta.mean())
        row[f"{name}_max_abs_diff"] = float(delta.max())
    row.update(machine(), command="python -m bench.precision_bench")
    print(row)
    write_results("precision_h200.json", [row])


if __name__ == "__main__":
    main()
