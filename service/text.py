"""Text input: token ids and their decoded strings, the same for HTTP and the command line."""


def tokenize(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[str]]]:
    """Ids with the tokenizer's own template (BOS etc.), and each id decoded on its own."""
    ids = [tokenizer(text)["input_ids"] for text in texts]
    tokens = [[tokenizer.decode([i]) for i in seq] for seq in ids]
    return ids, tokens
