"""Syslog output, as nats-server 2.x writes it (the same checks run against Go).

`-r udp://h:p`, `-r tcp://h:p` and `-r unix:///path` send every log line to
a syslog server instead of stderr, without the [INF] label: the level is the
syslog severity (info and trace: notice 5, debug 7, warning 4, error 3,
fatal 2), the facility is 0.  Network lines read
`<PRI>2026-11-27T15:29:14Z host TAG[PID]: message`, unix-socket lines
`<PRI>Nov 27 15:29:32 TAG[PID]: message`; TAG is the executable's name.
`-s` (local syslog) uses /dev/log with facility daemon (3); there is no
/dev/log on a test machine, so that path is tested in-process.
`--log_size_limit N` / `logfile_size_limit` (the file's other way out) renames
the log file to `NAME.YYYY.MM.DD.HH.MM.SS.NANOS` once it passes N bytes.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

import gnatsd as g
from conftest import ServerProcess, gnatsd_argv, go_server_path, write_conf

# A network syslog line, as Go's log/syslog writes it.
NET_RE = re.compile(rb"^<(\d+)>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d) (\S+) "
                    rb"([^\s\[]+)\[(\d+)\]: (.*)$")
# A unix-socket (local) syslog line: time.Stamp and no hostname.
LOCAL_RE = re.compile(rb"^<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ([^\s\[]+)\[(\d+)\]: (.*)$")


class Collector:
    """A syslog server for one test: UDP, TCP or unix stream; keeps lines."""

    def __init__(self, network: str, tmp_path=None):
        self.data = bytearray()
        self.lock = threading.Condition()
        if network == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.url = "udp://127.0.0.1:%d" % self.sock.getsockname()[1]
        elif network == "tcp":
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(4)
            self.url = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        else:
            path = str(tmp_path / "syslog.sock")
            self.sock = socket.socket(socket.AF_UNIX,
                                      socket.SOCK_DGRAM if network == "unixgram"
                                      else socket.SOCK_STREAM)
            self.sock.bind(path)
            if network == "unix":
                self.sock.listen(4)
            self.url = "unix://" + path
        self.network = network
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conns = []
        while self.running:
            if self.network in ("tcp", "unix"):
                try:
                    conn, _ = self.sock.accept()
                    conn.settimeout(0.05)
                    conns.append(conn)
                except OSError:
                    pass
                for conn in conns:
                    try:
                        self._add(conn.recv(65536))
                    except OSError:
                        pass
            else:
                try:
                    self._add(self.sock.recv(65536))
                except OSError:
                    pass
        for conn in conns:
            conn.close()

    def _add(self, chunk: bytes):
        with self.lock:
            self.data += chunk
            self.lock.notify_all()

    def wait_for(self, text: bytes, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        with self.lock:
            while text not in self.data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %r in syslog:\n%s" % (text, self.data.decode()))
                self.lock.wait(left)
            return bytes(self.data).splitlines()

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def start_server(kind: str, *args) -> ServerProcess:
    """A server logging to syslog: its stderr stays quiet, so don't wait."""
    if kind == "gnatsd":
        argv = gnatsd_argv("-a", "127.0.0.1", "-p", "-1", *args)
    else:
        path = go_server_path(kind[2:])
        if path is None:
            pytest.skip("Go nats-server is not installed")
        argv = [path, "-a", "127.0.0.1", "-p", "-1", *args]
    return ServerProcess(argv, kind).start(wait_ready=False)


def tag_of(kind: str) -> bytes:
    return b"gnatsd.py" if kind == "gnatsd" else b"nats-server"


@pytest.fixture
def run(kind, tmp_path):
    """run(network, *args) -> (server, collector), both cleaned up."""
    made = []

    def make(network: str, *args, conf: str = ""):
        col = Collector(network, tmp_path)
        made.append(col)
        if conf:
            args = ("-c", write_conf(tmp_path, conf % {"url": col.url}), *args)
        else:
            args = ("-r", col.url, *args)
        srv = start_server(kind, *args)
        made.append(srv)
        return srv, col

    yield make
    for thing in reversed(made):
        thing.stop() if isinstance(thing, ServerProcess) else thing.close()


@pytest.mark.parametrize("network", ["udp", "tcp"])
def test_remote_syslog_lines_carry_notice_priority_tag_pid_and_no_label(run, kind, network):
    srv, col = run(network)
    lines = col.wait_for(b"Server is ready")
    parsed = [NET_RE.match(line) for line in lines if line]
    assert all(parsed), lines
    ready = [m for m in parsed if m.group(6) == b"Server is ready"][0]
    assert ready.group(1) == b"5"  # facility 0, severity notice
    assert ready.group(3) == socket.gethostname().encode()
    assert ready.group(4) == tag_of(kind)
    assert int(ready.group(5)) == srv.pid
    assert any(m.group(6).startswith(b"Listening for client connections on 127.0.0.1:")
               for m in parsed)
    assert not any(b"[INF]" in line for line in lines)


def test_remote_syslog_over_a_unix_socket_uses_the_local_line_format(run, kind):
    srv, col = run("unix")
    lines = col.wait_for(b"Server is ready")
    parsed = [LOCAL_RE.match(line) for line in lines if line]
    assert all(parsed), lines
    assert parsed[-1].group(1) == b"5"
    assert parsed[-1].group(2) == tag_of(kind)
    assert int(parsed[-1].group(3)) == srv.pid


def test_debug_lines_are_severity_7(run, kind):
    srv, col = run("udp", "-D")
    lines = col.wait_for(b"Server is ready")
    with socket.create_connection(("127.0.0.1", _port(lines)), timeout=5) as s:
        s.recv(4096)
        s.sendall(b"CONNECT {}\r\nPING\r\n")
        s.recv(4096)
    lines = col.wait_for(b"Client connection created")
    created = [NET_RE.match(line) for line in lines if b"Client connection created" in line][0]
    assert created.group(1) == b"7"


def test_remote_syslog_from_the_config_file(run, kind):
    srv, col = run("udp", conf='remote_syslog: "%(url)s"\n')
    lines = col.wait_for(b"Server is ready")
    assert NET_RE.match(lines[-1]).group(4) == tag_of(kind)


def test_stderr_stays_quiet_while_logging_to_syslog(run, kind):
    srv, col = run("udp")
    col.wait_for(b"Server is ready")
    time.sleep(0.2)
    assert b"Server is ready" not in srv.log


@pytest.mark.parametrize("url, word", [("unix:///nonexistent/syslog.sock", b"syslog"),
                                       ("ftp://127.0.0.1:1", b"invalid network type")])
def test_a_bad_remote_syslog_stops_the_server(kind, url, word):
    srv = start_server(kind, "-r", url)
    assert srv.proc.wait(10) == 1
    time.sleep(0.1)
    assert word in bytes(srv.log)


def test_a_syslog_server_going_away_does_not_stop_the_server(tmp_path):
    col = Collector("tcp")
    srv = start_server("gnatsd", "-r", col.url, "-D")
    try:
        lines = col.wait_for(b"Server is ready")
        port = _port(lines)
        col.close()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                assert s.recv(4096).startswith(b"INFO ")
                s.sendall(b"CONNECT {}\r\nPING\r\n")
                got = b""
                while b"PONG" not in got:       # (+OK first: verbose; maybe a read of its own)
                    chunk = s.recv(4096)
                    assert chunk, "closed after %r" % got
                    got += chunk
                assert got == b"+OK\r\nPONG\r\n"
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def _port(lines: list) -> int:
    for line in lines:
        m = re.search(rb"Listening for client connections on [\d.]+:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


# -- local syslog, in-process (no /dev/log here) --

def test_local_syslog_uses_facility_daemon_and_the_executable_as_tag(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(5)
    monkeypatch.setattr(g, "_LOCAL_SYSLOG_PATHS", (path,))
    monkeypatch.setattr(g.sys, "argv", ["/usr/local/bin/gnatsd.py"])
    opts = g.Options(syslog=True, debug=True).fill_defaults()
    try:
        g.configure_logging(opts)
        g.log.info("hello %s", "info")
        g.log.debug("hello debug")
        g.log.warning("hello warn")
        g.log.error("hello error")
        g.log.critical("hello fatal")
        got = [listener.recv(4096) for _ in range(5)]
    finally:
        g.configure_logging(g.Options().fill_defaults())
        listener.close()
    parsed = [LOCAL_RE.match(line.rstrip(b"\n")) for line in got]
    assert all(parsed), got
    assert [(m.group(1), m.group(4)) for m in parsed] == [
        (b"29", b"hello info"), (b"31", b"hello debug"), (b"28", b"hello warn"),
        (b"27", b"hello error"), (b"26", b"hello fatal")]
    assert {m.group(2) for m in parsed} == {b"gnatsd.py"}
    assert {int(m.group(3)) for m in parsed} == {os.getpid()}


def test_local_syslog_without_a_socket_fails_as_go_does(monkeypatch, tmp_path):
    monkeypatch.setattr(g, "_LOCAL_SYSLOG_PATHS", (str(tmp_path / "missing"),))
    with pytest.raises(OSError, match="Unix syslog delivery error"):
        g.configure_logging(g.Options(syslog=True).fill_defaults())
    g.configure_logging(g.Options().fill_defaults())


def test_syslog_and_size_limit_config_keys_are_read(tmp_path):
    opts = g.options_from_config(write_conf(tmp_path, "syslog: true\nremote_syslog: "
                                            '"udp://h:514"\nlogfile_size_limit: 1KB\n'))
    assert (opts.syslog, opts.remote_syslog, opts.log_size_limit) == (True, "udp://h:514", 1024)
    assert opts.warnings == []
    opts = g.options_from_config(write_conf(tmp_path, "log_size_limit: 100\n", "b.conf"))
    assert opts.log_size_limit == 100


# -- log file size limit (the other half of "where the log goes") --

# A backup's name: the log file's, then Go's "2006.01.02.15.04.05.999999999".
BACKUP_RE = re.compile(r"^n\.log\.\d{4}\.\d\d\.\d\d\.\d\d\.\d\d\.\d\d(\.\d{1,9})?$")


@pytest.mark.parametrize("how", ["flag", "config"])
def test_log_size_limit_rotates_to_a_timestamped_backup(kind, tmp_path, how):
    log_path = tmp_path / "n.log"
    if how == "flag":
        args = ("-l", str(log_path), "--log_size_limit", "300")
    else:
        args = ("-c", write_conf(tmp_path, 'logfile: "%s"\nlogfile_size_limit: 300\n' % log_path))
    srv = start_server(kind, *args)
    try:
        deadline = time.monotonic() + 10
        while b"Server is ready" not in _all_logs(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        srv.stop()
    backups = sorted(n for n in os.listdir(tmp_path) if n.startswith("n.log."))
    assert backups and all(BACKUP_RE.match(n) for n in backups), backups
    for name in backups:
        assert os.path.getsize(tmp_path / name) > 300  # rotated once past the limit
    current = log_path.read_text()
    assert re.search(r'\[INF\] Rotated log, backup saved as "%s"'
                     % re.escape(str(tmp_path / backups[-1])), current), current
    assert b"Server is ready" in _all_logs(tmp_path)


def _all_logs(tmp_path) -> bytes:
    out = b""
    for name in os.listdir(tmp_path):
        if name.startswith("n.log"):
            out += (tmp_path / name).read_bytes()
    return out


def test_without_a_limit_the_log_file_is_never_rotated(tmp_path):
    srv = start_server("gnatsd", "-l", str(tmp_path / "n.log"))
    try:
        deadline = time.monotonic() + 10
        while b"Server is ready" not in _all_logs(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        srv.stop()
    assert os.listdir(tmp_path) == ["n.log"]
