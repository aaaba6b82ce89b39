"""Config reload on SIGHUP (and `--signal reload=PID`), as nats-server 2.x does it.

Each case runs against gnatsd.py and nats-server 2.9 and 2.15 (`kind`).
What Go does, as these tests pin it down:

* Every reload, even of an unchanged file, logs
  `[INF] Reloaded: authorization users` and `[INF] Reloaded: accounts`,
  then one line per changed option (`Reloaded: max_payload = 2048`,
  `Reloaded: debug = true`, `Reloaded: authorization password`, ...), then
  `[INF] Reloaded server configuration` (2.15 adds ` (sha256:<hex>)`, a
  digest of the parsed config, not of the file bytes).
  2.15 first logs `[INF] Trapped "hangup" signal` (2.9 at [DBG]); not asserted.
* A reload that fails changes nothing and logs one line,
  `[ERR] Failed to reload server configuration: <why>`: a parse error
  (`Parse error on line 4: 'Unexpected EOF processing map.'`), an option
  error (`FILE:3:1: unknown field "foo"`), a check
  (`max_payload (104857600) cannot be higher than max_pending (67108864)`),
  or an option that cannot change while running
  (`config reload not supported for Port: old=P, new=Q`, `... for Host:
  old=127.0.0.1, new=127.0.0.2`, `... for ServerName: old=, new=foo`).
  Command-line flags win over the file on reload too, so the port and host
  cases start from `listen:` in the file, without -a/-p.
* A client whose credentials no longer pass (a users-list password changed,
  a token changed, auth turned on) gets `-ERR 'Authorization Violation'\\r\\n`
  and is closed; the log has `[ERR] ... authentication error`.  (Not
  copied, so not tested: going from a users list to a token or a single
  user, Go keeps the old users map, and the old users' passwords keep
  working for live and even new connections.)
* A client of a single `authorization { user, password }` is closed with no
  bytes at all ("Client Closed") on every reload, even of an unchanged file:
  Go's reloadAuthorization closes clients whose user is not in `s.users`
  (clientHasMovedToDifferentAccount), and a single user never is.  So is a
  client whose user a reload removed from a users list.
* New permissions apply to live connections at once: a PUB now denied gets
  `-ERR 'Permissions Violation for Publish to "x"'`; each subscription now
  denied is removed, the client gets `-ERR 'Permissions Violation for
  Subscription to "bar" (sid "2")'` (2.15 adds ` using queue "qg"` before
  the sid for a queue sub, 2.9 does not) and the log
  `[INF] Removed sub "bar" (sid "2") for User "a" - not authorized`.
* A new max_payload is in the INFO of new connections and enforced on
  existing ones at once; existing ones get no INFO about it.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time

import nats
import pytest

from conftest import (GNATSD, GO_SERVERS, SERVER_PYTHON, RawConn, bcrypt_hash, free_port,
                      t_expect,
                      t_expect_exact, t_ping_pong, t_read_until_closed, write_conf)

AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"

# Where a reload ends, whichever way it went (gnatsd.py without reload: the warning).
RELOAD_END_RE = re.compile(rb"\[INF\] Reloaded server configuration[^\n]*\n|"
                           rb"\[ERR\] Failed to reload server configuration: [^\n]*\n|"
                           rb'Trapped "hangup" signal: not supported yet[^\n]*\n')
RELOADED_RE = re.compile(rb"\[INF\] Reloaded server configuration(?: \(sha256:[0-9a-f]{64}\))?\r?\n")
FAILED_RE = re.compile(rb"\[ERR\] Failed to reload server configuration: ([^\r\n]*)")


def reload(srv, conf: str | None = None, text: str | None = None, timeout: float = 10) -> str:
    """Write `text` to `conf` (if given), send SIGHUP, wait for the reload to
    end; return the log lines it wrote, without the "[pid] date time" prefixes."""
    if text is not None:
        with open(conf, "w") as f:
            f.write(text)
    start = len(srv.log)
    srv.signal(signal.SIGHUP)
    end = srv.wait_for_log(RELOAD_END_RE, timeout, start=start).end()
    return strip_prefixes(bytes(srv.log[start:end]))


def strip_prefixes(log: bytes) -> str:
    return re.sub(r"(?m)^\[\d+\] (?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ )?", "",
                  log.decode(errors="replace"))


def assert_reloaded(log: str, *changes: str):
    """The reload succeeded and logged exactly these `Reloaded: X` changes
    (besides the two every reload logs)."""
    assert RELOADED_RE.search(log.encode()), log
    logged = re.findall(r"(?m)^\[INF\] Reloaded: (.*)$", log)
    assert sorted(logged) == sorted(["authorization users", "accounts", *changes]), log


def assert_failed(log: str, why) -> str:
    m = FAILED_RE.search(log.encode())
    assert m, "expected a failed reload:\n" + log
    assert not RELOADED_RE.search(log.encode()) and "Reloaded:" not in log, log
    reason = m.group(1).decode()
    if isinstance(why, str):
        assert reason == why
    else:
        assert why.search(reason), reason
    return reason


def connect(srv, user: str | None = None, password: str | None = None,
            token: str | None = None, extra: bytes = b"") -> RawConn:
    """A raw client that has done CONNECT (+extra) and a PING/PONG round trip."""
    fields = ['"verbose":false']
    if user is not None:
        fields.append('"user":"%s","pass":"%s"' % (user, password))
    if token is not None:
        fields.append('"auth_token":"%s"' % token)
    c = RawConn(srv.host, srv.port)
    c.info = c.read_info()
    c.send(b"CONNECT {%s}\r\n" % ",".join(fields).encode() + extra + b"PING\r\n")
    t_expect_exact(c, b"PONG\r\n")
    t_ping_pong(c)  # drops 2.12+'s connect_info INFO too
    return c


def refused(srv, **creds) -> bytes:
    c = RawConn(srv.host, srv.port)
    c.read_info()
    fields = '"verbose":false,"user":"%(user)s","pass":"%(password)s"' % creds
    c.send(b"CONNECT {%s}\r\nPING\r\n" % fields.encode())
    try:
        return t_read_until_closed(c, 5)
    finally:
        c.close()


def signal_command(kind: str, pid: int) -> subprocess.CompletedProcess:
    """`--signal reload=PID` with the kind's own command line."""
    argv = [SERVER_PYTHON, GNATSD] if kind == "gnatsd" else [GO_SERVERS[kind[2:]]]
    return subprocess.run(argv + ["--signal", "reload=%d" % pid], capture_output=True,
                          text=True, timeout=15, stdin=subprocess.DEVNULL)


SINGLE_USER = "authorization {\n  user: a\n  password: %s\n}\n"
USERS = ("authorization {\n  users = [\n    {user: a, password: pa}\n"
         "    {user: b, password: %s}\n  ]\n}\n")


# -- what a reload logs ----------------------------------------------------------


def test_an_unchanged_file_reloads_auth_and_accounts_only(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 1024\n")
    srv = start("-c", conf)
    c = connect(srv)
    assert_reloaded(reload(srv))
    t_ping_pong(c)  # an unchanged reload leaves a client without auth alone


def test_signal_reload_pid_reloads(kind, start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 1024\n")
    srv = start("-c", conf)
    with open(conf, "w") as f:
        f.write("max_payload: 2048\n")
    begin = len(srv.log)
    r = signal_command(kind, srv.pid)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    srv.wait_for_log(RELOAD_END_RE, 10, start=begin)
    assert_reloaded(strip_prefixes(bytes(srv.log[begin:])), "max_payload = 2048")


def test_debug_turned_on_by_reload_logs_dbg_lines(start, tmp_path):
    conf = write_conf(tmp_path, "debug: false\n")
    srv = start("-c", conf)
    connect(srv).close()
    assert "[DBG]" not in srv.log_text()
    assert_reloaded(reload(srv, conf, "debug: true\n"), "debug = true")
    begin = len(srv.log)
    connect(srv)
    srv.wait_for_log(rb"\[DBG\] 127\.0\.0\.1:\d+ - cid:\d+ - Client connection created",
                     start=begin)


def test_trace_and_logtime_changes_are_logged(start, tmp_path):
    conf = write_conf(tmp_path, "debug: false\n")
    srv = start("-c", conf)
    log = reload(srv, conf, "debug: false\ntrace: true\nlogtime: false\n")
    assert_reloaded(log, "trace = true", "logtime = false")


# -- max_payload ---------------------------------------------------------------------


def test_max_payload_reaches_new_infos_and_no_info_is_pushed(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 1024\n")
    srv = start("-c", conf)
    old = connect(srv, extra=b"")
    assert old.info["max_payload"] == 1024
    assert_reloaded(reload(srv, conf, "max_payload: 2048\n"), "max_payload = 2048")
    assert connect(srv).info["max_payload"] == 2048
    # The old connection gets nothing but PONG (an early PING is allowed) ...
    old.send(b"PING\r\n")
    before_pong = old.expect(rb"(.*?)PONG\r\n", timeout=5).group(1)
    assert before_pong in (b"", b"PING\r\n"), before_pong
    # ... and may publish up to the new limit at once.
    old.send(b"PUB big 1500\r\n" + b"x" * 1500 + b"\r\n")
    t_ping_pong(old)


def test_lower_max_payload_applies_to_existing_connections(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 2048\n")
    srv = start("-c", conf)
    old = connect(srv)
    assert_reloaded(reload(srv, conf, "max_payload: 1024\n"), "max_payload = 1024")
    old.send(b"PUB big 1500\r\n" + b"x" * 1500 + b"\r\n")
    assert t_read_until_closed(old) == b"-ERR 'Maximum Payload Violation'\r\n"


# -- credentials -----------------------------------------------------------------------


def test_single_user_password_change_closes_the_client_silently(start, tmp_path):
    conf = write_conf(tmp_path, SINGLE_USER % "pa")
    srv = start("-c", conf)
    c = connect(srv, "a", "pa")
    assert_reloaded(reload(srv, conf, SINGLE_USER % "NEW"), "authorization password")
    assert t_read_until_closed(c) == b""          # no -ERR: "Client Closed"
    assert refused(srv, user="a", password="pa") == AUTH_VIOLATION
    connect(srv, "a", "NEW")


def test_single_user_clients_are_closed_even_by_an_unchanged_reload(start, tmp_path):
    """Go closes every single-user client on each reload, even when its
    password still passes; gnatsd.py keeps such a client (a deliberate
    difference: the client did nothing wrong)."""
    conf = write_conf(tmp_path, SINGLE_USER % "pa")
    srv = start("-c", conf)
    c = connect(srv, "a", "pa")
    assert_reloaded(reload(srv))
    if srv.kind == "gnatsd.py":
        t_ping_pong(c)
    else:
        assert t_read_until_closed(c) == b""
    connect(srv, "a", "pa")


def test_users_list_password_change_disconnects_only_that_user(start, tmp_path):
    conf = write_conf(tmp_path, USERS % "pb")
    srv = start("-c", conf)
    a = connect(srv, "a", "pa")
    b = connect(srv, "b", "pb")
    port_b = b.sock.getsockname()[1]
    log = reload(srv, conf, USERS % "NEW")
    assert_reloaded(log)
    assert re.search(r'\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - .*authentication error - User "b"'
                     % port_b, log), log
    assert t_read_until_closed(b) == AUTH_VIOLATION
    t_ping_pong(a)
    assert refused(srv, user="b", password="pb") == AUTH_VIOLATION
    connect(srv, "b", "NEW")


def test_bcrypt_users_are_checked_again_on_reload(start, tmp_path):
    """Each client's password is checked against the reloaded bcrypt hash
    (in gnatsd.py off the loop, the answer already had reused when the hash
    is unchanged): a changed hash closes its user's client, the other stays."""
    old, new = bcrypt_hash("pb", 4), bcrypt_hash("NEW", 4)
    if old is None:
        pytest.skip("no bcrypt here to make a hash with")
    text = USERS.replace("password: pa", 'password: "%s"' % bcrypt_hash("pa", 4))
    conf = write_conf(tmp_path, text % ('"%s"' % old))
    srv = start("-c", conf)
    a = connect(srv, "a", "pa")
    b = connect(srv, "b", "pb")
    port_b = b.sock.getsockname()[1]
    assert_reloaded(reload(srv, conf, text % ('"%s"' % new)))
    assert t_read_until_closed(b) == AUTH_VIOLATION
    srv.wait_for_log(rb'\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - .*authentication error - User "b"'
                     % port_b)
    t_ping_pong(a)
    connect(srv, "b", "NEW")
    assert refused(srv, user="b", password="pb") == AUTH_VIOLATION


def test_a_user_dropped_from_the_users_list_is_closed_silently(start, tmp_path):
    """Go's clientHasMovedToDifferentAccount: a client whose user is gone is
    closed ("Client Closed") without an -ERR; the others stay."""
    conf = write_conf(tmp_path, USERS % "pb")
    srv = start("-c", conf)
    a = connect(srv, "a", "pa")
    b = connect(srv, "b", "pb")
    assert_reloaded(reload(srv, conf, USERS.replace("    {user: b, password: %s}\n", "")))
    assert t_read_until_closed(b) == b""
    t_ping_pong(a)
    assert refused(srv, user="b", password="pb") == AUTH_VIOLATION


def test_unchanged_reload_keeps_users_list_clients(start, tmp_path):
    conf = write_conf(tmp_path, USERS % "pb")
    srv = start("-c", conf)
    a = connect(srv, "a", "pa")
    assert_reloaded(reload(srv))
    t_ping_pong(a)


def test_token_change_disconnects_with_authorization_violation(start, tmp_path):
    conf = write_conf(tmp_path, "authorization {\n  token: t1\n}\n")
    srv = start("-c", conf)
    c = connect(srv, token="t1")
    assert_reloaded(reload(srv))          # unchanged: the token client stays
    t_ping_pong(c)
    assert_reloaded(reload(srv, conf, "authorization {\n  token: t2\n}\n"),
                    "authorization token")
    assert t_read_until_closed(c) == AUTH_VIOLATION
    connect(srv, token="t2")


@pytest.mark.parametrize("auth, changes", [
    ("authorization {\n  user: a\n  password: pa\n}\n",
     ["authorization username", "authorization password"]),
    ("authorization {\n  users = [ {user: a, password: pa} ]\n}\n", []),
    ("authorization {\n  token: t1\n}\n", ["authorization token"]),
], ids=["user", "users", "token"])
def test_turning_auth_on_disconnects_clients_without_credentials(start, tmp_path, auth,
                                                                 changes):
    conf = write_conf(tmp_path, "max_payload: 1024\n")
    srv = start("-c", conf)
    c = connect(srv)
    log = reload(srv, conf, "max_payload: 1024\n" + auth)
    assert_reloaded(log, *changes)
    assert re.search(r"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - .*authentication error"
                     % c.sock.getsockname()[1], log), log
    assert t_read_until_closed(c) == AUTH_VIOLATION
    assert refused(srv, user="x", password="y") == AUTH_VIOLATION


# -- permissions -------------------------------------------------------------------------

PERMS = """authorization {
  users = [
    {user: p, password: pp}
    {user: a, password: pa, permissions: {publish: %s, subscribe: %s}}
  ]
}
"""
WIDE = PERMS % ('["x", "y"]', '["foo", "bar", "q.>"]')
NARROW = PERMS % ('["y"]', '["foo"]')


def test_new_permissions_apply_to_a_live_connection(kind, start, tmp_path):
    conf = write_conf(tmp_path, WIDE)
    srv = start("-c", conf)
    a = connect(srv, "a", "pa", extra=b"SUB foo 1\r\nSUB bar 2\r\nSUB q.* qg 3\r\n"
                                      b"PUB x 1\r\nX\r\n")
    log = reload(srv, conf, NARROW)
    assert_reloaded(log)
    queue = "" if kind == "go2.9" else ' using queue "qg"'
    assert sorted(re.findall(r"(?m)^\[INF\] (Removed sub .*)$", log)) == sorted([
        'Removed sub "bar" (sid "2") for User "a" - not authorized',
        'Removed sub "q.*"%s (sid "3") for User "a" - not authorized' % queue])
    errs = [t_expect(a, rb"-ERR [^\r]*\r\n").group() for _ in range(2)]
    assert sorted(errs) == sorted([
        b"-ERR 'Permissions Violation for Subscription to \"bar\" (sid \"2\")'\r\n",
        b"-ERR 'Permissions Violation for Subscription to \"q.*\"%s (sid \"3\")'\r\n"
        % queue.encode()])
    # Publishing: x is now denied, y still allowed; the connection stays.
    a.send(b"PUB x 1\r\nX\r\nPUB y 1\r\nY\r\n")
    t_expect_exact(a, b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n")
    t_ping_pong(a)
    # The removed subscriptions get nothing; foo still delivers.
    p = connect(srv, "p", "pp")
    p.send(b"PUB bar 1\r\nB\r\nPUB q.1 1\r\nQ\r\nPUB foo 1\r\nF\r\n")
    t_ping_pong(p)
    t_expect_exact(a, b"MSG foo 1 1\r\nF\r\n")
    t_ping_pong(a)


# -- failed reloads change nothing ----------------------------------------------------------


def test_permissions_added_to_a_user_without_any_remove_its_inbox(kind, start, tmp_path):
    """nats.js's "mreq - lost sub permission": a user with no permissions
    has a request's inbox subscribed when a reload denies `_INBOX.>`: the
    inbox is removed and the client told, so replies stop."""
    users = 'authorization { users: [{user: a, password: pa%s}] }\n'
    conf = write_conf(tmp_path, users % "")
    srv = start("-c", conf)
    a = connect(srv, "a", "pa", extra=b"SUB q 1\r\nSUB _INBOX.abc 2\r\n")
    a.send(b"PUB q _INBOX.abc 0\r\n\r\n")
    t_expect_exact(a, b"MSG q 1 _INBOX.abc 0\r\n\r\n")
    log = reload(srv, conf, users % ', permissions: {subscribe: {deny: "_INBOX.>"}}')
    assert_reloaded(log)
    t_expect_exact(a, b"-ERR 'Permissions Violation for Subscription to \"_INBOX.abc\" (sid \"2\")'"
                      b"\r\n")
    a.send(b"PUB _INBOX.abc 1\r\nx\r\n")
    t_ping_pong(a)
    assert b"MSG" not in bytes(a.buf)


def test_bad_syntax_fails_and_keeps_the_old_credentials(start, tmp_path):
    conf = write_conf(tmp_path, SINGLE_USER % "pa")
    srv = start("-c", conf)
    c = connect(srv, "a", "pa")
    broken = "authorization {\n  user: a\n  password: NEW\n"   # no closing brace
    reason = assert_failed(reload(srv, conf, broken),
                           re.compile(r"^(?:Parse error on line 4: |%s:4:\d+: )"
                                      % re.escape(conf)))
    if not reason.startswith(conf):
        assert reason == "Parse error on line 4: 'Unexpected EOF processing map.'"
    t_ping_pong(c)                        # a failed reload closes nobody
    connect(srv, "a", "pa")               # and the old password still works
    assert refused(srv, user="a", password="NEW") == AUTH_VIOLATION


def test_unknown_field_fails_naming_file_and_line(start, tmp_path):
    conf = write_conf(tmp_path, "debug: false\n")
    srv = start("-c", conf)
    assert_failed(reload(srv, conf, "debug: false\nmax_payload: 2048\nfoo: 1\n"),
                  '%s:3:1: unknown field "foo"' % conf)
    assert connect(srv).info["max_payload"] == 1024 * 1024


def test_options_that_fail_validation_fail_the_reload(start, tmp_path):
    conf = write_conf(tmp_path, "debug: false\n")
    srv = start("-c", conf)
    assert_failed(reload(srv, conf, "max_payload: 100MB\n"),
                  "max_payload (104857600) cannot be higher than max_pending (67108864)")
    assert_failed(reload(srv, conf, 'debug: false\nlame_duck_duration: "2s"\n'),
                  "%s:2:1: invalid lame_duck_duration of 2s, minimum is 30 seconds" % conf)


@pytest.mark.parametrize("change", ["port", "host", "server_name"])
def test_port_host_and_server_name_cannot_be_reloaded(start, tmp_path, change):
    # No -a/-p here: flags would win over the file.
    conf = write_conf(tmp_path, "listen: 127.0.0.1:-1\n" + SINGLE_USER % "pa")
    srv = start("-c", conf, addr=False, port=False)
    c = connect(srv, "a", "pa")
    new_port = free_port()
    listen, why = {
        "port": ("127.0.0.1:%d" % new_port,
                 "config reload not supported for Port: old=%d, new=%d" % (srv.port, new_port)),
        "host": ("127.0.0.2:-1",
                 "config reload not supported for Host: old=127.0.0.1, new=127.0.0.2"),
        "server_name": ("127.0.0.1:-1\nserver_name: foo",
                        "config reload not supported for ServerName: old=, new=foo"),
    }[change]
    assert_failed(reload(srv, conf, "listen: %s\n" % listen + SINGLE_USER % "NEW"), why)
    t_ping_pong(c)                 # nothing applied: the client stays ...
    connect(srv, "a", "pa")        # ... and the old password still works


def test_reload_without_a_config_file_fails(start):
    srv = start()
    assert_failed(reload(srv), "can only reload config when a file is provided "
                               "using -c or --config")


def test_reload_of_a_deleted_file_fails(start, tmp_path):
    conf = write_conf(tmp_path, "debug: false\n")
    srv = start("-c", conf)
    os.unlink(conf)
    assert_failed(reload(srv), re.compile(r"^open %s: no such file or directory$"
                                          % re.escape(conf), re.I))
    connect(srv)


# -- a real client --------------------------------------------------------------------------


def test_nats_py_client_is_dropped_and_cannot_come_back_with_the_old_password(
        kind, start, tmp_path):
    conf = write_conf(tmp_path, SINGLE_USER % "pa")
    srv = start("-c", conf)

    async def run():
        errors, disconnected, closed = [], asyncio.Event(), asyncio.Event()

        async def on_error(e):
            errors.append(e)

        async def on_disconnect():
            disconnected.set()

        async def on_close():
            closed.set()

        nc = await nats.connect(srv.url, user="a", password="pa", error_cb=on_error,
                                disconnected_cb=on_disconnect, closed_cb=on_close,
                                reconnect_time_wait=0.1, max_reconnect_attempts=3)
        try:
            await nc.flush()
            with open(conf, "w") as f:
                f.write(SINGLE_USER % "NEW")
            begin = len(srv.log)
            assert signal_command(kind, srv.pid).returncode == 0
            await asyncio.wait_for(disconnected.wait(), 10)
            await asyncio.wait_for(closed.wait(), 15)
            assert nc.is_closed
            srv.wait_for_log(RELOADED_RE, start=begin)
            assert any("Authorization Violation" in str(e) for e in errors), errors
        finally:
            if not nc.is_closed:
                await nc.close()

    asyncio.run(run())


@pytest.mark.parametrize("change", ["pool_size: 5", "accounts: [A]"])
def test_a_reload_of_the_route_pool_is_refused_and_the_routes_stay(tmp_path, change):
    """gnatsd.py does not rebuild its route pools on reload (Go reconnects
    every route for a new pool_size or pinned accounts): the reload fails
    with the usual not-supported error, and the pool keeps its connections."""
    from conftest import monitor_json, start_gnatsd
    base = "accounts { A {} }\ncluster { name: c, listen: 127.0.0.1:-1 %s }\n"
    conf = write_conf(tmp_path, base % "")
    srv = start_gnatsd("-c", conf, "-m", "-1")
    srv.mon_port = int(srv.wait_for_log(rb"Starting http monitor on \S+:(\d+)").group(1))
    peer_conf = write_conf(tmp_path, base % "", name="peer.conf")
    route_port = int(srv.wait_for_log(rb"Listening for route connections on \S+:(\d+)").group(1))
    peer = start_gnatsd("-c", peer_conf, "--routes", "nats://127.0.0.1:%d" % route_port)
    try:
        deadline = time.monotonic() + 10
        while monitor_json(srv, "/routez")["num_routes"] != 4:     # 3 pooled + $SYS
            assert time.monotonic() < deadline, monitor_json(srv, "/routez")
            time.sleep(0.05)
        before = sorted(r["rid"] for r in monitor_json(srv, "/routez")["routes"])
        what, old, new = (("cluster pool_size", "3", "5") if change.startswith("pool")
                          else ("cluster accounts", "[]", "[A]"))
        assert_failed(reload(srv, conf, base % change),
                      "config reload not supported for %s: old=%s, new=%s" % (what, old, new))
        assert sorted(r["rid"] for r in monitor_json(srv, "/routez")["routes"]) == before
    finally:
        peer.stop()
