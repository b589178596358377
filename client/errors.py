"""`ScorerError`: a failed scorer call, whichever protocol carried it."""

import grpc

from tokenweight.status import grpc_code


class ScorerError(Exception):
    """The gRPC status `code` and the server's `message`, plus where and how often it was tried.

    `attempts` counts the calls made before giving up (more than 1 after retries).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        endpoint: str = "",
        attempts: int = 1,
        http_status: int | None = None,
    ):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.attempts = attempts
        self.http_status = http_status

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, endpoint: str = "") -> "ScorerError":
        return cls(error.code(), error.details() or "", endpoint=endpoint)

    @classmethod
    def from_http(cls, status: int, message: str, endpoint: str = "") -> "ScorerError":
        code = grpc_code(status)
        return cls(code, message, endpoint=endpoint, http_status=status)

    def __str__(self) -> str:
        where = f" from {self.endpoint}" if self.endpoint else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self.code.name}{where}{tries}: {self.message}"
