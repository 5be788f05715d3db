"""Programs as cw jobs (issue 28, item 2): submit_command, `cw run`, `cw map`."""
import subprocess
import sys

import pytest
from conftest import ROOT, wait_for

from cw.client import ClusterExecutor
from cw.commands import CommandFailed
from cw.launch import query_status


def cw(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, timeout=120, cwd=cwd)


def test_submit_command_gives_what_the_program_did(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=20) as ex:
        done = ex.submit_command(["sh", "-c", "echo out; echo err >&2; exit 3"]).result(60)
        assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
        assert ex.submit_command("echo $((6 * 7))").result(60).stdout == b"42\n"  # a shell line
        assert ex.submit_command(["no-such-program-here"]).result(60).returncode == 127
        assert ex.submit_command(["sleep", "5"], timeout=0.5).result(60).returncode == 124
        with pytest.raises(CommandFailed) as failed:
            ex.submit_command(["sh", "-c", "echo why >&2; exit 4"], check=True).result(60)
        assert failed.value.returncode == 4 and "why" in str(failed.value)
        assert isinstance(failed.value, subprocess.CalledProcessError)
        # A child left in the background does not hold the job (files, not pipes); it ends with it.
        assert ex.submit_command("sleep 60 & echo started").result(30).stdout == b"started\n"


def test_cw_run_passes_output_and_exit_status(cluster, monkeypatch):
    monkeypatch.setenv("CW_PORT", str(cluster(1)))
    done = cw("run", "--", "sh", "-c", "echo hi; echo oops >&2; exit 5")
    assert (done.returncode, done.stdout, b"oops" in done.stderr) == (5, b"hi\n", True)
    assert cw("run", "ls", "-d", "cw").stdout == b"cw\n"  # in this directory, flags left to the program


def test_cw_map_runs_each_line_keeps_outputs_and_resumes(cluster, monkeypatch, tmp_path):
    port = cluster(2)
    monkeypatch.setenv("CW_PORT", str(port))
    lines = [f"echo line {i}" if i % 40 else f"echo failing {i} >&2; exit {i % 7 + 1}" for i in range(1, 201)]
    commands = tmp_path / "commands.txt"
    commands.write_text("# a sweep\n" + "\n".join(lines) + "\n\n")
    first = cw("map", str(commands), cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    assert b"200 command(s): 195 succeeded (0 done by an earlier run), 5 failed" in first.stdout
    out = tmp_path / "commands.txt.out"
    for i in (40, 80, 120, 160, 200):  # each failed one named, with its exit status and its stderr
        code = i % 7 + 1
        said = f"failed: #{i} exit {code}: echo failing {i} >&2; exit {code}  (stderr: {out}/{i}.err)"
        assert said.encode() in first.stdout
    assert first.stdout.count(b"failed: #") == 5
    assert (out / "3.out").read_bytes() == b"line 3\n" and (out / "40.err").read_bytes() == b"failing 40\n"
    summary = (out / "summary.tsv").read_text().splitlines()
    assert summary[40] == "40\t6\techo failing 40 >&2; exit 6"
    assert oct((out / "1.out").stat().st_mode & 0o777) == "0o600"
    # A job that took a lane is counted at its executor's next heartbeat: waited for.
    submitted = lambda: query_status("127.0.0.1", port)["counts"]["submitted"]  # noqa: E731
    before = wait_for(lambda: (lambda n: n if n >= 200 else None)(submitted()), what="200 jobs counted")
    again = cw("map", str(commands), cwd=tmp_path)
    assert again.returncode == 1 and b"195 succeeded (195 done by an earlier run), 5 failed" in again.stdout
    wait_for(lambda: submitted() - before >= 5, what="the rerun's jobs counted")
    assert submitted() - before == 5  # only the failed ones
    assert (out / "3.out").read_bytes() == b"line 3\n"
    names = tmp_path / "names.txt"
    names.write_text("alpha\nbeta  gamma\nx; echo PWNED $(id -un)\n")
    each = cw("map", "--each", str(names), "--", "printf", "[%s]", "hello {}", cwd=tmp_path)
    assert each.returncode == 0, each.stdout + each.stderr
    made = tmp_path / "names.txt.out"
    assert (made / "2.out").read_bytes() == b"[hello beta  gamma]"  # one argument, spaces kept
    assert (made / "3.out").read_bytes() == b"[hello x; echo PWNED $(id -un)]"  # never shell syntax
    again = cw("map", "--each", str(names), "-o", str(made), "--", "printf", "<%s>", cwd=tmp_path)
    assert again.returncode == 0
    assert (made / "1.out").read_bytes() == b"<alpha>"  # no {}: the line is the last argument
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)  # a directory others may write in: not trusted with outputs
    refused = cw("map", "-o", str(tmp_path / "open"), str(commands), cwd=tmp_path)
    assert refused.returncode == 1 and b"others may write in it" in refused.stderr
    assert b"Traceback" not in refused.stderr and list((tmp_path / "open").iterdir()) == []
    assert cw("map", cwd=tmp_path).returncode == 2  # a usage error, not a traceback
