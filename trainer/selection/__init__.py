"""Document selection for long-context training: rank documents by how much of their
predictability needs far-away context (`tokenweight rank`), keep the top fraction stratified
with a matched random control (`tokenweight select`), and show the ranking
(`tokenweight rank-page`). docs/SELECTION.md defines every statistic."""
