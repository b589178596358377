"""docker/compose.yaml and the example scorers config it mounts."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tokenweight.service.config import load_config

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def scorer():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["scorer"]


def test_scorer_service_has_gpu_ports_volumes_and_healthcheck(scorer):
    (device,) = scorer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any("/readyz" in part for part in scorer["healthcheck"]["test"])
    assert {p.split(":")[-1] for p in scorer["ports"]} == {"50051", "8000"}
    assert any(v.endswith(":/models:ro") for v in scorer["volumes"])
    assert any(v.endswith(":/config/scorers.toml:ro") for v in scorer["volumes"])
    assert "TOKENWEIGHT_AUTH_TOKEN" in scorer["environment"]
    assert scorer["restart"] == "unless-stopped"
    assert scorer["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


def test_dockerfile_serves_on_the_compose_ports():
    text = (DOCKER / "Dockerfile").read_text()
    assert "EXPOSE 50051 8000" in text and 'ENTRYPOINT ["tokenweight", "serve"]' in text


def test_example_config_serves_the_bundled_model_from_the_image():
    """The default scorer's path is where the Dockerfile's `COPY . .` puts the bundled model."""
    from tokenweight.bundled import default_model

    config = load_config(DOCKER / "scorers.toml")
    (scorer,) = config.scorers
    workdir = re.search(r"^WORKDIR (\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    model, info = default_model()
    assert config.default_scorer == "main" and scorer.window == info["window"]
    assert DOCKER.parent / Path(scorer.model).relative_to(workdir) == model


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("no docker compose plugin here")
    result = subprocess.run(
        [docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
