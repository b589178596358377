"""Byte-level BPE tokenizers trained locally with `tokenizers` (no downloads).

One recipe for the demo checkpoint and for `tokenweight tokenizer`: byte-level, so any text
encodes and decodes back exactly; `<s>` (BOS) put in front of every encoding by the template,
as a Llama tokenizer does; `</s>` (EOS) not added, since `tokenweight prepare` closes each
document with it; `<pad>` for batching tools that need one.
"""

from collections.abc import Iterable

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0..3, in this order


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None):
    """A PreTrainedTokenizerFast trained on `texts` (`length`: their count, for the progress bar)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer, length=length)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD
    )
