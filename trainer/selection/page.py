"""`tokenweight rank-page`: one HTML page that shows a ranking.

Histograms of each statistic over the ranked documents, then the top and bottom documents
with their statistics and, around each of their highest-gain targets (the table's
`top_tokens`), a snippet of the document drawn with the analysis page's heatmap: opacity is
the target's context gain relative to the document's highest, copies (see stats.py) are
marked in the tooltip. Rendering is the service's (`tokenweight.service.heatmap`), so every
string from the documents is escaped the same way.
"""

import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

from tokenweight.flags import add_flags, flag, values_of

from .select import RankedInput, ranked_input, read_ranking
from .stats import OK

STATISTICS = ("score", "context_gain", "key_density", "repetition_share", "copied_share")
BEFORE, AFTER = 12, 4  # tokens of context shown around a highlighted target


@dataclass(frozen=True)
class PageConfig:
    out: str = flag(help="the HTML file to write")
    top: int = flag(10, "highest-scoring documents shown")
    bottom: int = flag(5, "lowest-scoring documents shown")


def add_arguments(parser) -> None:
    for cls in (RankedInput, PageConfig):
        add_flags(parser, cls)


def run(args) -> int:
    ranked = RankedInput(**values_of(args, RankedInput))
    config = PageConfig(**values_of(args, PageConfig))
    try:
        html = render(ranked.ranking, config.top, config.bottom, ranked.input, ranked.tokenizer)
        Path(config.out).write_text(html, encoding="utf-8")
    except (ValueError, OSError) as exc:
        print(f"tokenweight rank-page: error: {exc}", file=sys.stderr)
        return 1
    print(config.out)
    return 0


def render(
    ranking, top: int = PageConfig.top, bottom: int = PageConfig.bottom, inputs=None, tokenizer=None
) -> str:
    from tokenweight.service.heatmap import STYLE, histogram

    meta, rows = read_ranking(ranking)
    ranked = sorted((r for r in rows if r["status"] == OK), key=lambda r: (-r["score"], r["index"]))
    shown = ranked[:top] + ranked[max(top, len(ranked) - bottom) :]
    wanted = {r["index"] for r in shown}
    documents = ranked_input(ranking, meta, inputs, tokenizer)
    tokens = {d.index: d.token_ids for d in documents if d.index in wanted}
    decode = _decoder(tokenizer or meta["tokenizer"])
    settings = (
        f"scorer {escape(meta['scorer'])} · fingerprint {escape(meta['fingerprint'])} · window "
        f"{meta['window']} · stride {meta['stride']} · {len(ranked)} ranked, "
        f"{len(rows) - len(ranked)} without targets beyond the window · key token: gain &gt; "
        f"{meta['stats']['key_gain']} and logp_long &gt; {meta['stats']['key_logp']} · copy: "
        f"{meta['stats']['copy_ngram']}-gram seen earlier"
    )
    title = f"tokenweight — ranking {escape(str(ranking))}"
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>',
        f"{STYLE}</head><body><h1>Ranking of {len(rows)} documents</h1>",
        f'<p class="meta">{settings}</p>',
    ]
    for name in STATISTICS:
        values = [r[name] for r in ranked]
        parts.append(f"<h2>{name}</h2>{histogram(values, unit='documents')}")
    for title, group in (
        ("Top documents", ranked[:top]),
        ("Bottom documents", shown[len(ranked[:top]) :]),
    ):
        parts.append(f"<h2>{title}</h2>")
        for row in group:
            parts.append(_document(row, tokens[row["index"]], decode))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _document(row: dict, ids, decode) -> str:
    from tokenweight.service.heatmap import token_span

    stats = " · ".join(f"{name} {row[name]:.4f}" for name in STATISTICS)
    head = (
        f'<h3>#{row["index"]} {escape(row["doc"])}</h3><p class="meta">{row["length"]} tokens · '
        f"{row['long_targets']} targets beyond the window · {stats}</p>"
    )
    best = max((t[1] for t in row["top_tokens"]), default=0.0) or 1.0
    snippets = []
    for position, gain, long, short, copied in row["top_tokens"]:
        spans = []
        for j in range(max(0, position - BEFORE), min(len(ids), position + AFTER + 1)):
            text = decode(int(ids[j]))
            if j == position:
                tip = (
                    f"token {j} (id {int(ids[j])})\ngain       {gain:.4f}\nlogp_long  {long:.4f}\n"
                    f"logp_short {short:.4f}\ncopy       {'yes' if copied else 'no'}"
                )
                spans.append(token_span(text, tip, min(1.0, gain / best)))
            else:
                spans.append(token_span(text, f"token {j}"))
        snippets.append("".join(spans))
    return head + '<div class="tokens">' + "\n⋯\n".join(snippets) + "</div>"


def _decoder(tokenizer):
    if tokenizer is None:
        return str
    from ..prepare import load_tokenizer

    backend = load_tokenizer(tokenizer).backend
    return lambda token_id: backend.decode([token_id], skip_special_tokens=False)
