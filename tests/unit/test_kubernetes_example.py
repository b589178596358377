"""examples/kubernetes: valid against the Kubernetes schemas (offline, kubernetes-validate's
bundled ones), and consistent with what the scorer serves."""

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tokenweight.client.channels import BALANCED_SERVICE_CONFIG
from tokenweight.service.config import load_config
from tokenweight.service.grpc_server import SERVICE_NAME

MANIFEST = Path(__file__).parents[2] / "examples" / "kubernetes" / "scorer.yaml"
KUBERNETES_VERSION = "1.37.0"


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_every_resource_is_valid_against_the_kubernetes_schemas(resources):
    assert set(resources) == {"ConfigMap", "Deployment", "Service"}
    for resource in resources.values():
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    # The validator does reject a malformed probe (so the pass above means something).
    broken = copy.deepcopy(resources["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_headless_service_probes_and_gpu(resources):
    service, deployment = resources["Service"], resources["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    # Headless: DNS returns every ready pod, for gRPC's round_robin to balance over.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    # Readiness asks the health service about the same service name the clients' health
    # checks watch, on the port the server listens on.
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert f"--grpc-port={grpc_port}" in container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert SERVICE_NAME in BALANCED_SERVICE_CONFIG
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # SIGTERM drains for --grace seconds; Kubernetes waits longer before it kills.
    grace = float(next(a for a in container["args"] if a.startswith("--grace=")).split("=")[1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace


def test_the_config_map_is_a_valid_scorers_config(resources, tmp_path):
    path = tmp_path / "scorers.toml"
    path.write_text(resources["ConfigMap"]["data"]["scorers.toml"])
    config = load_config(path)
    assert config.default_scorer == "main" and config.scorers[0].device == "cuda"
