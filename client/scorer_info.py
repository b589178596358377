"""`ScorerInfo`: what `list_scorers()` returns, from gRPC and HTTP alike."""

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ScorerInfo:
    """One hosted scorer (the fields of the proto's ScorerInfo)."""

    name: str
    long_model: str = ""
    short_model: str = ""
    default_window: int = 0
    default_stride: int = 0
    max_sequence_length: int = 0
    vocab_size: int = 0
    dtype: str = ""
    device: str = ""
    fingerprint: str = ""
    is_default: bool = False
    max_request_tokens: int = 0

    @classmethod
    def from_message(cls, message) -> "ScorerInfo":
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, data: dict) -> "ScorerInfo":
        """From the HTTP API's JSON; keys this client does not know are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})
