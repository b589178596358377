"""Typed request and response bodies of the HTTP API (docs/DESIGN.md §4), shared by JSON and
msgpack; the per-sequence arrays and ScorerInfo are the wire's own types."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from tokenweight.wire import OUTPUT_NAMES, ScorerInfo

OutputName = Literal[OUTPUT_NAMES]
UINT32_MAX = 2**32 - 1


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorer: str = Field("", description="Scorer name; empty or absent selects the default")
    # The bounds of gRPC's uint32 fields, so both front ends accept the same values.
    window: int = Field(
        0, ge=0, le=UINT32_MAX, description="Short-context window k; 0 = the scorer's default"
    )
    stride: int = Field(0, ge=0, le=UINT32_MAX, description="Stride s; 0 = the default (3k/4)")
    token_ids: list[list[StrictInt]] | None = Field(None, description="Sequences of token ids")
    text: str | list[str] | None = Field(
        None, description="Text, tokenized with the scorer's tokenizer (with its BOS)"
    )
    outputs: list[OutputName] | None = Field(
        None, description="Arrays to return; absent = all three. Only logp_short skips the long pass"
    )

    @model_validator(mode="after")
    def _one_input(self):
        if (self.token_ids is None) == (self.text is None):
            raise ValueError("give exactly one of 'token_ids' (a list of lists of ints) or 'text'")
        return self


class ScoredSequence(BaseModel):
    """One sequence of the answer: its ids and `tokenweight.wire.Scores` as JSON lists."""

    token_ids: list[int]
    tokens: list[str] | None = Field(None, description="Decoded tokens, for text input")
    score: list[float] | None = Field(None, description="|logp_short - logp_long|, L-1 values")
    logp_long: list[float] | None = None
    logp_short: list[float] | None = None


class ScoreResponseBody(BaseModel):
    scorer: str
    fingerprint: str
    window: int
    stride: int
    results: list[ScoredSequence]


class ScorersBody(BaseModel):
    default_scorer: str
    scorers: list[ScorerInfo]


class ErrorBody(BaseModel):
    error: str
