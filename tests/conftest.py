"""Fixtures: the real gnatsd.py (and the Go nats-server oracle) as processes.

Every server here is a real process bound to 127.0.0.1 on a port the OS
picks (`-p -1`); the port is read from its "Listening for client connections
on HOST:PORT" log line, as nats.py's own test harness does.  Nothing is
mocked.  Every read has a timeout, so a hung server fails a test instead of
hanging the run.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GNATSD = os.path.join(ROOT, "gnatsd.py")

# Python used to run gnatsd.py; `make test-pythons` sets it per interpreter.
SERVER_PYTHON = os.environ.get("GNATSD_PYTHON", sys.executable)

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


def go_server_path(prefer: str = "") -> str | None:
    if prefer and prefer in GO_SERVERS:
        return GO_SERVERS[prefer]
    for ver in sorted(GO_SERVERS, key=lambda v: tuple(map(int, v.split("."))), reverse=True):
        return GO_SERVERS[ver]
    return None


class ServerProcess:
    """A server process; its stderr is collected by a thread into `self.log`."""

    def __init__(self, argv: list, kind: str, cwd: str | None = None, env: dict | None = None):
        self.argv = argv
        self.kind = kind
        self.cwd = cwd
        self.env = env
        self.log = bytearray()
        self.lock = threading.Condition()
        self.proc = None
        self.host = None
        self.port = None

    def start(self, timeout: float = 10.0, wait_ready: bool = True) -> "ServerProcess":
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=self.cwd, env=self.env)
        threading.Thread(target=self._pump, daemon=True).start()
        if wait_ready:
            m = self.wait_for_log(LISTEN_RE, timeout)
            self.host, self.port = m.group(1).decode(), int(m.group(2))
            self.wait_for_log(READY_RE, timeout)
        return self

    def _pump(self):
        stream = self.proc.stdout
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
            with self.lock:
                if not chunk:
                    self.log += b""
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
                if self.proc.poll() is not None and not m:
                    # Give the pump a moment to drain, then fail.
                    self.lock.wait(0.05)
                    m = pattern.search(self.log, start)
                    if m:
                        return m
                    raise AssertionError("%s exited with %s before %r appeared:\n%s" % (
                        self.kind, self.proc.returncode, pattern.pattern,
                        self.log.decode(errors="replace")[-3000:]))
                self.lock.wait(min(left, 0.1))

    def log_text(self) -> str:
        with self.lock:
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
        self.buf += chunk
        return True

    def expect(self, pattern, timeout: float | None = None) -> re.Match:
        """Read until `pattern` (bytes regex, anchored at the buffer start) matches;
        consume and return the match."""
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern, re.S)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = pattern.match(self.buf)
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
