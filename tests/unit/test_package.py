"""The ``cw`` package: every public name, and what importing it costs a master or a worker."""
import subprocess
import sys

import pytest

import cw


def test_every_public_name_is_there():
    from cw.client import ClusterExecutor
    from cw.launch.auto import start

    assert cw.ClusterExecutor is ClusterExecutor
    assert cw.start is start
    for name in cw.__all__:
        assert getattr(cw, name) is not None
    assert set(cw.__all__) <= set(dir(cw))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'ClusterExecuter'"):
        cw.ClusterExecuter  # noqa: B018
    with pytest.raises(ImportError):
        from cw import ClusterExecuter  # noqa: F401


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(*sorted(sys.modules))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("entry", ["cw.master", "cw.worker"])
def test_a_master_or_worker_does_not_load_the_client_api(entry):
    """Their start-up is mostly imports; the client API and launchers are a
    third of them, and neither process uses them."""
    loaded = _modules_after(f"import {entry}, cw.cli  # what `python -m {entry}` runs")
    assert entry in loaded
    assert not loaded & {"cw.client", "cw.launch.auto", "cw.launch.local", "concurrent.futures"}


def test_star_import_gives_the_public_names():
    loaded = _modules_after("from cw import *\nassert ClusterExecutor and start and WorkerLostError")
    assert "cw.client" in loaded
