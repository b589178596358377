"""The `/` analysis page, rendered on the server: a token heatmap and a score histogram.

Rendering on the server keeps the page usable without JavaScript and makes escaping
checkable: every user-supplied or model-produced string goes through `html.escape`.
"""

from html import escape
from importlib import resources
from string import Template

_TEMPLATE = Template(resources.files(__package__).joinpath("static/analysis.html").read_text())
# The page's <style> element, for other pages that draw the same heatmaps and histograms.
STYLE = _TEMPLATE.template[
    _TEMPLATE.template.index("<style>") : _TEMPLATE.template.index("</style>") + len("</style>")
]
BINS = 20


def render(scorers: list[str], form: dict, result: dict | None, error: str | None, ask_token: bool) -> str:
    chosen = form.get("scorer", "")
    options = '<option value="">(default)</option>' + "".join(
        f'<option value="{escape(n)}"{" selected" if n == chosen else ""}>{escape(n)}</option>'
        for n in scorers
    )
    token_field = (
        '<label>token <input name="token" type="password" autocomplete="off"></label>' if ask_token else ""
    )
    return _TEMPLATE.substitute(
        text=escape(form.get("text", "")),
        scorer_options=options,
        window=escape(form.get("window", "")),
        stride=escape(form.get("stride", "")),
        token_field=token_field,
        error=f'<p class="error">{escape(error)}</p>' if error else "",
        result=_result(result) if result else "",
    )


def _result(result: dict) -> str:
    item = result["results"][0]
    scores = item["score"] or []
    top = max(scores, default=0.0) or 1.0
    spans = []
    for i, token in enumerate(item["tokens"] or [str(t) for t in item["token_ids"]]):
        if i == 0:
            tip = f"token 0 (id {item['token_ids'][0]}): no prediction, it starts the sequence"
            spans.append(token_span(token, tip, first=True))
            continue
        s, long, short = scores[i - 1], item["logp_long"][i - 1], item["logp_short"][i - 1]
        tip = (
            f"token {i} (id {item['token_ids'][i]})\nscore      {s:.4f}\n"
            f"logp_long  {long:.4f}\nlogp_short {short:.4f}"
        )
        spans.append(token_span(token, tip, min(1.0, s / top)))
    mean = sum(scores) / len(scores) if scores else 0.0
    meta = (
        f"scorer {escape(result['scorer'])} · window {result['window']} · stride {result['stride']} · "
        f"fingerprint {escape(result['fingerprint'])} · {len(item['token_ids'])} tokens · "
        f"mean score {mean:.4f} · max {max(scores, default=0.0):.4f}"
    )
    return (
        f'<h2>Tokens</h2><p class="meta">{meta}</p><div class="tokens">{"".join(spans)}</div>'
        f"<h2>Score histogram</h2>{histogram(scores)}"
    )


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
