"""Fixtures: the real gnatsd.py (and the Go nats-server oracle) as processes.

Every server here is a real process bound to 127.0.0.1 on a port the OS
picks (`-p -1`); the port is read from its "Listening for client connections
on HOST:PORT" log line, as nats.py's own test harness does.  Nothing is
mocked.  Every read has a timeout, so a hung server fails a test instead of
hanging the run.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GNATSD = os.path.join(ROOT, "gnatsd.py")

# Python used to run gnatsd.py; `make test-pythons` sets it per interpreter.
SERVER_PYTHON = os.environ.get("GNATSD_PYTHON", sys.executable)


def _cache_bytecode(python: str) -> None:
    """Write gnatsd.py's cached bytecode for `python` once per run, as a
    first start or an install would: `python3 gnatsd.py` restarts itself as
    an import of the module (restart_as_module), which loads it.  Machines
    that set PYTHONDONTWRITEBYTECODE (this one does) would otherwise
    compile the file twice at every server start."""
    subprocess.run([python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1])",
                    GNATSD], capture_output=True, timeout=60)


_cache_bytecode(SERVER_PYTHON)

LISTEN_RE = re.compile(rb"Listening for client connections on (\S+):(\d+)")
READY_RE = re.compile(rb"Server is ready")


def go_servers() -> dict:
    """The Go nats-server binaries installed here: {"2.9": path, "2.15": path}."""
    found = {}
    candidates = [
        os.environ.get("NATS_SERVER_GO", ""),
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for path in candidates:
        if not path or not os.path.exists(path) or path in found.values():
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(rb"v(\d+)\.(\d+)\.\d+", out)
        if m:
            found.setdefault("%s.%s" % (m.group(1).decode(), m.group(2).decode()), path)
    return found


GO_SERVERS = go_servers()


def import_gnatsd():
    """gnatsd.py as a module, for the in-process tests (loaded once)."""
    import importlib.util
    if "gnatsd" in sys.modules:
        return sys.modules["gnatsd"]
    spec = importlib.util.spec_from_file_location("gnatsd", GNATSD)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gnatsd"] = module
    spec.loader.exec_module(module)
    return module


def go_server_path(prefer: str = "") -> str | None:
    if prefer and prefer in GO_SERVERS:
        return GO_SERVERS[prefer]
    for ver in sorted(GO_SERVERS, key=lambda v: tuple(map(int, v.split("."))), reverse=True):
        return GO_SERVERS[ver]
    return None


# Every server started in this run, so none outlives it (pytest_sessionfinish).
_ALL_SERVERS: list = []


def pytest_sessionfinish(session, exitstatus):
    for srv in _ALL_SERVERS:
        srv.kill()


def pytest_terminal_summary(terminalreporter):
    """Lists the files tests kept as artifacts (`record_property("artifact",
    path)`, e.g. tests/test_websocket_browser.py's screenshots); the
    property travels in the reports, so xdist workers' show up too."""
    paths = sorted({value for reports in terminalreporter.stats.values() for r in reports
                    for name, value in getattr(r, "user_properties", ()) if name == "artifact"})
    if paths:
        terminalreporter.write_sep("-", "artifacts")
        for path in paths:
            terminalreporter.write_line(path)


class ServerProcess:
    """A server process; its stderr is collected by a thread into `self.log`."""

    def __init__(self, argv: list, kind: str, cwd: str | None = None, env: dict | None = None):
        self.argv = argv
        self.kind = kind
        self.cwd = cwd
        self.env = env
        self.log = bytearray()
        self.eof = False             # the pump has read the output to its end
        self.lock = threading.Condition()
        self.proc = None
        self.host = None
        self.port = None

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> "ServerProcess":
        _ALL_SERVERS.append(self)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=self.cwd, env=self.env)
        threading.Thread(target=self._pump, daemon=True).start()
        if wait_ready:
            try:
                m = self.wait_for_log(LISTEN_RE, timeout)
                self.host, self.port = m.group(1).decode(), int(m.group(2))
                self.wait_for_log(READY_RE, timeout)
            except BaseException:
                self.kill()  # never leak a server that failed to start
                raise
        return self

    def _pump(self):
        stream = self.proc.stdout
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
            with self.lock:
                if not chunk:
                    self.eof = True
                    self.lock.notify_all()
                    return
                self.log += chunk
                self.lock.notify_all()

    def wait_for_log(self, pattern, timeout: float = 5.0, start: int = 0):
        """Wait until `pattern` (bytes regex) appears in the log; return the match."""
        if isinstance(pattern, (bytes, str)):
            pattern = re.compile(pattern if isinstance(pattern, bytes) else pattern.encode())
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                m = pattern.search(self.log, start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %r in %s log:\n%s" % (
                        pattern.pattern, self.kind, self.log.decode(errors="replace")[-3000:]))
                if self.proc.poll() is not None and self.eof:
                    # The process is gone and its output fully read.
                    raise AssertionError("%s exited with %s before %r appeared:\n%s" % (
                        self.kind, self.proc.returncode, pattern.pattern,
                        self.log.decode(errors="replace")[-3000:]))
                self.lock.wait(min(left, 0.1))

    def log_text(self) -> str:
        """The log so far; all of it once the process has exited."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is not None:
                deadline = time.monotonic() + 5
                while not self.eof and time.monotonic() < deadline:
                    self.lock.wait(0.05)
            return self.log.decode(errors="replace")

    @property
    def url(self) -> str:
        return "nats://%s:%d" % (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def gnatsd_argv(*args, python: str | None = None) -> list:
    return [python or SERVER_PYTHON, GNATSD, *args]


def start_gnatsd(*args, python: str | None = None, addr: bool = True, port: bool = True,
                 **kw) -> ServerProcess:
    """Start gnatsd.py on 127.0.0.1 and a free port (unless args say otherwise)."""
    argv = gnatsd_argv(*(["-a", "127.0.0.1"] if addr else []),
                       *(["-p", "-1"] if port else []), *args, python=python)
    return ServerProcess(argv, "gnatsd.py", **kw).start()


def start_go(*args, version: str = "", addr: bool = True, port: bool = True,
             **kw) -> ServerProcess:
    path = go_server_path(version)
    if path is None:
        pytest.skip("Go nats-server is not installed")
    argv = [path, *(["-a", "127.0.0.1"] if addr else []), *(["-p", "-1"] if port else []), *args]
    return ServerProcess(argv, "nats-server " + (version or "latest"), **kw).start()


@pytest.fixture
def gnatsd():
    """A fresh gnatsd.py server with default options."""
    srv = start_gnatsd()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory():
    """Start servers with custom args; all are stopped at teardown.

    `server_factory("gnatsd", "-D")` or `server_factory("go", "-D", version="2.9")`.
    """
    started = []

    def make(kind: str = "gnatsd", *args, **kw):
        srv = start_gnatsd(*args, **kw) if kind == "gnatsd" else start_go(*args, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


ORACLES = ["gnatsd", "go2.9", "go2.15"]


@pytest.fixture(params=ORACLES)
def kind(request):
    """Parametrised "gnatsd", "go2.9", "go2.15" (Go ones skipped if absent)."""
    if request.param != "gnatsd" and request.param[2:] not in GO_SERVERS:
        pytest.skip("Go nats-server %s is not installed" % request.param[2:])
    return request.param


@pytest.fixture
def start(kind):
    """start(*args): the `kind` server on 127.0.0.1 and a free port, with
    these extra args; stopped at teardown."""
    started = []

    def make(*args, **kw):
        if kind == "gnatsd":
            srv = start_gnatsd(*args, **kw)
        else:
            srv = start_go(*args, version=kind[2:], **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(params=ORACLES)
def any_server(request):
    """Parametrised: gnatsd.py, then each installed Go nats-server.

    Use it for transcripts whose answer must be the same from all of them.
    """
    kind = request.param
    if kind == "gnatsd":
        srv = start_gnatsd()
    else:
        ver = kind[2:]
        if ver not in GO_SERVERS:
            pytest.skip("Go nats-server %s is not installed" % ver)
        srv = start_go(version=ver)
    yield srv
    srv.stop()


def start_kind(kind: str, *args) -> "ServerProcess":
    """start_gnatsd or, for "go2.15", the Go 2.15 server (skipped if absent)."""
    if kind == "gnatsd":
        return start_gnatsd(*args)
    if "2.15" not in GO_SERVERS:
        pytest.skip("Go nats-server 2.15 is not installed (make dev)")
    return start_go(*args, version="2.15")


# -- raw connections ----------------------------------------------------------


class RawConn:
    """A plain TCP connection with send/expect helpers (gnatsd's test/test.go)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = bytearray()
        self.closed = False

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        return self._recv_into(self.buf, deadline)

    def _recv_into(self, target: bytearray, deadline: float) -> bool:
        """One recv before `deadline`, appended to `target`; False on
        timeout or close (then `closed`)."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        target += chunk
        return True

    def expect(self, pattern, timeout: float | None = None) -> re.Match:
        """Read until `pattern` (bytes regex, anchored at the buffer start) matches;
        consume and return the match."""
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern, re.S)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = pattern.match(bytes(self.buf))  # bytes: groups must survive the del below
            if m:
                del self.buf[:m.end()]
                return m
            if self.closed or not self._fill(deadline):
                raise AssertionError("expected %r, got %r%s" % (
                    pattern.pattern, bytes(self.buf[:500]), " (closed)" if self.closed else ""))

    def expect_exact(self, data: bytes, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < len(data):
            if self.closed or not self._fill(deadline):
                break
        got = bytes(self.buf[:len(data)])
        assert got == data, "expected %r, got %r" % (data, bytes(self.buf[:len(data) + 200]))
        del self.buf[:len(data)]

    def read_line(self, timeout: float | None = None) -> bytes:
        return self.expect(rb"([^\n]*\n)", timeout).group(1)

    def read_info(self) -> dict:
        import json
        m = self.expect(rb"INFO (\{.*?\}) ?\r\n")
        return json.loads(m.group(1))

    def read_all(self, timeout: float = 0.3) -> bytes:
        """Everything that arrives within `timeout` (used to assert silence)."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def read_until_closed(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.closed:
            if not self._fill(deadline) and not self.closed:
                raise AssertionError("connection still open; got %r" % bytes(self.buf[:500]))
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def ping_pong(self):
        self.send(b"PING\r\n")
        self.expect(rb"PONG\r\n")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def raw_factory():
    conns = []

    def make(server, connect: bytes | None = b'CONNECT {"verbose":false}\r\n',
             read_info: bool = True) -> RawConn:
        c = RawConn(server.host, server.port)
        conns.append(c)
        if read_info:
            c.info = c.read_info()
        if connect is not None:
            c.send(connect)
        return c

    yield make
    for c in conns:
        c.close()


# -- tolerant transcript helpers (test_proto & co.) -----------------------------
#
# Newer Go servers say things nobody asked for: 2.12+ sends a second INFO
# (`connect_info`) after the first PONG, and every 2.x server sends an early
# PING ~2 s after connect.  These helpers drop such lines (an INFO or PING
# starting at a line boundary), answer each dropped PING with PONG, and then
# compare exact bytes.  Payloads used with them must not contain those lines.

UNASKED_RE = re.compile(rb"^(?:PING\r\n|INFO \{[^\r\n]*\} ?\r\n)", re.M)


def drop_unasked(conn: RawConn) -> None:
    """Remove unasked INFO/PING lines from conn's buffer; answer PINGs."""
    def repl(m):
        if m.group().startswith(b"PING"):
            conn.send(b"PONG\r\n")
        return b""
    conn.buf[:] = UNASKED_RE.sub(repl, bytes(conn.buf))


def connected(srv, connect: bytes = b'{"verbose":false}') -> RawConn:
    """A raw client of `srv` past INFO, CONNECT and a PING/PONG round trip."""
    c = RawConn(srv.host, srv.port)
    c.read_info()
    c.send(b"CONNECT %s\r\n" % connect)
    t_ping_pong(c)
    return c


def t_expect_exact(conn: RawConn, data: bytes, timeout: float | None = None) -> None:
    """Like expect_exact, ignoring unasked INFO/PING; fails fast on a mismatch."""
    deadline = time.monotonic() + (timeout or conn.timeout)
    while True:
        drop_unasked(conn)
        got = bytes(conn.buf[:len(data)])
        if got == data:
            del conn.buf[:len(data)]
            return
        # A mismatch can only heal if the tail is a partial unasked line.
        mismatch = len(got) == len(data) or not data.startswith(got)
        wait_until = min(deadline, time.monotonic() + 0.3) if mismatch else deadline
        if conn.closed or not conn._fill(wait_until):
            drop_unasked(conn)
            got = bytes(conn.buf)
            assert got[:len(data)] == data, "expected %r, got %r%s" % (
                data, got[:len(data) + 200], " (closed)" if conn.closed else "")
            del conn.buf[:len(data)]
            return


def t_expect(conn: RawConn, pattern, timeout: float | None = None) -> re.Match:
    """Like expect (regex anchored at the buffer start), ignoring unasked INFO/PING."""
    if isinstance(pattern, bytes):
        pattern = re.compile(pattern, re.S)
    deadline = time.monotonic() + (timeout or conn.timeout)
    while True:
        drop_unasked(conn)
        m = pattern.match(bytes(conn.buf))
        if m:
            del conn.buf[:m.end()]
            return m
        if conn.closed or not conn._fill(deadline):
            raise AssertionError("expected %r, got %r%s" % (
                pattern.pattern, bytes(conn.buf[:500]), " (closed)" if conn.closed else ""))


def t_read_all(conn: RawConn, timeout: float = 0.3) -> bytes:
    """Everything that arrives within `timeout`, minus unasked INFO/PING."""
    deadline = time.monotonic() + timeout
    while conn._fill(deadline):
        pass
    drop_unasked(conn)
    data = bytes(conn.buf)
    conn.buf.clear()
    return data


def t_read_until_closed(conn: RawConn, timeout: float | None = None) -> bytes:
    """Everything until the server closes, minus unasked INFO/PING."""
    deadline = time.monotonic() + (timeout or conn.timeout)
    while not conn.closed:
        if not conn._fill(deadline) and not conn.closed:
            raise AssertionError("connection still open; got %r" % bytes(conn.buf[:500]))
    drop_unasked(conn)
    data = bytes(conn.buf)
    conn.buf.clear()
    return data


def t_ping_pong(conn: RawConn) -> None:
    """PING/PONG barrier: everything sent before it has been processed."""
    conn.send(b"PING\r\n")
    t_expect_exact(conn, b"PONG\r\n")


def write_conf(tmp_path, text: str, name: str = "server.conf") -> str:
    """Write a config file under pytest's tmp_path; return its path."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(params=ORACLES)
def any_server_with(request):
    """Parametrised like any_server, but started by the test with extra args:
    `srv = any_server_with("-c", path)`; stopped at teardown."""
    kind = request.param
    started = []

    def make(*args):
        if kind == "gnatsd":
            srv = start_gnatsd(*args)
        else:
            ver = kind[2:]
            if ver not in GO_SERVERS:
                pytest.skip("Go nats-server %s is not installed" % ver)
            srv = start_go(*args, version=ver)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


# -- clusters (routes) ------------------------------------------------------------
#
# A cluster is a few server processes routed together.  Every node gets a
# monitor (`-m -1`) and a route port read from its log line "Listening for
# route connections on HOST:PORT" (Go prints it after "Server is ready").
# Routes are checked through `/routez`: a Go 2.10+ node keeps a pool of
# connections to each peer (3 plus one pinned to $SYS), so "routed to N
# peers" means N distinct `remote_id`s, not `num_routes == N`.

ROUTE_LISTEN_RE = re.compile(rb"Listening for route connections on (\S+):(\d+)")
MONITOR_LISTEN_RE = re.compile(rb"Starting http monitor on (\S+):(\d+)")

# Node kinds per cluster layout: node 1 is the seed, node k is started with a
# route to node k-1 only (so node 3 reaches node 1 by gossip).
CLUSTER_LAYOUTS = {
    "go": ["go2.15"] * 3,
    "go2.9": ["go2.9"] * 3,
    "gnatsd": ["gnatsd"] * 3,
    "go+gnatsd": ["go2.15", "gnatsd", "gnatsd"],
    "gnatsd+go": ["gnatsd", "go2.15", "go2.15"],
    "go2.9+go": ["go2.9", "go2.15", "go2.15"],
    "go2.9+gnatsd": ["go2.9", "gnatsd", "gnatsd"],
    "gnatsd+go+gnatsd": ["gnatsd", "go2.15", "gnatsd"],
}


def layout_kinds(layout: str) -> list:
    """The node kinds of a layout; skips the test when a Go server is missing."""
    kinds = CLUSTER_LAYOUTS[layout]
    for k in kinds:
        if k != "gnatsd" and k[2:] not in GO_SERVERS:
            pytest.skip("Go nats-server %s is not installed" % k[2:])
    return kinds


def rss(pid: int) -> int:
    """A process's resident set size in bytes (Linux /proc)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bcrypt_hash(password: str, cost: int) -> str | None:
    """A bcrypt hash made here (crypt, else the bcrypt package), or None."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2 ** cost))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, AttributeError, OSError):
        pass
    try:
        import bcrypt
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    except ImportError:
        return None


def free_port() -> int:
    """A port free right now, for a node that must know its own port before
    it starts.  Drawn below the kernel's ephemeral range: a port the kernel
    handed out could be handed out again, to another test's outgoing
    connection or `-p -1` listener, before the node binds it (a Go node
    once failed so: "bind: address already in use")."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:          # (no luck below the range: the old way)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def monitor_json(srv, path: str, timeout: float = 3.0) -> dict:
    """GET a monitor endpoint of a cluster node (started with `-m -1`)."""
    import json
    import urllib.request
    url = "http://127.0.0.1:%d%s" % (srv.mon_port, path)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def server_id(srv) -> str:
    """The node's server id (from /varz; cached on the process object)."""
    if getattr(srv, "cached_server_id", None) is None:
        srv.cached_server_id = monitor_json(srv, "/varz")["server_id"]
    return srv.cached_server_id


def route_ids(srv) -> set:
    """Distinct `remote_id`s in the node's /routez (pooled routes count once)."""
    return {r["remote_id"] for r in monitor_json(srv, "/routez")["routes"]}


def _logs_of(nodes) -> str:
    return "\n".join("--- %s (route port %s) ---\n%s" % (
        n.kind, getattr(n, "route_port", "?"), n.log_text()[-2500:]) for n in nodes)


def wait_routes(srv, n: int, timeout: float = 10.0) -> set:
    """Wait until the node is routed to exactly `n` distinct peers; return their ids."""
    deadline = time.monotonic() + timeout
    ids = set()
    while True:
        try:
            ids = route_ids(srv)
        except OSError:
            ids = None
        if ids is not None and len(ids) == n:
            return ids
        if time.monotonic() > deadline:
            raise AssertionError("%s: routed to %r, wanted %d peers\n%s" % (
                srv.kind, ids, n, _logs_of([srv])))
        time.sleep(0.05)


def wait_mesh(nodes, timeout: float = 10.0) -> None:
    """Wait until every node is routed to every other node and to nothing else."""
    deadline = time.monotonic() + timeout
    ids = {}
    for n in nodes:
        while id(n) not in ids:     # a monitor may drop a request on a loaded machine
            try:
                ids[id(n)] = server_id(n)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    for n in nodes:
        want = {ids[id(m)] for m in nodes if m is not n}
        while True:
            try:
                got = route_ids(n)
            except OSError:
                got = None
            if got == want:
                break
            if time.monotonic() > deadline:
                raise AssertionError("no full mesh: %s routed to %r, wanted %r\n%s" % (
                    n.kind, got, want, _logs_of(nodes)))
            time.sleep(0.05)


def _route_url(node_or_url, user: str | None = None, password: str | None = None) -> str:
    if isinstance(node_or_url, str):
        return node_or_url
    auth = "%s:%s@" % (user, password) if user is not None else ""
    return "nats://%s127.0.0.1:%d" % (auth, node_or_url.route_port)


class Cluster:
    """Nodes routed together under one cluster name; all stopped at teardown.

    `start(kind, routes=[...])` starts one node ("gnatsd", "go2.15", "go2.9",
    or "go" for the newest Go) with `-m -1` and a route listener, seeded with
    `routes` (nodes, or URL strings such as `route_url(node, "u", "p")`), and
    returns its ServerProcess with `route_port`, `mon_port` and `node_kind` set.
    Cluster flags are used (`--cluster nats://127.0.0.1:P --cluster_name N
    --routes ...`) unless `conf` is given: then the node gets a config file
    with a `cluster { name listen routes <conf> }` block instead, and `top`
    (config text) goes before that block.
    """

    def __init__(self, tmp_path, name: str = "c1"):
        self.tmp_path = tmp_path
        self.name = name
        self.nodes = []       # running or not, in start order
        self._confs = 0

    route_url = staticmethod(_route_url)

    def start(self, kind: str, routes=(), *, route_port: int = -1, conf: str | None = None,
              args=(), timeout: float = 10.0, top: str = ""):
        urls = [_route_url(r) for r in routes]
        spec = dict(kind=kind, routes=list(routes), conf=conf, args=tuple(args), top=top)
        if conf is None and top:
            conf = ""                 # a config file, for the top-level text
        if conf is None:
            cargs = ["--cluster", "nats://127.0.0.1:%d" % route_port, "--cluster_name", self.name]
            if urls:
                cargs += ["--routes", ",".join(urls)]
        else:
            self._confs += 1
            text = top + "cluster {\n  name: %s\n  listen: \"127.0.0.1:%d\"\n" % (
                self.name, route_port)
            if urls:
                text += "  routes: [\n%s  ]\n" % "".join("    %s\n" % u for u in urls)
            text += "  %s\n}\n" % conf
            cargs = ["-c", write_conf(self.tmp_path, text, "node%d.conf" % self._confs)]
        all_args = ["-m", "-1", *cargs, *args]
        if kind == "gnatsd":
            srv = start_gnatsd(*all_args)
        else:
            srv = start_go(*all_args, version=kind[2:] if kind.startswith("go2") else "")
        self.nodes.append(srv)
        try:
            srv.route_port = int(srv.wait_for_log(ROUTE_LISTEN_RE, timeout).group(2))
            srv.mon_port = int(srv.wait_for_log(MONITOR_LISTEN_RE, timeout).group(2))
        except BaseException:
            srv.kill()
            raise
        srv.node_kind = kind
        srv.cluster_spec = spec
        return srv

    def kill(self, node) -> None:
        """SIGKILL: no goodbye on any connection."""
        node.kill()

    def restart(self, node, **overrides):
        """Start the node again (after stop or kill) with the same kind, routes,
        config and route port; the new process replaces it in `nodes`."""
        node.stop()
        spec = dict(node.cluster_spec, **overrides)
        srv = self.start(spec.pop("kind"), spec.pop("routes"), route_port=node.route_port, **spec)
        self.nodes.remove(srv)
        self.nodes[self.nodes.index(node)] = srv
        return srv

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()


def start_cluster(cluster: Cluster, kinds, mesh: bool = True) -> list:
    """Start nodes of `kinds` in order, each seeded with the node before it
    only (node 3 learns node 1 by gossip); wait for the full mesh."""
    nodes = []
    for kind in kinds:
        nodes.append(cluster.start(kind, routes=nodes[-1:]))
    if mesh:
        wait_mesh(nodes)
    return nodes


class TcpProxy:
    """A TCP relay on 127.0.0.1 to `target_port` (threads; the target may be
    set later, as `target`): `cut()` ends every relayed connection, with an
    RST when `reset` (a link dropped on the way) or a shutdown of both sides
    (a peer that closed); while `refuse` is set, new ones are reset at once.
    `accepted` and `connections()` count relayed connections, ever and now."""

    def __init__(self, target_port: int = 0, reset: bool = True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        self.reset = reset
        self.lock = threading.Lock()
        self.links = []
        self.accepted = 0
        self.refuse = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return "nats://127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                self._end(a, True)
                continue
            try:
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._end(a, True)
                continue
            b.settimeout(None)
            with self.lock:
                self.links.append((a, b))
                self.accepted += 1
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _end(sock, reset: bool):
        """Close `sock`: with an RST (SO_LINGER 0), or after a shutdown."""
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def connections(self) -> int:
        with self.lock:
            return len(self.links)

    def cut(self):
        with self.lock:
            links, self.links = self.links, []
        for a, b in links:
            self._end(a, self.reset)
            self._end(b, self.reset)

    def close(self):
        self.refuse = True
        self.listener.close()
        self.cut()


@pytest.fixture
def proxies():
    """A list to put TcpProxy objects in; each is closed at teardown."""
    made = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def cluster_factory(tmp_path):
    """cluster_factory(name="c1") -> Cluster; every node is stopped at teardown,
    and its log tail printed (pytest shows it when the test failed)."""
    made = []

    def make(name: str = "c1") -> Cluster:
        c = Cluster(tmp_path, name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()
        print(_logs_of(c.nodes))
