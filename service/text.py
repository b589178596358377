"""Text input: token ids and their decoded strings, the same for every front end and the
command line, and the size check that runs before any text reaches the tokenizer."""

import functools

from .errors import InvalidArgument


@functools.cache
def longest_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry, which no token's text exceeds: a text of n
    characters has at least n / this many tokens, whatever the tokenizer does with it.

    (A byte-level entry has a character per byte, and bytes are never fewer than the
    characters they decode to; a byte-fallback entry such as `<0x0A>` stands for one byte.)
    """
    return max(map(len, tokenizer.get_vocab()), default=1)


def check_text_size(
    texts: list[str],
    chars_per_token: int,
    max_text_tokens: int,
    max_request_tokens: int,
) -> None:
    """Refuse texts that must tokenise to more tokens than accepted, before tokenising them
    (tokenising megabytes takes seconds and hundreds of MB): a text of more than
    `max_text_tokens * chars_per_token` characters has more than `max_text_tokens` tokens."""
    for i, text in enumerate(texts):
        if len(text) > max_text_tokens * chars_per_token:
            raise InvalidArgument(
                f"text {i} has {len(text)} characters, more than the {max_text_tokens} tokens "
                f"a sequence may have can hold ({chars_per_token} characters per token at "
                "most with this tokenizer). Split the text"
            )
    total = sum(map(len, texts))
    if total > max_request_tokens * chars_per_token:
        raise InvalidArgument(
            f"the texts have {total} characters, more than the {max_request_tokens} tokens a "
            f"request may have can hold ({chars_per_token} characters per token at most with "
            "this tokenizer). Split them into several requests"
        )


def _check_unicode(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"text {i} is not valid Unicode: a lone surrogate "
                f"U+{ord(text[exc.start]):04X} at character {exc.start}; send UTF-8 text "
                "(a JSON \\ud800-\\udfff escape must be one half of a pair)"
            ) from None


def tokenize(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[str]]]:
    """Ids with the tokenizer's own template (BOS etc.), and each id decoded on its own.

    Special-token strings in the text (`<s>`, `</s>`, `<pad>`, ...) are encoded as the plain
    text they are: only the template adds special tokens, so text cannot inject them.
    """
    _check_unicode(texts)
    ids = [tokenizer(text, split_special_tokens=True)["input_ids"] for text in texts]
    tokens = [[tokenizer.decode([i]) for i in seq] for seq in ids]
    return ids, tokens
