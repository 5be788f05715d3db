"""The SSH launcher's CSV rows and commands: pure functions, checked against a golden file."""
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cw.cli import main
from cw.errors import ClusterError
from cw.launch.sshcmd import (
    EXIT_NO_CWD,
    EXIT_NO_PYTHON,
    Machine,
    describe_failure,
    parse_machines,
    read_machines,
    remote_command,
    route_address,
    ssh_command,
    worker_args,
)

GOLDEN = Path(__file__).parent / "golden"
ODD = "/shared/my project/it's \"here\""


def test_rows_blanks_comments_and_quotes(tmp_path):
    key = tmp_path / "my 'key', \"2\""
    key.write_text("")
    quoted = '"' + str(key).replace('"', '""') + '"'
    text = "\n".join([
        "# the lab",
        "address, ssh_user, ssh_port, local_ssh_file, cpu_limit",
        "lab1",
        "",
        f"  lab2.example.org, ann, 2222, {quoted}, 4",
        "10.0.0.3,,,,",
        "   # an indented comment",
        "fe80::1%eth0, , 22",
    ])
    assert parse_machines(text) == [
        Machine("lab1", line=3),
        Machine("lab2.example.org", "ann", 2222, str(key), 4, line=5),
        Machine("10.0.0.3", line=6),
        Machine("fe80::1%eth0", port=22, line=8),
    ]
    assert Machine("lab2", "ann", 2222).label == "ann@lab2:2222"
    assert Machine("fe80::1%eth0").mid == "fe80__1_eth0-22"


@pytest.mark.parametrize("rows, line, message", [
    (["lab1", "lab2, ann, ssh"], 2, "ssh_port 'ssh' is not a number"),
    (["# c", "", "lab1,,,,0"], 3, "cpu_limit '0' is not a number from 1"),
    (["lab1,,,,1,extra"], 1, "6 columns, at most 5"),
    (["lab1,,,/no/such/key"], 1, "local_ssh_file /no/such/key does not exist"),
    (["-oProxyCommand=x"], 1, "is not a host name"),
    (["lab1", "lab1,,22"], 2, "lab1:22 is already on line 1"),
    ([",ann"], 1, "address '' is not a host name"),
    (["lab1,-lroot"], 1, "ssh_user '-lroot' is not a user name"),
])
def test_malformed_rows_are_refused_with_their_line(rows, line, message):
    with pytest.raises(ClusterError, match=f"lab.csv, line {line}: .*{message}"):
        parse_machines("\n".join(rows), "lab.csv")


def test_no_machine_at_all():
    with pytest.raises(ClusterError, match="lists no machine"):
        parse_machines("# only a comment\n\n", "lab.csv")


def test_cli_refuses_a_malformed_file_before_starting_anything(cw_home, tmp_path):
    csv = tmp_path / "lab.csv"
    csv.write_text("# address, ssh_user, ssh_port, local_ssh_file, cpu_limit\nlab1\nlab2,,70000\n")
    done = CliRunner().invoke(main, ["ssh", "start", str(csv)])
    assert done.exit_code == 1
    assert f"Error: {csv}, line 3: ssh_port '70000' is not a number from 1 to 65535" in done.output
    assert not (cw_home / "default" / "master.json").exists()


def test_a_spreadsheets_bom_is_accepted(tmp_path):
    csv = tmp_path / "lab.csv"
    csv.write_bytes("address,ssh_user,ssh_port\r\nlab1,ann,2222\r\nlab2\r\n".encode("utf-8-sig"))
    assert read_machines(str(csv)) == [Machine("lab1", "ann", 2222, line=2), Machine("lab2", line=3)]


@pytest.mark.parametrize("content, said", [
    (b"lab1\nlab2,caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    (b"lab1\n\nlab2," + b"x" * (128 * 1024) + b"\n", "line 3: 131077 characters, at most 4096 in a row"),
    (b"lab1\nlab2,\"a\x00b\"\n", "line 2: ssh_user 'a\\x00b' is not a user name"),
], ids=["latin-1", "128 KiB field", "NUL"])
def test_a_file_csv_cannot_read_is_one_line_naming_the_file_and_line(cw_home, tmp_path, content, said):
    csv = tmp_path / "lab.csv"
    csv.write_bytes(content)
    with pytest.raises(ClusterError) as e:
        read_machines(str(csv))
    assert str(e.value).startswith(f"{csv}, {said}") and "\n" not in str(e.value)
    done = CliRunner().invoke(main, ["ssh", "start", str(csv)])
    assert done.exit_code == 1 and done.exception is None or isinstance(done.exception, SystemExit)
    assert done.output.startswith(f"Error: {csv}, {said}") and "Traceback" not in done.output
    assert not (cw_home / "default" / "master.json").exists()


def test_commands_quote_every_value():
    machine = Machine("lab1.example.org", "ann", 2222, f"{ODD}/id key", 4)
    line = remote_command(f"{ODD}/bin/python", ODD, "start", {"PYTHONPATH": f"{ODD}/src:/opt/x y"})
    cmd = ssh_command(machine, line, options=["UserKnownHostsFile=/etc/lab_hosts"], connect_timeout=5)
    # Line 1: ssh's arguments; line 2: the line it hands the remote shell.
    assert f"{shlex.join(cmd[:-1])}\n{cmd[-1]}\n" == (GOLDEN / "ssh_start.txt").read_text()
    # ssh hands the remote shell ``line``; the shell reads back exactly our values.
    assert cmd[-1] == line and cmd[-2:-1] == ["lab1.example.org"] and cmd[-3] == "--"
    words = shlex.split(line)
    assert words[:2] == ["cd", ODD] and f"{ODD}/bin/python" in words
    assert f"PYTHONPATH={ODD}/src:/opt/x y" in words


def test_ssh_defaults_and_user_options_first():
    cmd = ssh_command(Machine("lab1"), "true", options=["StrictHostKeyChecking=accept-new"])
    assert cmd[:3] == ["ssh", "-o", "StrictHostKeyChecking=accept-new"]  # ssh keeps the first value
    assert "BatchMode=yes" in cmd and "ConnectTimeout=10" in cmd
    assert "-l" not in cmd and "-p" not in cmd and "-i" not in cmd
    cmd = ssh_command(Machine("lab1", key="/keys/100%.key"), "true")
    assert cmd[cmd.index("-i") + 1] == "/keys/100%%.key"  # ssh reads %% as one %


def test_worker_arguments():
    args = worker_args("10.0.0.1", 5494, "c1", Machine("lab1", cpu_limit=3), master_timeout=60,
                       insecure=False)
    assert args == ["10.0.0.1", "--port", "5494", "--cluster", "c1", "--procs", "3",
                    "--master-timeout", "60"]
    args = worker_args("h", 1, "c", Machine("lab1"), master_timeout=2.5, insecure=True)
    assert args[args.index("--procs") + 1] == "auto"
    assert args[-3:] == ["--master-timeout", "2.5", "--insecure"]


@pytest.mark.parametrize("code, stderr, verdict", [
    (255, "root@lab1: Permission denied (publickey).\n", "auth refused: root@lab1: Permission denied"),
    (255, "Host key verification failed.\n", "host key not trusted"),
    (255, "ssh: connect to host lab1 port 22: Connection timed out\n", "unreachable: ssh: connect"),
    (255, "ssh: Could not resolve hostname lab9: Name or service not known\n", "unreachable: ssh: Could"),
    (EXIT_NO_PYTHON, "", "python missing: no /opt/py/bin/python on that machine"),
    (EXIT_NO_CWD, "sh: cd: can't cd to /w\n", "directory missing: no /w on that machine"),
    (1, "/opt/py/bin/python: No module named cw.launch\n", "cw is not importable by /opt/py/bin/python"),
    (1, "cw.launch.remote start failed: OSError: disk full\n", "remote command failed: cw.launch.remote"),
])
def test_failures_say_what_went_wrong(code, stderr, verdict):
    assert describe_failure(code, stderr, python="/opt/py/bin/python", cwd="/w").startswith(verdict)


def test_route_address_of_loopback():
    assert route_address("127.0.0.1") == "127.0.0.1"
    with pytest.raises(ClusterError, match="pass --master-address"):
        route_address("no-such-host.invalid")


def test_stop_removes_the_copied_keys_and_their_private_shm_directory(monkeypatch, tmp_path):
    """What `cw ssh start` wrote on a machine, and what its workers made in
    /dev/shm under that home (cw.shmdir), goes at `cw ssh stop`."""
    from cw import shm, shmdir
    from cw.launch import remote

    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cw/ssh: the machine's private root
    home = Path(remote.PRIVATE_ROOT).expanduser() / "head-0123456789ab"
    remote._write_private(home, "default", "token", {"master.key": "public\n"})
    monkeypatch.setenv("CW_HOME", str(home))  # as its workers run
    monkeypatch.setattr(shmdir, "_found", {})
    root, why = shmdir.subdirectory("lanes")
    if root is None:
        pytest.skip(f"no private /dev/shm directory here: {why}")
    assert root.parent.exists() and shm.ROOT in str(root)
    assert remote._remove_private(home, "token")
    assert not home.exists() and not root.parent.exists()
