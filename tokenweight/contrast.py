"""The one check for scoring settings that leave nothing to contrast (docs/DESIGN.md §1.1).

Targets t < window have the whole prefix as their short context, so a sequence of no more
than `window` tokens gets score 0 everywhere and the weights come out uniform. Every place
that sets a window against sequences (the trainer's sources, precompute, `tokenweight score`)
warns through this check, with numpy-free code that the client-only install can run.
"""


def no_contrast_warning(window: int, length: int, what: str) -> str | None:
    """The warning for `length`-token `what` scored with `window`; None when some target
    gets a short context (length > window)."""
    if length > window:
        return None
    return (
        f"window {window} is not shorter than {what} ({length} tokens): every short context "
        "is the whole prefix, so all contrasts are 0 and the weights uniform"
    )
