"""Container launcher: a master container and worker containers on this machine.

::

    cw-<cluster>-master        CW_NO_WORKER=1       python -m cw.master (the one port)
    cw-<cluster>-worker-<id>   CW_MASTER_ADDRESS    python -m cw.worker ──► master

The image's entrypoint reads the ``CW_*`` variables (``cw.launch.entrypoint``).
Every container gets the labels ``cw.cluster`` and ``cw.role``: ``stop`` and
``status`` find them by label, never by name pattern, with the engine that
started them (recorded in the cluster's ``engine.json``). ``$CW_HOME`` and the
working directory are mounted at the same paths, so keys, ``master.json`` and
the client's cwd hold inside as outside, and containers run as the calling
user, so files they write keep their owner. Logs go to the cluster's
``logs/``. With ``network="host"`` (the default) containers share the host's
network; with a named network only the master's port is published, and
workers reach the master by its container name. Commands come from pure
functions that take every value as an argument.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..cluster import cluster_dir, cluster_name, pid_namespace, read_json, read_master, write_json
from ..errors import ClusterError, MasterUnavailableError
from ..protocol import DEFAULT_PORT
from ..security import insecure_default
from . import query_status, wait_until

ENGINES = ("docker", "podman")


@dataclass(frozen=True)
class Options:
    """Everything that shapes the containers of one cluster."""

    image: str
    cluster: str = "default"
    engine: str = "docker"
    port: int = DEFAULT_PORT
    procs: int = 1
    network: str = "host"
    args: str = ""  # extra arguments for `ENGINE run`, one string
    insecure: bool = False
    grace: float = 30.0


@dataclass(frozen=True)
class User:
    """Who the containers run as, and where the shared paths are."""

    uid: int
    gid: int
    home: str  # $CW_HOME
    cwd: str


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ClusterError(f"unknown container engine {engine!r}; choose from: {', '.join(ENGINES)}")
    return engine


def container_name(cluster: str, role: str, suffix: str = "") -> str:
    return f"cw-{cluster}-{role}" + (f"-{suffix}" if suffix else "")


def run_command(role: str, name: str, opts: Options, user: User,
                master_address: str = "127.0.0.1") -> list[str]:
    """``ENGINE run`` for one master or worker container, detached."""
    logs = f"{user.home}/{opts.cluster}/logs"
    cmd = [check_engine(opts.engine), "run", "--detach", "--pull=never", "--name", name,
           "--label", f"cw.cluster={opts.cluster}", "--label", f"cw.role={role}",
           "--user", f"{user.uid}:{user.gid}", "--stop-timeout", str(int(opts.grace) + 10),
           "-e", f"CW_HOME={user.home}", "-e", f"CW_CLUSTER={opts.cluster}",
           "-e", f"CW_PORT={opts.port}", "-v", f"{user.home}:{user.home}", "-v", f"{logs}:/var/log/cw"]
    if opts.engine == "podman" and user.uid != 0:
        cmd.append("--userns=keep-id")  # rootless podman: the same uid inside as outside
    if opts.network == "host":
        cmd.append("--net=host")
    else:
        cmd += ["--network", opts.network]
    if opts.insecure:
        cmd += ["-e", "CW_INSECURE=1"]
    if role == "master":
        cmd += ["-e", "CW_NO_WORKER=1"]
        if opts.network != "host":
            cmd += ["-p", f"{opts.port}:{opts.port}"]  # the only published port
    else:
        cmd += ["-e", f"CW_MASTER_ADDRESS={master_address}", "-e", f"CW_WORKERS={opts.procs}",
                "-v", f"{user.cwd}:{user.cwd}", "-w", user.cwd]
    return [*cmd, *shlex.split(opts.args), opts.image]


def list_command(engine: str, cluster: str) -> list[str]:
    return [check_engine(engine), "ps", "--all", "--filter", f"label=cw.cluster={cluster}",
            "--format", "{{json .}}"]


def stop_command(engine: str, names: Sequence[str], timeout: float) -> list[str]:
    return [check_engine(engine), "stop", "--time", str(int(timeout)), *names]


def remove_command(engine: str, names: Sequence[str]) -> list[str]:
    return [check_engine(engine), "rm", "--force", *names]


def _engine(cmd: list[str], timeout: float = 120.0) -> str:
    """Run an engine command; a failure is a ClusterError with its message."""
    if shutil.which(cmd[0]) is None:
        raise ClusterError(f"{cmd[0]} is not on PATH: install it, or choose the other engine "
                           f"(--container-engine / CW_CONTAINER_ENGINE: {', '.join(ENGINES)})")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"`{shlex.join(cmd[:3])} ...` did not finish within {timeout:g} s") from e
    if done.returncode != 0:
        raise ClusterError(f"`{shlex.join(cmd[:2])}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def containers(engine: str, cluster: str) -> list[dict]:
    """This cluster's containers: name, role, state (running, exited, ...)."""
    return parse_ps(_engine(list_command(engine, cluster)))


def parse_ps(text: str) -> list[dict]:
    """``ps --format '{{json .}}'``: podman prints one JSON array, docker one
    object per line, with names and labels shaped differently."""
    text = text.strip()
    try:
        entries = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines()]
    except ValueError as e:
        raise ClusterError(f"cannot read the container engine's list of containers: {e}") from e
    out = []
    for entry in entries:
        names, labels = entry.get("Names"), entry.get("Labels") or {}
        if isinstance(labels, str):  # docker: "k=v,k=v"
            labels = dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv)
        out.append({"name": names[0] if isinstance(names, list) else names,
                    "role": labels.get("cw.role", "?"), "state": str(entry.get("State", "")).lower()})
    return sorted(out, key=lambda c: (c["role"] != "master", c["name"]))


def _user() -> User:
    from ..cluster import home

    return User(os.getuid(), os.getgid(), str(home().resolve()), os.getcwd())


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True,
          cluster: Optional[str] = None, image: Optional[str] = None, engine: Optional[str] = None,
          port: int = DEFAULT_PORT, procs: int = 1, network: str = "host", args: str = "",
          insecure: Optional[bool] = None, timeout: float = 120.0) -> dict:
    """Start a master container and ``nworkers`` worker containers; return once they registered."""
    if not image:
        raise ClusterError("no image: pass --image (build one: docker build -f docker/Dockerfile -t cw .)")
    if network != "host" and port == 0:
        raise ClusterError(f"port 0 cannot be published on network {network!r}: choose a port")
    opts = Options(image=image, cluster=cluster_name(cluster), engine=_engine_name(engine), port=port,
                   procs=procs, network=network, args=args, insecure=insecure_default(insecure))
    write_json(cluster_dir(opts.cluster, create=True) / "engine.json", {"engine": opts.engine})
    try:
        _engine([opts.engine, "image", "inspect", image])
    except ClusterError as e:
        raise ClusterError(f"{opts.engine} has no image {image!r}: build it (`{opts.engine} build -f "
                           f"docker/Dockerfile -t {image} .`, or docker/testbed.sh build {image}); "
                           f"{e}") from e
    user = _user()
    started: list[str] = []
    try:
        opts = _start_master(opts, user, timeout, started) if master else _with_running_port(opts)
        if workers and nworkers:
            _start_workers(nworkers, opts, user, timeout, started)
    except BaseException:
        if started:  # a failed start leaves no container behind
            _engine(remove_command(opts.engine, started))
        raise
    return {"cluster": opts.cluster, "host": "127.0.0.1", "port": opts.port, "containers": started,
            "worker_pids": []}


def _engine_name(engine: Optional[str], cluster: Optional[str] = None) -> str:
    """Given, else ``CW_CONTAINER_ENGINE``, else the one that started the cluster, else docker."""
    recorded = read_json(cluster_dir(cluster) / "engine.json") if cluster else None
    return check_engine(engine or os.environ.get("CW_CONTAINER_ENGINE")
                        or (recorded or {}).get("engine") or "docker")


def _start_master(opts: Options, user: User, timeout: float, started: list[str]) -> Options:
    name = container_name(opts.cluster, "master")
    if any(c["role"] == "master" for c in containers(opts.engine, opts.cluster)):
        raise ClusterError(f"cluster {opts.cluster!r} already has a master container ({name}); "
                           f"stop it first (cw docker stop --cluster {opts.cluster}) or use -M")
    running = read_master(opts.cluster)
    if running is not None and running.get("pidns") == pid_namespace():
        raise ClusterError(f"cluster {opts.cluster!r} already has a master process (pid {running['pid']}); "
                           "stop it first or use -M")
    mjson = cluster_dir(opts.cluster) / "master.json"
    mjson.unlink(missing_ok=True)  # left by a container that is gone
    _engine(run_command("master", name, opts, user))
    started.append(name)

    def ready() -> Optional[dict]:
        info = read_json(mjson)
        if info is None and not any(c["state"] == "running" for c in containers(opts.engine, opts.cluster)):
            raise ClusterError(f"the master container exited at start; see `{opts.engine} logs {name}`")
        return info

    info = wait_until(ready, timeout, poll=0.2)
    if info is None:
        raise ClusterError(f"the master container did not start within {timeout:g} s; "
                           f"see `{opts.engine} logs {name}`")
    opts = replace(opts, port=info["port"])
    try:
        query_status("127.0.0.1", opts.port, timeout=timeout, cluster=opts.cluster, insecure=opts.insecure)
    except MasterUnavailableError as e:
        raise ClusterError(f"{e}; see {cluster_dir(opts.cluster) / 'logs'}") from e
    return opts


def _start_workers(n: int, opts: Options, user: User, timeout: float, started: list[str]) -> None:
    before = _ready(opts)
    address = "127.0.0.1" if opts.network == "host" else container_name(opts.cluster, "master")
    for _ in range(n):
        name = container_name(opts.cluster, "worker", secrets.token_hex(4))
        _engine(run_command("worker", name, opts, user, address))
        started.append(name)
    if wait_until(lambda: _at_least(opts, before + n), timeout, poll=0.3) is None:
        raise ClusterError(f"worker containers did not all register within {timeout:g} s; "
                           f"see {cluster_dir(opts.cluster) / 'logs'} and `{opts.engine} logs NAME`")


def _with_running_port(opts: Options) -> Options:
    info = read_json(cluster_dir(opts.cluster) / "master.json")
    if info is None:
        raise ClusterError(f"no master.json for cluster {opts.cluster!r}; start a master or drop -M")
    return replace(opts, port=int(info["port"]))


def _ready(opts: Options) -> int:
    """Workers whose executors all registered with the master."""
    snap = query_status("127.0.0.1", opts.port, timeout=10, cluster=opts.cluster, insecure=opts.insecure)
    return sum(1 for w in snap["workers"] if w["executors"] >= opts.procs)


def _at_least(opts: Options, n: int) -> Optional[dict]:
    try:
        return {} if _ready(opts) >= n else None
    except MasterUnavailableError:
        return None


def stop(cluster: Optional[str] = None, engine: Optional[str] = None, timeout: float = 40.0, *,
         master: bool = True, workers: bool = True) -> int:
    """Stop (workers first: they drain) and remove this cluster's containers,
    or only its workers' or its master's; return how many."""
    name = cluster_name(cluster)
    engine = _engine_name(engine, name)
    found = containers(engine, name)
    stopped = 0
    for role in [r for r, wanted in (("worker", workers), ("master", master)) if wanted]:
        names = [c["name"] for c in found if c["role"] == role]
        if names:
            _engine(stop_command(engine, names, timeout), timeout=timeout + 30)
            _engine(remove_command(engine, names))
            stopped += len(names)
    if master:
        (cluster_dir(name) / "master.json").unlink(missing_ok=True)
    return stopped


def status(cluster: Optional[str] = None, engine: Optional[str] = None,
           insecure: Optional[bool] = None) -> dict:
    """The containers and, if it answers, the master's snapshot."""
    name = cluster_name(cluster)
    engine = _engine_name(engine, name)
    out: dict = {"cluster": name, "containers": containers(engine, name)}
    info = read_json(cluster_dir(name) / "master.json")
    if info is not None:
        try:
            out["master"] = query_status("127.0.0.1", info["port"], timeout=5, cluster=name,
                                         insecure=insecure_default(insecure))
        except MasterUnavailableError as e:
            out["master_error"] = str(e)
    return out
