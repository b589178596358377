"""A shared bearer token, checked the same way on gRPC metadata and HTTP headers.

Health checks stay open (load balancers and orchestrators probe without credentials).
"""

import hmac

import grpc

from .errors import Unauthenticated

# Methods of these gRPC services need no token.
OPEN_GRPC_SERVICES = ("/grpc.health.v1.Health/",)
TOKEN_ENV = "TOKENWEIGHT_AUTH_TOKEN"


class BearerToken:
    def __init__(self, token: str):
        self._expected = token.encode()

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless `authorization` is "Bearer <the token>"."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthenticated(
                "this server needs a bearer token: send the header 'authorization: Bearer <token>' "
                f"(clients read it from ${TOKEN_ENV})"
            )
        self.check_token(given.strip())

    def check_token(self, given: str) -> None:
        if not hmac.compare_digest(given.encode(), self._expected):
            raise Unauthenticated("the bearer token is wrong")


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: BearerToken):
        self._token = token

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_GRPC_SERVICES):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        try:
            self._token.check(metadata.get("authorization"))
        except Unauthenticated as exc:
            handler = await continuation(details)
            return _denying(handler, exc.message) if handler else None
        return await continuation(details)


def _denying(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""

    async def deny(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
