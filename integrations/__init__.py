"""tokenweight.integrations: token weighting inside trainers that are not tokenweight's own."""
