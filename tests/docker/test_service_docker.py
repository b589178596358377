"""compose.yaml (repository root), the Dockerfile and the example scorers configs they mount."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tokenweight.service.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def services():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


@pytest.fixture(scope="module")
def scorer(services):
    return services["scorer"]


def test_scorer_service_has_gpu_ports_volumes_and_healthcheck(scorer):
    (device,) = scorer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any("/readyz" in part for part in scorer["healthcheck"]["test"])
    assert {p.split(":")[-1] for p in scorer["ports"]} == {"50051", "8000"}
    assert any(v.endswith(":/models:ro") for v in scorer["volumes"])
    assert any(v.endswith(":/config/scorers.toml:ro") for v in scorer["volumes"])
    assert "TOKENWEIGHT_AUTH_TOKEN" in scorer["environment"]
    assert scorer["restart"] == "unless-stopped"
    assert scorer["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}


def test_cpu_variant_has_no_gpu_reservation_and_a_cpu_config(services, scorer):
    cpu = services["scorer-cpu"]
    assert cpu["profiles"] == ["cpu"] and not cpu.get("deploy")
    assert cpu["build"]["args"]["BASE_IMAGE"].startswith("ubuntu:")
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    assert any(v.endswith("/docker/scorers.cpu.toml}:/config/scorers.toml:ro") for v in cpu["volumes"])
    assert (cpu["command"], cpu["ports"], cpu["healthcheck"]) == (
        scorer["command"], scorer["ports"], scorer["healthcheck"])


def test_dockerfile_serves_on_the_compose_ports():
    text = (DOCKER / "Dockerfile").read_text()
    assert "EXPOSE 50051 8000" in text and 'ENTRYPOINT ["tokenweight", "serve"]' in text


@pytest.mark.parametrize("name, device", [("scorers.toml", "cuda"), ("scorers.cpu.toml", "cpu")])
def test_example_config_serves_the_bundled_model_from_the_image(name, device):
    """The default scorer's path is where the Dockerfile's `COPY . .` puts the bundled model."""
    from tokenweight.bundled import default_model

    config = load_config(DOCKER / name)
    (scorer,) = config.scorers
    workdir = re.search(r"^WORKDIR (\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    model, info = default_model()
    assert config.default_scorer == "main" and scorer.window == info["window"]
    assert scorer.device == device
    assert ROOT / Path(scorer.model).relative_to(workdir) == model


def test_cpu_config_serves_here_and_answers_readyz(tmp_path):
    """The CPU variant's config, with the image's path of the bundled model mapped to this
    checkout's, runs `tokenweight serve --config` on this (GPU-less) machine."""
    from serve_helpers import ServeProcess

    workdir = re.search(r"^WORKDIR (\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    config = tmp_path / "scorers.toml"
    config.write_text((DOCKER / "scorers.cpu.toml").read_text().replace(workdir, str(ROOT)))
    server = ServeProcess("--config", str(config))
    try:
        response = httpx.get(f"http://127.0.0.1:{server.http_port}/readyz", timeout=10)
        assert response.status_code == 200, response.text
    finally:
        server.kill()


def _compose() -> list[str]:
    """The Compose CLI here: the docker plugin (`docker compose`) or Debian's `docker-compose`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose here (.ci/run installs Debian's docker-compose)")


@pytest.mark.parametrize("profile, service", [(None, "scorer"), ("cpu", "scorer-cpu")])
def test_docker_compose_config_from_the_root_resolves_the_service(profile, service):
    """What `docker compose up scorer` reads, typed from the repository root as users type it."""
    yaml = pytest.importorskip("yaml")
    command = _compose() + (["--profile", profile] if profile else []) + ["config"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert service in resolved
    assert resolved[service]["build"]["context"] == str(ROOT)
    reservations = resolved[service].get("deploy", {}).get("resources", {}).get("reservations", {})
    assert bool(reservations.get("devices")) == (service == "scorer")  # the GPU one keeps its GPU
