"""The engine and the gRPC path work without the web stack (the GPU image lacks it)."""

import subprocess
import sys

GRPC_ONLY_SERVER = """
import asyncio, sys
for name in ("fastapi", "starlette", "uvicorn", "pydantic"):
    sys.modules[name] = None  # any import of them now fails

import grpc
from tokenweight import wire
from tokenweight.service.config import ScorerConfig, ServeConfig, ServerConfig
from tokenweight.service.runner import ScorerServer
from tokenweight.v1 import scorer_pb2_grpc

async def main():
    scorer = ScorerConfig("s", sys.argv[1], window=8, device="cpu")
    server = ScorerServer(ServeConfig([scorer], "s", ServerConfig(grpc_port=0, http=False)))
    await server.start()
    await server.load()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc.port}") as channel:
        response = await scorer_pb2_grpc.ScorerStub(channel).Score(wire.build_request([[1, 2, 3]]))
    assert wire.parse_response(response).results[0].score.size == 2
    await server.shutdown(1)

asyncio.run(main())
"""


def test_grpc_server_runs_without_fastapi_or_uvicorn(tiny_model_dir):
    result = subprocess.run(
        [sys.executable, "-c", GRPC_ONLY_SERVER, str(tiny_model_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
