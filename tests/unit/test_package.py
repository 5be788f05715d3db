"""The ``cw`` package: every public name, and what importing it costs a master or a worker."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cw


def test_every_public_name_is_there():
    from cw.client import ClusterExecutor
    from cw.launch.auto import start

    assert cw.ClusterExecutor is ClusterExecutor
    assert cw.start is start
    for name in cw.__all__:
        assert getattr(cw, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'ClusterExecuter'"):
        cw.ClusterExecuter  # noqa: B018
    with pytest.raises(ImportError):
        from cw import ClusterExecuter  # noqa: F401


ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, env_home: Path) -> str:
    env = {**os.environ, "CW_HOME": str(env_home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# Runs an entry point as `python -m` does, its loop replaced by a report of
# the modules loaded by then: all of the body's imports have happened.
ENTRY = """
import runpy, sys
import {module}
def report(self):
    print("LOADED", *sorted(sys.modules))
    raise SystemExit(0)
{module}.{loop} = report
sys.argv = ["-m", *{argv!r}]
runpy.run_module("{module}", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module, loop, argv", [
    ("cw.master", "Master.run", ["--insecure", "--host", "127.0.0.1", "--port", "0"]),
    ("cw.worker", "Supervisor.run", ["127.0.0.1", "--port", "9", "--insecure"]),
    ("cw.executor", "Executor.run", ["127.0.0.1", "--port", "9", "--insecure", "--executor", "ab"]),
], ids=["master", "supervisor", "executor"])
def test_a_master_or_worker_does_not_load_the_client_api(module, loop, argv, tmp_path):
    """Their start-up is mostly imports; the client API and launchers are a
    third of them, and none of these processes uses them."""
    out = _run(ENTRY.format(module=module, loop=loop, argv=argv), tmp_path)
    loaded = set(out.split("LOADED", 1)[1].split())
    assert module in loaded
    assert not {m for m in loaded if m == "cw.client" or m.startswith("cw.launch")}
    if loop == "Executor.run":  # started by its supervisor, through no CLI
        assert not {m for m in loaded if m.startswith(("click", "cw.cli"))}


def test_dir_lists_the_public_names_before_any_is_used(tmp_path):
    out = _run("import cw; print(*dir(cw))", tmp_path)
    assert set(cw.__all__) <= set(out.split())


def test_star_import_gives_the_public_names(tmp_path):
    out = _run("from cw import *\nimport sys\nprint(ClusterExecutor.__name__, start.__name__, "
               "WorkerLostError.__name__, 'cw.client' in sys.modules)", tmp_path)
    assert out.split() == ["ClusterExecutor", "start", "WorkerLostError", "True"]
