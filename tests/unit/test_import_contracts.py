"""The import direction of pyproject's [tool.importlinter] holds, checked with import-linter
on the `tokenweight` namespace as pip installs it; and each contract does catch a violation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def installed_layout(repo: Path, dest: Path) -> Path:
    """The namespace laid out as pyproject's package-dir installs it (.py files only). The
    editable install maps service/, client/ and trainer/ into `tokenweight` with an import
    hook, which import-linter (reading the file system under tokenweight/) would not see."""
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setuptools["package-dir"]
    for package in setuptools["packages"]:
        parent = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
        source = repo / roots[parent] / Path(*package[len(parent) :].split(".")[1:])
        target = dest / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy(module, target / module.name)
    return dest


def lint(repo: Path, layout: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), str(repo / "pyproject.toml"), "--no-cache"],
        cwd=layout,
        env={"PYTHONPATH": str(layout), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold(tmp_path):
    result = lint(REPO, installed_layout(REPO, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]

# (a module of the installed layout, an import added to it, the contract it must break)
VIOLATIONS = [
    ("tokenweight/client/urls.py", "from tokenweight.service import engine", "floors"),
    ("tokenweight/service/scoring.py", "from tokenweight.client import grpc_client", "floors"),
    ("tokenweight/wire.py", "import tokenweight.trainer.train", "floors"),
    ("tokenweight/service/analysis.py", "from . import http_routes", "web"),
    ("tokenweight/service/chunking.py", "from . import engine", "service"),
    ("tokenweight/service/blocks.py", "from . import engine", "service"),
    ("tokenweight/trainer/train.py", "from tokenweight.service import scoring", "trainer"),
]


@pytest.mark.parametrize("module,statement,contract", VIOLATIONS)
def test_a_violation_breaks_its_contract(tmp_path, module, statement, contract):
    layout = installed_layout(REPO, tmp_path)
    path = layout / module
    path.write_text(path.read_text() + f"\n{statement}\n")
    result = lint(REPO, layout)
    assert result.returncode == 1, result.stdout
    broken = {
        line.removesuffix("BROKEN").strip()
        for line in result.stdout.splitlines()
        if line.endswith("BROKEN")
    }
    assert broken == {c["name"] for c in CONTRACTS["contracts"] if c["id"] == contract}
