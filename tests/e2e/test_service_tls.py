"""Optional TLS on both front ends, with a throwaway self-signed certificate."""

import shutil
import ssl
import subprocess

import grpc
import pytest

from conftest import ThreadedServer
from tokenweight import wire
from tokenweight.v1 import scorer_pb2_grpc


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_grpc_and_https_over_tls(tiny_scorers, certificate):
    cert, key = certificate
    with ThreadedServer(tiny_scorers, tls_cert=str(cert), tls_key=str(key)) as srv:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        target = f"localhost:{srv.server.grpc.port}"
        with grpc.secure_channel(target, credentials, options=[("grpc.enable_http_proxy", 0)]) as channel:
            response = scorer_pb2_grpc.ScorerStub(channel).Score(wire.build_request([[1, 2, 3]]), timeout=10)
            assert len(response.results) == 1
        with srv.channel() as plaintext:
            with pytest.raises(grpc.RpcError):
                scorer_pb2_grpc.ScorerStub(plaintext).Score(wire.build_request([[1, 2, 3]]), timeout=3)
        import httpx

        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://localhost:{srv.server.http.port}"
        with httpx.Client(base_url=url, verify=context, trust_env=False) as http:
            assert http.post("/v1/score", json={"token_ids": [[1, 2, 3]]}).status_code == 200
