"""The one table between gRPC status codes and the HTTP statuses of the HTTP API.

The server answers a failure with `HTTP_STATUS[code]`; the HTTP client reads any status back
into a gRPC code with `grpc_code`, so callers see one error vocabulary whichever protocol
carried the call (docs/DESIGN.md §3, the errors table).
"""

import grpc

_C = grpc.StatusCode

HTTP_STATUS = {
    _C.INVALID_ARGUMENT: 400,
    _C.UNAUTHENTICATED: 401,
    _C.PERMISSION_DENIED: 403,
    _C.NOT_FOUND: 404,
    _C.RESOURCE_EXHAUSTED: 429,
    _C.INTERNAL: 500,
    _C.UNAVAILABLE: 503,
    _C.DEADLINE_EXCEEDED: 504,
}

# HTTP statuses that are not the image of a code above: the server's own body checks (413 too
# large, 422 failed validation) and a proxy in front of a restarting server (502).
_HTTP_ONLY = {413: _C.INVALID_ARGUMENT, 422: _C.INVALID_ARGUMENT, 502: _C.UNAVAILABLE}

GRPC_CODE = {status: code for code, status in HTTP_STATUS.items()} | _HTTP_ONLY


def http_status(code: grpc.StatusCode | str) -> int:
    """The HTTP status for a gRPC code (or its name); anything unlisted is a 500."""
    if isinstance(code, str):
        code = _C[code]
    return HTTP_STATUS.get(code, 500)


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code an HTTP status stands for; UNKNOWN for one the API never answers."""
    return GRPC_CODE.get(status, _C.UNKNOWN)
