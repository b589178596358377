"""The `/` analysis page, rendered on the server: a token heatmap and a score histogram.

Rendering on the server keeps the page usable without JavaScript and makes escaping
checkable: every user-supplied or model-produced string goes through `html.escape`.
"""

from html import escape
from string import Template

from .heatmap import PAGE_HTML, histogram, token_span

_TEMPLATE = Template(PAGE_HTML)


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
