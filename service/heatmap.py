"""The analysis page's drawing pieces: token heatmap spans, a score histogram, the page's
style. Pure rendering (no server code), shared by the `/` page and `tokenweight rank-page`.
Every user-supplied or model-produced string goes through `html.escape`.
"""

from html import escape
from importlib import resources

PAGE_HTML = resources.files(__package__).joinpath("static/analysis.html").read_text()
# The page's <style> element, for other pages that draw the same heatmaps and histograms.
STYLE = PAGE_HTML[PAGE_HTML.index("<style>") : PAGE_HTML.index("</style>") + len("</style>")]
BINS = 20


def token_span(token: str, tip: str, alpha: float = 0.0, first: bool = False) -> str:
    """One token of a heatmap: background opacity `alpha` (0..1), `tip` shown on hover."""
    if first:
        return f'<span class="tok first" data-tip="{escape(tip)}">{escape(token)}</span>'
    return (
        f'<span class="tok" style="background: rgba(230, 80, 0, {alpha:.3f})" '
        f'data-tip="{escape(tip)}">{escape(token)}</span>'
    )


def histogram(
    scores: list[float], width: int = 640, height: int = 160, unit: str = "tokens"
) -> str:
    """An SVG histogram of non-negative values in BINS bins from 0 to their maximum."""
    if not scores:
        return '<p class="meta">No targets: the text has fewer than two tokens.</p>'
    top = max(scores) or 1.0
    counts = [0] * BINS
    for s in scores:
        counts[min(BINS - 1, int(s / top * BINS))] += 1
    most = max(counts)
    bar = width / BINS
    bars = []
    for b, count in enumerate(counts):
        h = (height - 20) * count / most
        lo, hi = top * b / BINS, top * (b + 1) / BINS
        bars.append(
            f'<rect x="{b * bar:.1f}" y="{height - 20 - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            f'fill="#e65000"><title>{lo:.3f}–{hi:.3f}: {count} {unit}</title></rect>'
        )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="histogram of scores">'
        f'{"".join(bars)}<text x="0" y="{height - 4}">0</text>'
        f'<text x="{width - 60}" y="{height - 4}">{top:.3f}</text></svg>'
    )
