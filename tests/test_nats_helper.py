"""gnatsd.py driven as nats.py's test helper drives `nats-server` (issue 14).

nats.py ships a helper package (`nats.server` in the nats.py repository:
nats-server/src/nats/server/__init__.py) that finds `nats-server` on PATH,
starts it with --addr, --port (0 becomes -1), --debug, --store_dir, --config,
--cluster, --cluster_name, --routes and -n, reads stderr line by line until
"Server is ready" (taking host and port from "Listening for client
connections on H:P"), collects [FTL] and other non-[INF] lines, and on exit
before ready raises with the exit code and those lines.  Its run_cluster()
reserves client and route ports by binding and closing sockets, then starts
node1..nodeN in cluster "cluster", each routed to the others.

The driver below is written from those facts; every test runs it against
the Go server (2.15, a symlink named nats-server) and against gnatsd.py
(`--install-alias`), and expects the same outcome.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import GNATSD, GO_SERVERS, RawConn, t_expect, t_ping_pong, write_conf

pytestmark = pytest.mark.timeout(120)

READY = re.compile(r"Server is ready")
LISTENING = re.compile(r"Listening for client connections on (.+):(\d+)")
INFO_LINE = re.compile(r"\[INF\]\s+(.*)")
FATAL = re.compile(r"\[FTL\]\s+(.*)")


class HelperError(Exception):
    def __init__(self, code: int, errors: list):
        super().__init__("Server exited with code %d: %s" % (code, errors))
        self.code = code
        self.errors = errors


class Started:
    def __init__(self, proc, host: str, port: int):
        self.proc, self.host, self.port = proc, host, port

    async def shutdown(self) -> int:
        self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 10)


async def helper_run(path: str, *, host=None, port=None, debug=False, store_dir=None,
                     config_path=None, cluster=None, cluster_name=None, routes=None,
                     name=None, extra=()) -> Started:
    exe = shutil.which("nats-server", path=path)
    assert exe, "no nats-server in %s" % path
    argv = [exe]
    if host is not None:
        argv += ["--addr", host]
    if port is not None:
        argv += ["--port", str(-1 if port == 0 else port)]
    if debug:
        argv.append("--debug")
    if store_dir is not None:
        argv += ["--store_dir", store_dir]
    if config_path is not None:
        argv += ["--config", config_path]
    if cluster is not None:
        argv += ["--cluster", cluster]
    if cluster_name is not None:
        argv += ["--cluster_name", cluster_name]
    if routes is not None:
        argv += ["--routes", routes]
    if name is not None:
        argv += ["-n", name]
    argv += list(extra)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)

    async def ready():
        found_host = found_port = None
        errors = []
        async for raw in proc.stderr:
            line = raw.decode().strip()
            if READY.search(line):
                return found_host, found_port
            m = LISTENING.search(line)
            if m:
                found_host = m.group(1).strip("[]")
                found_port = int(m.group(2))
            if INFO_LINE.search(line):
                continue
            m = FATAL.search(line)
            if m:
                errors.append(m.group(1))
            errors.append(line)
        raise HelperError(await proc.wait(), errors)
    try:
        found = await asyncio.wait_for(ready(), 15)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    # Keep stderr drained, as a long test's server would fill the pipe.
    asyncio.ensure_future(_drain(proc.stderr))
    return Started(proc, *found)


async def _drain(stream):
    async for _ in stream:
        pass


@pytest.fixture(params=["go2.15", "gnatsd"])
def bin_dir(request, tmp_path):
    """A directory holding `nats-server`: the Go binary, or gnatsd.py's alias."""
    where = tmp_path / "bin"
    where.mkdir()
    if request.param == "gnatsd":
        r = subprocess.run([sys.executable, GNATSD, "--install-alias", str(where)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    else:
        if "2.15" not in GO_SERVERS:
            pytest.skip("Go nats-server 2.15 is not installed (make dev)")
        os.symlink(GO_SERVERS["2.15"], where / "nats-server")
    return str(where)


def reserve_ports(n: int) -> list:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def round_trip(host: str, port: int):
    conn = RawConn(host if host != "0.0.0.0" else "127.0.0.1", port)
    conn.read_info()
    conn.send(b'CONNECT {"verbose":false}\r\n')
    t_ping_pong(conn)
    conn.close()


@pytest.mark.parametrize("kw", [
    {"host": "127.0.0.1", "port": 0},
    {"host": "127.0.0.1", "port": 0, "debug": True},
    {"host": "127.0.0.1", "port": 0, "extra": ["-DV"]},
    {"port": 0, "store_dir": "STORE"},
])
def test_single_server(bin_dir, tmp_path, kw):
    kw = dict(kw)
    if kw.get("store_dir"):
        kw["store_dir"] = str(tmp_path / "store")

    async def main():
        server = await helper_run(bin_dir, **kw)
        try:
            assert server.host == kw.get("host", "0.0.0.0")
            assert server.port > 0
            await asyncio.get_running_loop().run_in_executor(
                None, round_trip, server.host, server.port)
        finally:
            code = await server.shutdown()
        assert code == 0
    asyncio.run(main())


def test_cluster_as_run_cluster_starts_it(bin_dir, tmp_path):
    size = 3
    client_ports, route_ports = reserve_ports(size), reserve_ports(size)

    async def main():
        servers = []
        try:
            for i in range(size):
                routes = ",".join("nats://127.0.0.1:%d" % route_ports[j]
                                  for j in range(size) if j != i)
                servers.append(await helper_run(
                    bin_dir, port=client_ports[i], cluster="nats://127.0.0.1:%d" % route_ports[i],
                    cluster_name="cluster", routes=routes, name="node%d" % (i + 1),
                    store_dir=str(tmp_path / ("node%d" % (i + 1)))))
            await asyncio.get_running_loop().run_in_executor(None, across, servers)
        finally:
            codes = [await s.shutdown() for s in servers]
        assert codes == [0] * size
    asyncio.run(main())


def across(servers):
    """node1's subscriber gets what node3 publishes, once routes are up."""
    sub = RawConn("127.0.0.1", servers[0].port)
    pub = RawConn("127.0.0.1", servers[-1].port)
    for conn in (sub, pub):
        conn.read_info()
        conn.send(b'CONNECT {"verbose":false}\r\n')
    sub.send(b"SUB across 1\r\nPING\r\n")
    t_expect(sub, rb"PONG\r\n")
    import time
    deadline = time.monotonic() + 10
    while b"MSG" not in bytes(sub.buf):
        assert time.monotonic() < deadline, "no message across the cluster"
        pub.send(b"PUB across 2\r\nhi\r\nPING\r\n")
        t_expect(pub, rb"PONG\r\n")
        sub._fill(time.monotonic() + 0.05)
    t_expect(sub, rb"MSG across 1 2\r\nhi\r\n")


def run_to_error(bin_dir, **kw) -> HelperError:
    async def main():
        with pytest.raises(HelperError) as err:
            await helper_run(bin_dir, **kw)
        return err.value
    return asyncio.run(main())


def test_port_in_use_is_reported_in_go_words(bin_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = run_to_error(bin_dir, host="127.0.0.1", port=port)
    assert err.code == 1
    assert ('Error listening on port: 127.0.0.1:%d, "listen tcp 127.0.0.1:%d: bind: address '
            'already in use"' % (port, port)) in err.errors


def test_config_error_is_reported_with_the_file_and_line(bin_dir, tmp_path):
    conf = write_conf(tmp_path, "port: -1\nbogus: 1\n")
    err = run_to_error(bin_dir, config_path=conf)
    assert err.code == 1
    # Go prints a processing error as a list, a blank line after it.
    assert err.errors == ['nats-server: %s:2:1: unknown field "bogus"' % conf, ""]


def test_config_parse_error_is_reported(bin_dir, tmp_path):
    """A syntax error: both exit 1 with one `nats-server:` line naming line 3
    (Go says "Parse error on line 3"; gnatsd.py also names the file)."""
    conf = write_conf(tmp_path, "port: -1\nfoo {\n")
    err = run_to_error(bin_dir, config_path=conf)
    assert err.code == 1
    assert len(err.errors) == 1 and err.errors[0].startswith("nats-server: ")
    assert re.search(r"line 3\b|:3:\d+: ", err.errors[0]), err.errors
