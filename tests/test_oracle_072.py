"""gnatsd 0.7.2 as an oracle (issue 21): its flags, its default config, its
INFO and the -ERR texts it shares with 2.x, run against the real 0.7.2
binary (../shared/oracles/gnatsd-0.7.2) and gnatsd.py alike.

Where gnatsd.py answers as nats-server 2.x instead, on purpose, the test
says so (and the README's "Choices against 0.7.2" lists it).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import (GNATSD, ROOT, RawConn, ServerProcess, free_port, t_expect,
                      t_read_until_closed, write_conf)

GNATSD_072 = os.path.join(os.path.dirname(ROOT), "shared", "oracles", "gnatsd-0.7.2")
CERTS = os.path.join(ROOT, "tests", "certs")

pytestmark = [
    pytest.mark.skipif(not os.access(GNATSD_072, os.X_OK),
                       reason="gnatsd 0.7.2 is not at ../shared/oracles/gnatsd-0.7.2"),
    pytest.mark.timeout(60),
]

KINDS = ["0.7.2", "gnatsd"]


def argv_of(kind: str, *args) -> list:
    return ([GNATSD_072] if kind == "0.7.2" else [sys.executable, GNATSD]) + list(args)


def start(kind: str, *args, port: int | None = None) -> ServerProcess:
    """A server on 127.0.0.1 and a port picked here (0.7.2 cannot pick
    one), ready once a client gets its INFO."""
    port = port or free_port()
    srv = ServerProcess(argv_of(kind, "-a", "127.0.0.1", "-p", str(port), *args),
                        kind).start(wait_ready=False)
    srv.host, srv.port = "127.0.0.1", port
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((srv.host, port), timeout=1).close()
            return srv
        except OSError:
            if srv.proc.poll() is not None or time.monotonic() > deadline:
                srv.kill()
                raise AssertionError("%s did not start: %s" % (kind, srv.log_text()[-1500:]))
            time.sleep(0.02)


def info_of(srv) -> dict:
    c = RawConn(srv.host, srv.port)
    try:
        return c.read_info()
    finally:
        c.close()


def serves(srv, connect: bytes = b"{}") -> bool:
    c = RawConn(srv.host, srv.port)
    try:
        c.read_info()
        c.send(b"CONNECT %s\r\nPING\r\n" % connect)
        t_expect(c, rb"(\+OK\r\n)?PONG\r\n")
        return True
    finally:
        c.close()


# Every flag gnatsd 0.7.2 defines (gnatsd.go), with a value, and what both
# servers must then show: they serve clients, and INFO says `info` if given.
def _flags(tmp: str) -> list:
    cert, key, ca = (os.path.join(CERTS, f) for f in ("server-cert.pem", "server-key.pem",
                                                      "ca.pem"))
    tls = ["--tlscert", cert, "--tlskey", key]
    return [
        (["-D"], {}), (["-debug"], {}), (["-V"], {}), (["-trace"], {}), (["-DV"], {}),
        (["-T=false"], {}), (["-logtime=false"], {}),
        (["-net", "127.0.0.1"], {}), (["-addr", "127.0.0.1"], {}),
        (["--user", "u", "--pass", "p"], {"auth_required": True}),
        (["--auth", "tok"], {"auth_required": True}),
        (["-P", os.path.join(tmp, "a.pid")], {}), (["-pid", os.path.join(tmp, "b.pid")], {}),
        (["-l", os.path.join(tmp, "a.log")], {}), (["-log", os.path.join(tmp, "b.log")], {}),
        (["-r", "udp://127.0.0.1:%d" % free_port()], {}),
        (["-remote_syslog", "udp://127.0.0.1:%d" % free_port()], {}),
        (["-routes", "nats://127.0.0.1:%d" % free_port()], {}),
        (["-cluster_listen", "nats://127.0.0.1:%d" % free_port()], {}),
        (["--tls"] + tls, {"tls_required": True}),
        (["--tlsverify", "--tlscacert", ca] + tls, {"tls_required": True, "tls_verify": True}),
        (["-bs", "4096"], {}),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_072_flag_starts_a_server_with_the_same_info(kind, tmp_path):
    for args, info in _flags(str(tmp_path)):
        srv = start(kind, *args)
        try:
            got = info_of(srv)
            for field, value in info.items():
                assert got.get(field) == value, (kind, args, field, got)
        finally:
            srv.stop()


@pytest.mark.parametrize("flag", ["-m", "-http_port"])
@pytest.mark.parametrize("kind", KINDS)
def test_monitor_flag_serves_varz(kind, flag):
    mon = free_port()
    srv = start(kind, flag, str(mon))
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/varz" % mon, timeout=2) as r:
                    varz = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert varz["port"] == srv.port and varz["max_payload"] == 1024 * 1024
    finally:
        srv.stop()


@pytest.mark.parametrize("args", [["-v"], ["-version"], ["--help_tls"]])
def test_informational_flags_exit_zero(args):
    for kind in KINDS:
        r = subprocess.run(argv_of(kind, *args), capture_output=True, text=True, timeout=15)
        assert r.returncode == 0, (kind, r.stderr)
        assert (r.stdout + r.stderr).strip()


def test_pid_and_log_files_are_written(tmp_path):
    for kind in KINDS:
        pid, log = tmp_path / (kind + ".pid"), tmp_path / (kind + ".log")
        srv = start(kind, "-P", str(pid), "-l", str(log))
        try:
            assert pid.read_text().strip() == str(srv.pid)
            deadline = time.monotonic() + 5
            while "ready" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
        finally:
            srv.stop()


def test_default_conf_loads_with_the_same_client_info(tmp_path):
    """conf/default.conf (the original image's): both serve with it; the
    fields 0.7.2's INFO has that 2.x still sends agree."""
    from test_route_072 import default_conf_on
    infos = {}
    for kind in KINDS:
        conf = default_conf_on(tmp_path, kind + ".conf", free_port(), free_port(), free_port())
        srv = start(kind, "-c", conf)
        try:
            infos[kind] = info_of(srv)
            assert serves(srv)
        finally:
            srv.stop()
    old, new = infos["0.7.2"], infos["gnatsd"]
    for field in ("host", "max_payload"):
        assert old[field] == new[field], field
    assert old["auth_required"] is False and "auth_required" not in new   # 2.x omits false


def test_info_fields_of_072(tmp_path):
    """Every field of 0.7.2's client INFO, in gnatsd.py's: the same JSON
    type, or left out as nats-server 2.x leaves it out (a false flag;
    `ssl_required`, which 2.x dropped for `tls_required`)."""
    old = info_of_started("0.7.2")
    new = info_of_started("gnatsd")
    omitted_by_2x = {"auth_required", "ssl_required", "tls_required", "tls_verify"}
    for field, value in old.items():
        if field in new:
            assert type(new[field]) is type(value), field
        else:
            assert field in omitted_by_2x and value is False, field


def info_of_started(kind: str) -> dict:
    srv = start(kind)
    try:
        return info_of(srv)
    finally:
        srv.stop()


# -ERR texts 0.7.2 and 2.x share: (config, CONNECT, what the client sends, -ERR).
SHARED_ERRORS = [
    ([], b"{}", b"FOO\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"),
    (["--user", "u", "--pass", "p"], b'{"user":"u","pass":"x"}', b"PING\r\n",
     b"-ERR 'Authorization Violation'\r\n"),
]


@pytest.mark.parametrize("args, connect, send, err", SHARED_ERRORS,
                         ids=["unknown-op", "auth-violation"])
def test_shared_err_texts(args, connect, send, err):
    for kind in KINDS:
        srv = start(kind, *args)
        try:
            c = RawConn(srv.host, srv.port)
            c.read_info()
            c.send(b"CONNECT %s\r\n" % connect + send)
            got = t_read_until_closed(c, timeout=5)
            assert got.replace(b"+OK\r\n", b"") .startswith(err), (kind, got)
        finally:
            srv.stop()


# Every key gnatsd 0.7.2's config reader takes (server/opts.go), in its own
# syntax (its lexer wants IPs quoted and maps one key per line).
CONF_072 = """
port: %(port)d
net: "127.0.0.1"
debug: false
trace: false
logtime: true
authorization {
  user: u
  password: p
  timeout: 1
}
monitor_port: %(monitor)d
logfile: "%(dir)s/server.log"
syslog: false
pidfile: "%(dir)s/server.pid"
prof_port: 0
max_control_line: 2048
max_payload: 65536
max_pending_size: 10000000
max_conn: 100
cluster {
  host: "127.0.0.1"
  port: %(route)d
  authorization {
    user: r
    password: s
    timeout: 1
  }
  routes = []
}
"""


@pytest.mark.parametrize("kind", KINDS)
def test_every_072_config_key_loads_with_the_same_values(kind, tmp_path):
    port = free_port()
    conf = write_conf(tmp_path, CONF_072 % {"port": port, "monitor": free_port(),
                                            "route": free_port(), "dir": tmp_path})
    srv = start(kind, "-c", conf, port=port)
    try:
        info = info_of(srv)
        assert (info["max_payload"], info["auth_required"]) == (65536, True)
        assert serves(srv, b'{"user":"u","pass":"p","verbose":false}')
        assert (tmp_path / "server.pid").read_text().strip() == str(srv.pid)
    finally:
        srv.stop()


def test_a_bad_value_is_refused_by_both(tmp_path):
    conf = write_conf(tmp_path, 'max_payload: "lots"\n')
    for kind in KINDS:
        r = subprocess.run(argv_of(kind, "-c", conf), capture_output=True, text=True,
                           timeout=15)
        assert r.returncode != 0, (kind, r.stderr)


def test_an_unknown_key_072_let_pass_is_refused_as_by_2x(tmp_path):
    """A choice against 0.7.2 (README): it starts with a key it does not
    know; gnatsd.py refuses it, naming file and line, as nats-server 2.x
    does.  (An unterminated block hangs 0.7.2's lexer; gnatsd.py refuses
    that too.)"""
    conf = write_conf(tmp_path, "bogus_key: 1\n")
    old = start("0.7.2", "-c", conf)
    try:
        assert serves(old)
    finally:
        old.stop()
    r = subprocess.run(argv_of("gnatsd", "-c", conf), capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 1 and r.stderr.startswith("nats-server: %s:" % conf), r.stderr
