"""The distributions as the package index and users get them: built, checked, and looked inside.

Builds the sdist and wheel with ``uv build`` (hatchling), then runs ``twine check --strict`` (the
README must render on the index) and ``check-wheel-contents``, and checks what each archive holds.
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from cometly_provider import __version__
from cometly_provider.get_provider_info import get_provider_info

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
    assert uv, "uv is installed by scripts/bootstrap.sh"
    subprocess.run([uv, "build", "--quiet", "--out-dir", str(out), str(ROOT)], check=True)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_strict(dist: dict[str, Path]) -> None:
    done = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_wheel_contents(dist: dict[str, Path]) -> None:
    done = subprocess.run(
        [str(BIN / "check-wheel-contents"), str(dist["wheel"])], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_wheel_metadata_and_files(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
        info = f"airflow_provider_cometly-{__version__}.dist-info"
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        license_text = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert dist["wheel"].name == f"airflow_provider_cometly-{__version__}-py3-none-any.whl"
    assert metadata["Version"] == __version__ == get_provider_info()["versions"][0]  # one source
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Changelog", "Bug Tracker"} <= set(urls)
    classifiers = metadata.get_all("Classifier")
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert {c for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)} == {
        "Programming Language :: Python :: 3.11",  # scripts/test.sh
        "Programming Language :: Python :: 3.12",  # scripts/compat.sh
    }
    extras = set(metadata.get_all("Provides-Extra"))
    assert extras == {"amazon", "google", "openlineage", "redis"}  # no public test/dev extra
    requires = " ".join(metadata.get_all("Requires-Dist"))
    for tool in ("ruff", "mypy", "pytest", "types-requests"):
        assert tool not in requires
    assert "apache-airflow-providers-common-compat>=1.22.0" in requires
    assert "cometly_provider.get_provider_info:get_provider_info" in entry_points
    assert "cometly_provider/py.typed" in names
    assert "cometly_provider/hooks/connection_fields.py" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "example_dags/"))]


def test_sdist_carries_tests_docs_examples_and_license(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for expected in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "constraints/py311.txt",
        "constraints/airflow-3.0-py312.txt",
        "docs/connection.md",
        "docs/operators.md",
        "example_dags/cometly_daily_export.py",
        "tests/conftest.py",
        "tests/e2e/test_example_dags.py",
        "cometly_provider/__init__.py",
    ):
        assert expected in names, expected
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_readme_links_work_on_the_package_index() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    relative = [link for link in links if not link.startswith(("http://", "https://", "#"))]
    assert relative == [], "links relative to the repository break on the package index"
    # Nothing is published yet: no command block installs the package from the index.
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S))
    assert not re.search(r"pip install [\"']?airflow-provider-cometly", commands)
    assert "Until one is, install from a clone or from a wheel you build" in readme
