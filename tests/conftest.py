"""Shared fixtures: tiny random-weight checkpoints with a real tokenizer, built once per session.

The tokenizer is a byte-level BPE trained on a few strings, so any text encodes; `<s>` is id 1
and is prepended to every encoding, like a Llama tokenizer. Both models share it (a long/short
pair must share the vocabulary).
"""

import pytest

TINY_VOCAB = 300
TINY_BOS = 1
TINY_MAX_POSITIONS = 512

_CORPUS = [
    "Token weighting makes long-context training pay attention to the tokens that need it.",
    "A frozen scorer predicts every token twice: with the whole document and a short window.",
    "The quick brown fox jumps over the lazy dog. <script>alert('x')</script> & friends",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", TINY_BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _save_tiny_llama(path, seed: int, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=TINY_BOS,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    _tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama checkpoint (safetensors + tokenizer) in a session temp dir."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny") / "long", seed=0)


@pytest.fixture(scope="session")
def tiny_short_model_dir(tmp_path_factory):
    """A second tiny Llama with the same tokenizer, to serve as a separate short model."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny") / "short", seed=1, layers=1)
