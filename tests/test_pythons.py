"""gnatsd.py runs on every supported CPython, 3.8 to 3.13.

For each interpreter found (pyenv's ~/.pyenv/versions/3.X.*/bin/python3, or
`python3.X` on PATH) the real file is started under it and a short raw-socket
transcript checks the core protocol: INFO, CONNECT, SUB/PUB/MSG with exact
bytes, HPUB/HMSG, wildcards, queue groups, UNSUB, PING/PONG and the error for
an unknown op.  A missing interpreter is skipped with its reason, except in CI
(CI=true), where the two ends of the range, 3.8 and 3.13, must be present.

The same transcript is also run against the Go nats-server, when installed,
so the expectations here are the real protocol's and not our own guesses.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import GO_SERVERS, RawConn, start_gnatsd, start_go

VERSIONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
REQUIRED_IN_CI = {"3.8", "3.13"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PYENV_ROOT = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def _reported_version(path: str) -> str | None:
    """"3.X" as the interpreter at `path` reports it, or None if it won't run."""
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip() if out.returncode == 0 else None


def find_python(version: str) -> str | None:
    """A working CPython `version` ("3.X"): newest pyenv build first, then PATH.

    pyenv shims on PATH may refuse a version that is not selected, so every
    candidate is run once and must report the version asked for.
    """
    builds = glob.glob(os.path.join(PYENV_ROOT, "versions", version + ".*", "bin", "python3"))
    builds.sort(key=lambda p: [int(x) if x.isdigit() else -1 for x in
                               re.split(r"[.]", p.split(os.sep)[-3])], reverse=True)
    candidates = builds + [shutil.which("python" + version) or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK) and _reported_version(path) == version:
            return path
    return None


PYTHONS = {v: find_python(v) for v in VERSIONS}


# -- the transcript -----------------------------------------------------------

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
INFO_KEYS = {"server_id", "version", "host", "port", "max_payload"}
MSG_RE = re.compile(rb"MSG (\S+) (\S+) (?:(\S+) )?(\d+)\r\n")


def _connect(server) -> tuple[RawConn, dict]:
    conn = RawConn(server.host, server.port)
    info = conn.read_info()
    conn.send(CONNECT)
    conn.ping_pong()
    return conn, info


def _read_msgs(conn: RawConn, count: int) -> list:
    """The next `count` MSGs as (subject, sid, reply, payload) tuples."""
    out = []
    for _ in range(count):
        m = conn.expect(MSG_RE)
        size = int(m.group(4))
        payload = conn.expect(re.compile(rb"(.{%d})\r\n" % size, re.S)).group(1)
        out.append((m.group(1), m.group(2), m.group(3), payload))
    return out


def smoke(server):
    """The protocol transcript every interpreter (and the Go server) must pass."""
    sub, info = _connect(server)
    pub, _ = _connect(server)
    try:
        # INFO: the keys clients rely on, and headers advertised for HPUB.
        missing = INFO_KEYS - set(info)
        assert not missing, "INFO lacks %s: %s" % (sorted(missing), json.dumps(info))
        assert info["port"] == server.port
        assert info["max_payload"] > 0
        assert not info.get("auth_required"), "no auth configured, yet: %r" % info
        assert info.get("headers") is True, "INFO must advertise headers: %r" % info

        # SUB then PUB from another connection: exact MSG bytes, with and
        # without a reply subject, and an empty payload.
        sub.send(b"SUB foo 1\r\n")
        sub.ping_pong()
        pub.send(b"PUB foo 5\r\nhello\r\nPUB foo reply.to 2\r\nhi\r\nPUB foo 0\r\n\r\n")
        pub.ping_pong()
        sub.expect_exact(b"MSG foo 1 5\r\nhello\r\n")
        sub.expect_exact(b"MSG foo 1 reply.to 2\r\nhi\r\n")
        sub.expect_exact(b"MSG foo 1 0\r\n\r\n")

        # HPUB/HMSG: header block and total sizes passed through unchanged.
        headers = b"NATS/1.0\r\nX-Smoke: yes\r\n\r\n"
        payload = b"body"
        hpub = b"HPUB foo %d %d\r\n%s%s\r\n" % (
            len(headers), len(headers) + len(payload), headers, payload)
        pub.send(hpub)
        pub.ping_pong()
        sub.expect_exact(b"HMSG foo 1 %d %d\r\n%s%s\r\n" % (
            len(headers), len(headers) + len(payload), headers, payload))

        # Wildcards: `*` matches one token, `>` one or more.
        sub.send(b"SUB w.* 2\r\nSUB w.> 3\r\n")
        sub.ping_pong()
        pub.send(b"PUB w.a 1\r\nx\r\nPUB w.a.b 1\r\ny\r\nPUB w 1\r\nz\r\n")
        pub.ping_pong()
        got = sorted(_read_msgs(sub, 3))
        assert got == [(b"w.a", b"2", None, b"x"), (b"w.a", b"3", None, b"x"),
                       (b"w.a.b", b"3", None, b"y")]
        sub.ping_pong()  # and nothing more: `w` matched neither

        # Queue group: each message goes to exactly one member.
        sub.send(b"SUB q.work workers 4\r\nSUB q.work workers 5\r\n")
        sub.ping_pong()
        pub.send(b"".join(b"PUB q.work 2\r\n%02d\r\n" % i for i in range(20)))
        pub.ping_pong()
        got = _read_msgs(sub, 20)
        assert sorted(m[3] for m in got) == [b"%02d" % i for i in range(20)]
        assert {m[1] for m in got} <= {b"4", b"5"}
        sub.ping_pong()

        # UNSUB: nothing more for sid 1; UNSUB with max: one more then none.
        sub.send(b"UNSUB 1\r\nSUB once 6\r\nUNSUB 6 1\r\n")
        sub.ping_pong()
        pub.send(b"PUB foo 3\r\nno!\r\nPUB once 1\r\n1\r\nPUB once 1\r\n2\r\n")
        pub.ping_pong()
        sub.expect_exact(b"MSG once 6 1\r\n1\r\n")
        sub.send(b"PING\r\n")
        sub.expect_exact(b"PONG\r\n")

        # An unknown op: the error text, then the connection is closed.
        pub.send(b"FOO bar\r\n")
        pub.expect(rb"-ERR 'Unknown Protocol Operation'\r\n")
        pub.read_until_closed()
    finally:
        sub.close()
        pub.close()


# -- tests --------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=["py" + v for v in VERSIONS])
def test_protocol_smoke_under_python(version):
    python = PYTHONS[version]
    if python is None:
        reason = "CPython %s not found (pyenv %s/versions/%s.*, or python%s on PATH)" % (
            version, PYENV_ROOT, version, version)
        if IN_CI and version in REQUIRED_IN_CI:
            pytest.fail(reason + "; CI needs 3.8 and 3.13")
        pytest.skip(reason)
    server = start_gnatsd(python=python)
    try:
        smoke(server)
    except AssertionError as exc:
        raise AssertionError("under %s (%s): %s\n--- server log ---\n%s" % (
            version, python, exc, server.log_text()[-3000:])) from None
    finally:
        server.stop()


@pytest.mark.parametrize("version", sorted(GO_SERVERS) or ["none"])
def test_protocol_smoke_transcript_holds_for_go_server(version):
    """Keeps the transcript honest: the Go server passes it too."""
    if version == "none":
        pytest.skip("Go nats-server is not installed")
    server = start_go(version=version)
    try:
        smoke(server)
    finally:
        server.stop()
