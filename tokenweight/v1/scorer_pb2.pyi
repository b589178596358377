from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenSequence(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: bytes
    text: str
    def __init__(self, token_ids: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class OutputSelection(_message.Message):
    __slots__ = ("score", "logp_long", "logp_short")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGP_LONG_FIELD_NUMBER: _ClassVar[int]
    LOGP_SHORT_FIELD_NUMBER: _ClassVar[int]
    score: bool
    logp_long: bool
    logp_short: bool
    def __init__(self, score: _Optional[bool] = ..., logp_long: _Optional[bool] = ..., logp_short: _Optional[bool] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "scorer", "sequences", "window", "stride", "outputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    scorer: str
    sequences: _containers.RepeatedCompositeFieldContainer[TokenSequence]
    window: int
    stride: int
    outputs: OutputSelection
    def __init__(self, request_id: _Optional[str] = ..., scorer: _Optional[str] = ..., sequences: _Optional[_Iterable[_Union[TokenSequence, _Mapping]]] = ..., window: _Optional[int] = ..., stride: _Optional[int] = ..., outputs: _Optional[_Union[OutputSelection, _Mapping]] = ...) -> None: ...

class TokenScores(_message.Message):
    __slots__ = ("score", "logp_long", "logp_short", "token_ids", "tokens")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGP_LONG_FIELD_NUMBER: _ClassVar[int]
    LOGP_SHORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    score: bytes
    logp_long: bytes
    logp_short: bytes
    token_ids: bytes
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, score: _Optional[bytes] = ..., logp_long: _Optional[bytes] = ..., logp_short: _Optional[bytes] = ..., token_ids: _Optional[bytes] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "scorer", "fingerprint", "results", "window", "stride", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    scorer: str
    fingerprint: str
    results: _containers.RepeatedCompositeFieldContainer[TokenScores]
    window: int
    stride: int
    error: ScoreError
    def __init__(self, request_id: _Optional[str] = ..., scorer: _Optional[str] = ..., fingerprint: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TokenScores, _Mapping]]] = ..., window: _Optional[int] = ..., stride: _Optional[int] = ..., error: _Optional[_Union[ScoreError, _Mapping]] = ...) -> None: ...

class ListScorersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScorerInfo(_message.Message):
    __slots__ = ("name", "long_model", "short_model", "default_window", "default_stride", "max_sequence_length", "vocab_size", "dtype", "device", "fingerprint", "is_default", "max_request_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LONG_MODEL_FIELD_NUMBER: _ClassVar[int]
    SHORT_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STRIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    long_model: str
    short_model: str
    default_window: int
    default_stride: int
    max_sequence_length: int
    vocab_size: int
    dtype: str
    device: str
    fingerprint: str
    is_default: bool
    max_request_tokens: int
    def __init__(self, name: _Optional[str] = ..., long_model: _Optional[str] = ..., short_model: _Optional[str] = ..., default_window: _Optional[int] = ..., default_stride: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., fingerprint: _Optional[str] = ..., is_default: _Optional[bool] = ..., max_request_tokens: _Optional[int] = ...) -> None: ...

class ListScorersResponse(_message.Message):
    __slots__ = ("scorers", "default_scorer")
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCORER_FIELD_NUMBER: _ClassVar[int]
    scorers: _containers.RepeatedCompositeFieldContainer[ScorerInfo]
    default_scorer: str
    def __init__(self, scorers: _Optional[_Iterable[_Union[ScorerInfo, _Mapping]]] = ..., default_scorer: _Optional[str] = ...) -> None: ...
