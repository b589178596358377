"""tokenweight: token weighting for long-context language-model training."""

__version__ = "0.1.0"
