"""Browser hardening for every HTTP response, and the bearer token on the operational paths
(metrics and API docs) unless the server is told to leave them open."""

from .errors import Unauthenticated

# Every response: no MIME sniffing, no framing (clickjacking), no URL leaked to other sites.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# The analysis page: no script at all (it has none), its own inline CSS (a <style> block and
# the heatmap's per-token colours), forms posting only back to this server.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Prometheus metrics, Swagger UI, ReDoc, the OpenAPI schema and the docs' own assets.
OPERATIONAL_PATHS = (
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static-offline-docs",
)


def is_operational(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPERATIONAL_PATHS)


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_hardened(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_hardened)


class TokenOnOperationalPaths:
    """ASGI middleware: the bearer token on OPERATIONAL_PATHS (the API routes check it
    themselves; health checks stay open)."""

    def __init__(self, app, token, refuse):
        self.app, self.token, self.refuse = app, token, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_operational(scope["path"]):
            headers = dict(scope["headers"])
            try:
                self.token.check(
                    (headers.get(b"authorization") or b"").decode("latin-1")
                )
            except Unauthenticated as exc:
                return await self.refuse(exc)(scope, receive, send)
        await self.app(scope, receive, send)
