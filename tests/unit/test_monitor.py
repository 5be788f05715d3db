"""What `cw status` shows, computed without processes: throughput ring, worker stats,
the snapshot of a stepped master, the 80-column table, job log lines, log files."""
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import wait_for
from test_master import PEER, Peer, client, executor, running_master, submit

from cw import logfiles
from cw.master.monitor import WINDOW, Throughput, parse_stats
from cw.protocol import Kind
from cw.view import render
from cw.worker import joblog
from cw.worker.usage import Usage


def test_throughput_counts_each_second_and_forgets_after_a_minute():
    tp = Throughput(now=1000.0)
    tp.sample(1000.2, 0)
    tp.sample(1000.7, 5)  # 5 done in second 1000
    tp.sample(1001.1, 8)  # 3 in 1001
    tp.sample(1004.5, 18)  # 10 in 1004; 1002 and 1003 saw none
    series = tp.per_second()
    assert len(series) == WINDOW and series[-5:] == [5, 3, 0, 0, 10]
    summary = tp.summary(1004.5)
    assert summary["last_minute"] == 18 and summary["rate"] == pytest.approx(18 / 4.5, rel=1e-3)
    tp.sample(1004.5 + WINDOW, 18)  # a quiet minute later: all forgotten
    assert sum(tp.per_second()) == 0
    tp.sample(2000.0, 20)  # after a long gap
    assert sum(tp.per_second()) == 2


@pytest.mark.parametrize("bad", [
    None, [], "x", {"e1": {"cpu": -1, "rss": 1}}, {"e1": {"cpu": math.nan, "rss": 1}},
    {"e1": {"cpu": math.inf, "rss": 1}}, {"e1": {"cpu": 1.0, "rss": -5}}, {"e1": {"cpu": True, "rss": 1}},
    {"e1": {"cpu": 1.0}}, {"e1": [1, 2]}, {"x" * 100: {"cpu": 1, "rss": 1}},
    {f"e{i}": {"cpu": 1, "rss": 1} for i in range(10_000)},
    {"e1": {"cpu": 1.0, "rss": 1, "lane": 2}}, {"e1": {"cpu": 1.0, "rss": 1, "lane": 1.0}},
    {"e1": {"cpu": 1.0, "rss": 1, "lane": "yes"}}, {"e1": {"cpu": 1.0, "rss": 1, "stopped": 2}},
    {"e1": {"cpu": 1.0, "rss": 1, "stopped": True}},
])
def test_malformed_worker_stats_are_refused(bad):
    assert parse_stats(bad) is None


def test_usage_reports_cpu_and_rss_of_live_processes():
    usage = Usage()
    stats = usage.header([(b"e1", os.getpid(), False), (b"e2", 2**22 + 12345, False),  # no such pid
                          (b"e3", os.getpid(), True)])["stats"]  # it runs a lane's job
    assert list(stats) == [b"e1".hex(), b"e3".hex()] and stats[b"e1".hex()]["rss"] > 1 << 20
    assert [v[2] for v in parse_stats(stats).values()] == [False, True]


def test_usage_says_which_executor_is_stopped():
    usage = Usage()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGSTOP)
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_STOPPED, what="the stop")
        stats = usage.header([(b"e1", os.getpid(), False), (b"e2", child.pid, False)])["stats"]
        assert "stopped" not in stats[b"e1".hex()] and stats[b"e2".hex()]["stopped"] == 1
        assert [v[3] for v in parse_stats(stats).values()] == [False, True]
    finally:
        child.kill()
        child.wait(10)


def supervisor(master, procs=2):
    peer = Peer(master, b"s")
    peer.send(Kind.READY, {"capacity": 0, "procs": procs, **PEER})
    return peer


def test_snapshot_of_a_stepped_master_counts_what_happened():
    with running_master() as m:
        sup = supervisor(m)
        ex = Peer(m, b"e")
        ex.send(Kind.READY, {"capacity": 2, "supervisor": sup.sock.identity.hex(), **PEER})
        c = client(m)
        for jid in (1, 2, 3):
            submit(c, jid)
        first = ex.recv({Kind.TASK})
        ex.send(Kind.RESULT, {"id": first.header["id"], "status": "ok"}, b"v")
        second = ex.recv({Kind.TASK})
        ex.send(Kind.RESULT, {"id": second.header["id"], "status": "error", "error": "E"}, b"e")
        ex.recv({Kind.TASK})
        for _ in range(5):
            m.step(timeout=0.01)
        stats = {ex.sock.identity.hex(): {"cpu": 99.5, "rss": 123456789}}
        sup.send(Kind.HEARTBEAT, {"stats": stats})
        sup.send(Kind.HEARTBEAT, {"stats": {"junk": "not a stat"}})  # ignored, master unharmed
        for _ in range(5):
            m.step(timeout=0.01)
        snap = json.loads(json.dumps(m.snapshot()))
    t = snap["totals"]
    assert (t["workers"], t["executors"], t["clients"]) == (1, 1, 1)
    assert (t["queued"], t["running"], t["done"], t["failed"], t["submitted"]) == (0, 1, 2, 1, 3)
    [w] = snap["workers"]
    assert (w["state"], w["running"], w["done"], w["failed"]) == ("busy", 1, 2, 1)
    assert (w["cpu"], w["rss"]) == (99.5, 123456789)
    assert w["job"] is not None and w["age"] >= 0
    [cl] = snap["clients"]
    assert (cl["queued"], cl["running"], cl["done"]) == (0, 1, 2)
    assert snap["throughput"]["last_minute"] == 2
    assert len(render(snap, "127.0.0.1:5494").splitlines()) >= 6


def test_heartbeat_stats_from_a_client_or_executor_are_ignored():
    with running_master() as m:
        c = client(m)
        c.send(Kind.HEARTBEAT, {"stats": {"e": {"cpu": 1, "rss": 1}}})
        ex = executor(m)
        ex.send(Kind.HEARTBEAT, {"stats": 5})
        for _ in range(5):
            m.step(timeout=0.01)
        assert m.monitor.stats == {} and m.counts["malformed"] == 0


def big_snapshot():
    worker = {"host": "a-very-long-host-name.cluster.example.org", "pid": 4194303, "procs": 64,
              "executors": 64, "state": "draining", "running": 64, "jobs": list(range(64)),
              "job": 123456789, "age": 90061.0, "done": 123456789, "failed": 99999, "cpu": 6400.0,
              "rss": 3 << 40}
    client_ = {"host": "x" * 50, "pid": 4194303, "queued": 10**9, "running": 10**6, "jobs": 10**9,
               "done": 10**9}
    totals = {"workers": 1, "executors": 64, "clients": 1, "queued": 10**9, "running": 64,
              "prefetched": 64, "submitted": 10**10, "done": 10**10, "failed": 10**8, "lost": 5}
    return {"pid": 4194303, "uptime": 10**7, "http": "http://127.0.0.1:65535/", "workers": [worker],
            "clients": [client_], "totals": totals,
            "throughput": {"rate": 123456.789, "last_minute": 10**8, "per_second": [0] * WINDOW}}


def test_status_table_fits_80_columns_whatever_the_numbers():
    text = render(big_snapshot(), "a-long-master-host-name.example.org:65535")
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "draining" in text and "3.0T" in text and "1d01h" in text and "LEFT" not in text


@pytest.mark.parametrize("left, shown", [(45.2, "45s"), (3599, "59m"), (7200, "2h"), (10**8, "1157d")])
def test_a_worker_with_a_time_limit_shows_what_it_has_left(left, shown):
    snap = big_snapshot()
    snap["workers"].append({**snap["workers"][0], "pid": 7, "left": left, "express": 1})
    text = render(snap, "a-long-master-host-name.example.org:65535")
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header = next(line for line in text.splitlines() if line.startswith("WORKER"))
    row = next(line for line in text.splitlines() if line.split()[1:2] == ["7"])
    assert header.split()[-1] == "LEFT" and row.split()[-1] == shown and row.split()[2] == "64/65"


def test_job_prints_become_tagged_log_lines(monkeypatch):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cw.job").addHandler(handler)
    monkeypatch.setattr(logging.getLogger("cw.job"), "level", logging.INFO)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        joblog.install()
        print("between jobs")
        joblog.set_job(17)
        print("line one\nline two")
        sys.stderr.write("no newline yet")
        joblog.set_job(None)
        print("after")
    finally:
        logging.getLogger("cw.job").removeHandler(handler)
        joblog.set_job(None)
    assert [r.getMessage() for r in records] == [
        "job 17 stdout: line one", "job 17 stdout: line two", "job 17 stderr: no newline yet"]
    assert out.getvalue() == "between jobs\nafter\n"


def test_log_files_are_selected_and_merged_in_time_order(tmp_path):
    (tmp_path / "master-node1-100.log").write_text(
        "2026-01-01 10:00:00,000 INFO cw.master[100]: up\n2026-01-01 10:00:02,000 INFO cw.master[100]: b\n")
    (tmp_path / "worker-node2-200.log").write_text(
        "2026-01-01 10:00:01,000 INFO cw.job[201]: job 1 stdout: hi\nTraceback: stays with its line\n")
    assert [p.name for p in logfiles.select(tmp_path, "node2")] == ["worker-node2-200.log"]
    assert [p.name for p in logfiles.select(tmp_path, "node1:100")] == ["master-node1-100.log"]
    assert logfiles.select(tmp_path, "20") == []  # a pid matches whole, not as a substring
    lines = logfiles.merged(logfiles.select(tmp_path))
    assert [line.rsplit(": ", 1)[-1] for line in lines] == ["up", "hi", "stays with its line", "b"]
    assert lines[2] == "worker-node2-200| Traceback: stays with its line"


def test_dashboard_serves_page_and_snapshot_and_refuses_foreign_host_names():
    import http.client

    from cw.master.dashboard import Dashboard

    dash = Dashboard("127.0.0.1", 0).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=10)
        base = f"/{dash.token}"
        assert dash.url.endswith(base + "/")
        conn.request("GET", base + "/api/status")
        assert conn.getresponse().status == 503  # nothing published yet
        dash.publish({"totals": {"workers": 3}})
        conn.request("GET", base + "/api/status")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == {"totals": {"workers": 3}}
        conn.request("GET", base + "/")
        resp = conn.getresponse()
        page = resp.read().decode()
        assert resp.status == 200 and "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no outside asset
        conn.request("GET", base + "/api/status", headers={"Host": "attacker.example:80"})
        assert conn.getresponse().status == 421
        for path in ("/api/status", "/", base[:-1] + "/api/status"):  # no token, a wrong one
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 403 and dash.token not in resp.read().decode()
        conn.close()
    finally:
        dash.close()
    assert not any(thread.is_alive() for thread in dash.threads)


def test_a_failing_status_bookkeeping_never_stops_the_master(caplog):
    class Broken:
        def wanted(self):
            return True

        def publish(self, snapshot):
            raise RuntimeError("dashboard bug")

    with running_master() as m:
        m.monitor.dashboard = Broken()
        c = client(m)
        submit(c, 1)
        ex = executor(m)
        assert ex.recv({Kind.TASK}).kind is Kind.TASK  # the loop goes on
        m.monitor.next_tick = 0
        m.step(timeout=0.01)
    assert "status bookkeeping failed" in caplog.text


def test_cw_log_dir_moves_the_logs(tmp_path, monkeypatch):
    monkeypatch.delenv("CW_LOG_DIR", raising=False)
    assert logfiles.logs_dir(tmp_path) == tmp_path / "logs"
    monkeypatch.setenv("CW_LOG_DIR", str(tmp_path / "elsewhere"))
    assert logfiles.logs_dir(tmp_path) == tmp_path / "elsewhere"
    assert logfiles.log_path(tmp_path, "worker").name == f"worker-{os.uname().nodename}-{os.getpid()}.log"


def test_a_line_both_in_a_log_and_in_a_launchers_capture_is_shown_once(tmp_path):
    line = "2026-01-01 10:00:00,000 WARNING cw.worker[200]: executor pid 201 died"
    (tmp_path / "worker-node2-200.log").write_text(f"{line}\n")
    (tmp_path / "worker-20260101-100000-99.log").write_text(f"{line}\nTraceback (most recent call last):\n")
    assert [x.split("| ", 1)[1] for x in logfiles.merged(logfiles.select(tmp_path))] == [
        line, "Traceback (most recent call last):"]


def test_requests_trickled_in_cannot_hold_the_dashboards_pool(monkeypatch):
    """More slow requests than the pool has threads, each a byte at a time
    (never silent for IDLE): each is cut after REQUEST_SECONDS, and a real
    request is answered meanwhile."""
    import socket
    import threading
    import time
    import urllib.request

    from cw.master import dashboard

    monkeypatch.setattr(dashboard, "REQUEST_SECONDS", 1.0)
    dash = dashboard.Dashboard("127.0.0.1", 0).start()
    dash.publish({"totals": {}})
    slow = [socket.create_connection(("127.0.0.1", dash.port), timeout=30) for _ in range(2 * dashboard.POOL)]
    stop = threading.Event()

    def trickle():  # (and publish, as the master's loop does while someone looks)
        for i in range(100):
            dash.publish({"totals": {}})
            for conn in slow:
                try:
                    conn.send(b"GET /x HTTP/1.0\r\nX: "[i % 10:i % 10 + 1])
                except OSError:
                    pass
            if stop.wait(0.2):
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        start = time.monotonic()
        with urllib.request.urlopen(dash.url + "api/status", timeout=30) as resp:
            assert resp.status == 200
        for conn in slow:  # each was cut: the server closed it without an answer
            assert conn.recv(100) == b""
        assert time.monotonic() - start < 25  # (bounded by the timeouts above: not a speed check)
    finally:
        stop.set()
        sender.join(30)
        for conn in slow:
            conn.close()
        dash.close()
