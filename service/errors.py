"""Errors a request can end with, independent of the protocol that carries them.

Each names its gRPC status; the HTTP layer maps the same names to HTTP statuses through
`tokenweight.status`, so both front ends answer the same failure the same way.
"""


class ServiceError(Exception):
    """A request failure whose message says what was wrong and how to fix it."""

    status = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    status = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    status = "NOT_FOUND"


class AlreadyExists(ServiceError):
    status = "ALREADY_EXISTS"


class QueueFull(ServiceError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    status = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    status = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    status = "UNAUTHENTICATED"
