"""The image's entrypoint: which processes the CW_* environment asks for."""
import pytest

from cw.errors import ClusterError
from cw.launch.entrypoint import plan

PY = "/opt/cw/bin/python"


def test_no_address_runs_a_master_and_a_worker():
    p = plan({}, PY)
    assert p.master == [PY, "-m", "cw.master", "--host", "0.0.0.0"]
    assert p.worker == [PY, "-m", "cw.worker", "--procs", "1"]
    assert p.master_address is None


def test_no_worker_runs_the_master_alone():
    p = plan({"CW_NO_WORKER": "1", "CW_PORT": "0"}, PY)
    assert p.master is not None and p.worker is None


def test_an_address_runs_only_a_worker_with_its_executors():
    p = plan({"CW_MASTER_ADDRESS": "head.example.org", "CW_WORKERS": "4", "CW_NO_WORKER": "0"}, PY)
    assert p.master is None
    assert p.worker == [PY, "-m", "cw.worker", "--procs", "4"]
    assert p.master_address == "head.example.org"
    assert plan({"CW_MASTER_ADDRESS": "h", "CW_WORKERS": "auto"}, PY).worker[-1] == "auto"


def test_address_and_no_worker_conflict_with_a_message_saying_what_to_do():
    with pytest.raises(ClusterError) as e:
        plan({"CW_MASTER_ADDRESS": "head", "CW_NO_WORKER": "yes"}, PY)
    assert "CW_MASTER_ADDRESS=head" in str(e.value) and "CW_NO_WORKER=1" in str(e.value)
    assert "Unset CW_NO_WORKER" in str(e.value)


@pytest.mark.parametrize("env, words", [
    ({"CW_NO_WORKER": "1", "CW_WORKERS": "2"}, "CW_WORKERS=2 asks for executors"),
    ({"CW_WORKERS": "0"}, "neither a number >= 1 nor 'auto'"),
    ({"CW_WORKERS": "many"}, "neither a number >= 1 nor 'auto'"),
    ({"CW_PORT": "http"}, "not a port number"),
    ({"CW_PORT": "70000"}, "not a port number"),
    ({"CW_MASTER_ADDRESS": "h", "CW_PORT": "0"}, "a worker needs the master's port"),
    ({"CW_INSECURE": "maybe"}, "CW_INSECURE='maybe' is not a yes/no value"),
    ({"CW_NO_WORKER": "please"}, "CW_NO_WORKER='please' is not a yes/no value"),
])
def test_bad_settings_are_refused_before_anything_starts(env, words):
    with pytest.raises(ClusterError, match=words):
        plan(env, PY)
