"""Multi-account config (`accounts { A { users, exports, imports } }`), as
nats-server 2.x does it.

Every test runs the same transcript against gnatsd.py, Go 2.9.10 and Go
2.15.1 (`any_server_with` / `kind`) and asserts Go's exact bytes; where the
two Go versions differ, gnatsd.py is held to 2.15 (as in test_permissions).

Facts from Go 2.9.10 and 2.15.1 (both agree unless said otherwise):

Accounts and isolation
* Each account has its own subject space: a PUB in A reaches A's
  subscribers only (wildcards included).  Users of `authorization { users }`
  are in the global account `$G`, isolated from every named account.  Both
  blocks may be used together.  INFO says `"auth_required":true`; a client
  without credentials gets `-ERR 'Authorization Violation'` and a close.
* Per-user `permissions` work inside an account as in `authorization`.
* `no_auth_user: a` where `a` is a user of account A: a client that sends no
  credentials is `a`, in A.
* `system_account: SYS` with SYS defined in `accounts` is accepted (and the
  DBG line `Created system account: "$SYS"` is then not printed).

Streams
* B exports `{stream: "events.>"}`; A imports
  `{stream: {account: B, subject: "events.>"}}`: a PUB in B on events.x is
  delivered to B's own subscribers and to every subscription in A whose
  subject matches events.x (`events.>`, `>`, `events.x`, `*.x`), with the
  publisher's reply subject passed through unchanged.  A queue group in A
  gets each message once.  A PUB in A on events.x does not reach B.
  Subjects B did not export (or A did not import) do not cross.
* `prefix: "from_b"`: A sees `from_b.events.x` (and nothing on `events.x`).
  The 2.x form `to: "to_b.events.>"` maps the subject: `to_b.events.x`.
* For each SUB in the importer that overlaps a stream import, Go logs at DBG
  `Creating import subscription on "SUBJ" from account "B"`, SUBJ being the
  overlap in the exporter's subject space: SUB events.a -> "events.a",
  SUB > -> "events.>" (and one line per other overlapping import), SUB
  from_b.events.x under the prefix -> "events.x"; SUB other -> no line.
* The same stream import twice (another prefix) is a config error:
  `Error adding stream import "x": stream import already exists`.

Services
* B exports `{service: "svc.echo"}`; A imports
  `{service: {account: B, subject: "svc.echo"}, to: "echo"}`.  A's
  `PUB echo _INBOX.r1 2` reaches B's responder as
  `MSG svc.echo SID _R_.XXXXXX.YYYYYY 2` (the reply mapped into B: "_R_.", 6
  base-62 characters, ".", 6 more; every request into B gets a fresh last
  token while the "_R_.XXXXXX" part is the same for all requests into B,
  from A or C).  A request without a reply arrives without one.  B's PUB to
  that mapped reply is delivered to A as `MSG _INBOX.r1 SID LEN`.  A's own
  subscribers on `echo` also get the request, with the original reply.
* The default response_type is singleton: a second response to the same
  mapped reply is dropped.  `response_type: stream` lets every response
  through, in order.
* Imported with `to: "echo"`, the export's own subject svc.echo is not
  reachable from A; imported without `to`, A publishes on svc.echo.
* (Not asserted:) a response that carries a reply subject reaches A with
  that reply mapped into A the same way (`_R_.ZZZZZZ.WWWWWW`).

Private exports
* `exports [{stream: "priv.>", accounts: [A]}]`: A may import it (or any
  subset such as priv.x); C importing it is a config error:
  `Error adding stream import "priv.>": stream import not authorized`
  (service: `Error adding service import "psvc": service import not
  authorized`).  Importing more than was exported (events.> of events.x), or
  a stream where a service was exported, is the same error.

Config errors (exit status 1, same text with `-t` and when starting;
message `nats-server: FILE:LINE:COL: TEXT`, COL 1-based except on line 1,
where Go says 0 -- so every config here starts with a comment line):
* import from an undefined account: `"Z" account not defined for stream
  import` (`... for service import`), at the `accounts` key;
  an export to an undefined account: `"Z" account not defined for stream
  export`, also at the `accounts` key.
* a user in two accounts, or in `authorization` and an account:
  `Duplicate user "a" detected`, at the `users` key of one account or at the
  `authorization` key -- which one depends on Go's map order (random).
* `authorization { user, password }` with accounts: `Can not have a single
  user/pass and a users array` (or, by map order, `... and accounts`).
* `$G` as an account name: `"$G" is a Reserved Account`; an unknown key in
  an account or import: `unknown field "bogus"`; an import without subject:
  `Expect an account name and a subject`; `response_type: bogus`:
  `Unknown response type: "bogus"` at the response_type key.
* Checked only at startup (`-t` says valid): `system_account: SYS` with no
  account SYS: `nats-server: error resolving system account: account
  missing`; an unknown no_auth_user: 2.9 `no_auth_user: "zz" not present as
  user in authorization block or account configuration`, 2.15 `... not
  present as user or nkey in authorization block ...`.

Monitoring and logs
* /connz shows `"account": "A"` (and `"authorized_user"`) only with
  `?auth=1`; a `$G` connection has no "account" key.  2.15 adds
  `"name_tag": "A"` / `"$G"` with auth=1 (2.9 has none).  `?acc=A` lists
  A's connections only.
* Log prefix: on every line after CONNECT, 2.15 puts `"A/user:a1"`
  (account/user) after `cid:N - ` (after the `"v2.16.0:python3"` name part
  when the client sent one), `"$G/user:g"` in $G; 2.9 has none.  The
  CONNECT trace line itself has no prefix.  A violation in A logs
  2.9: `127.0.0.1:P - cid:N - Publish Violation - User "a2", Subject "secret"`
  2.15: `127.0.0.1:P - cid:N - "A/user:a2" - Publish Violation - Subject "secret"`.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request

import nats
import pytest

from conftest import (GNATSD, GO_SERVERS, SERVER_PYTHON, t_expect, t_expect_exact, t_ping_pong,
                      t_read_until_closed, write_conf)

CONF = """# Accounts A, B, P, T, C, and g in the global account.
accounts {
  A {
    users [
      {user: a1, password: a1}
      {user: a2, password: a2, permissions: {publish: {deny: "secret"}}}
    ]
    imports [
      {stream: {account: B, subject: "events.>"}}
      {stream: {account: B, subject: "priv.x"}}
      {service: {account: B, subject: "svc.echo"}, to: "echo"}
      {service: {account: B, subject: "svc.many"}}
    ]
  }
  B {
    users [ {user: b, password: b} ]
    exports [
      {stream: "events.>"}
      {stream: "priv.>", accounts: [A]}
      {service: "svc.echo"}
      {service: "svc.many", response_type: stream}
    ]
  }
  P {
    users [ {user: p, password: p} ]
    imports [ {stream: {account: B, subject: "events.>"}, prefix: "from_b"} ]
  }
  T {
    users [ {user: t, password: t} ]
    imports [ {stream: {account: B, subject: "events.>"}, to: "to_b.events.>"} ]
  }
  C {
    users [ {user: c, password: c} ]
    imports [ {service: {account: B, subject: "svc.echo"}} ]
  }
}
authorization {
  users [ {user: g, password: g} ]
}
"""

ACCOUNT_OF = {"a1": "A", "a2": "A", "b": "B", "p": "P", "t": "T", "c": "C", "g": "$G"}
AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"
# A reply subject mapped into the exporting account: _R_.XXXXXX.YYYYYY.
MAPPED_REPLY = rb"_R_\.[0-9A-Za-z]{6}\.[0-9A-Za-z]{6}"
MON_RE = re.compile(rb"Starting http monitor on (\S+):(\d+)")


def connect(user=None) -> bytes:
    """CONNECT as `user` (whose password is its name), or without credentials."""
    fields = ['"verbose":false', '"pedantic":false']
    if user is not None:
        fields += ['"user":"%s"' % user, '"pass":"%s"' % user]
    return b"CONNECT {" + ",".join(fields).encode() + b"}\r\n"


def start(any_server_with, tmp_path, *args, conf: str = CONF):
    return any_server_with(*args, "-c", write_conf(tmp_path, conf))


def login(srv, raw_factory, user, subs: bytes = b""):
    """A logged-in connection of `user` with `subs` sent, synced by PING/PONG."""
    c = raw_factory(srv, connect(user) + subs + b"PING\r\n")
    c.timeout = 2.0  # keep failures against an unfinished server short
    t_expect_exact(c, b"PONG\r\n")
    return c


def msg(subject: str, sid: int, payload: bytes, reply: str | bytes = "") -> bytes:
    if isinstance(reply, str):
        reply = reply.encode()
    r = reply + b" " if reply else b""
    return b"MSG %s %d %s%d\r\n%s\r\n" % (subject.encode(), sid, r, len(payload), payload)


def drain(conn) -> list:
    """PING barrier: the MSG frames that arrived before the PONG, sorted (the
    order of one message's deliveries to several sids is not Go's contract)."""
    conn.send(b"PING\r\n")
    data = t_expect(conn, rb"(.*?)PONG\r\n").group(1)
    frames = re.findall(rb"MSG [^\r\n]*\r\n[^\r\n]*\r\n", data)
    assert b"".join(frames) == data, data
    return sorted(frames)


def request_into_b(b, subject: str, payload: bytes, sid: int = 1) -> bytes:
    """Read the request B's responder got; return its mapped reply subject."""
    m = t_expect(b, rb"MSG %s %d (%s) %d\r\n%s\r\n" % (
        re.escape(subject.encode()), sid, MAPPED_REPLY, len(payload), re.escape(payload)))
    return m.group(1)


# -- isolation ------------------------------------------------------------------------


def test_info_says_auth_required_and_no_credentials_are_refused(any_server_with, raw_factory,
                                                                tmp_path):
    srv = start(any_server_with, tmp_path)
    c = raw_factory(srv, connect() + b"PING\r\n")
    assert c.info["auth_required"] is True
    assert t_read_until_closed(c, 3) == AUTH_VIOLATION
    wrong = raw_factory(srv, b'CONNECT {"verbose":false,"user":"a1","pass":"b"}\r\nPING\r\n')
    assert t_read_until_closed(wrong, 3) == AUTH_VIOLATION


def test_every_user_of_every_account_logs_in(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    for user in ACCOUNT_OF:
        c = login(srv, raw_factory, user)
        t_ping_pong(c)
        c.close()


def test_publish_reaches_only_its_own_account(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB foo 1\r\nSUB > 2\r\n")
    a2 = login(srv, raw_factory, "a2", b"SUB foo 1\r\n")
    b = login(srv, raw_factory, "b", b"SUB foo 1\r\nSUB > 2\r\n")
    g = login(srv, raw_factory, "g", b"SUB foo 1\r\nSUB > 2\r\n")
    p = login(srv, raw_factory, "p", b"SUB > 1\r\n")
    a2.send(b"PUB foo 1\r\na\r\n")
    assert drain(a2) == [msg("foo", 1, b"a")]
    assert drain(a1) == [msg("foo", 1, b"a"), msg("foo", 2, b"a")]
    for other in (b, g, p):
        assert drain(other) == []
    b.send(b"PUB foo 1\r\nb\r\n")
    assert drain(b) == [msg("foo", 1, b"b"), msg("foo", 2, b"b")]
    for other in (a1, a2, g, p):
        assert drain(other) == []
    g.send(b"PUB foo 1\r\ng\r\n")
    assert drain(g) == [msg("foo", 1, b"g"), msg("foo", 2, b"g")]
    for other in (a1, a2, b, p):
        assert drain(other) == []


def test_permissions_apply_inside_an_account(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB secret 1\r\n")
    a2 = login(srv, raw_factory, "a2")
    a2.send(b"PUB secret 1\r\nx\r\nPUB open 1\r\ny\r\nPING\r\n")
    t_expect_exact(a2, b"-ERR 'Permissions Violation for Publish to \"secret\"'\r\nPONG\r\n")
    assert drain(a1) == []
    port = a2.sock.getsockname()[1]
    if srv.kind == "nats-server 2.9":
        text = b'Publish Violation - User "a2", Subject "secret"'
    else:
        text = b'"A/user:a2" - Publish Violation - Subject "secret"'
    srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - %s\r?\n" % (port, re.escape(text)), 3)


def test_trace_lines_name_account_and_user(any_server_with, raw_factory, tmp_path):
    """2.15 prefixes "ACCOUNT/user:NAME"; 2.9 does not.  gnatsd.py follows 2.15."""
    srv = start(any_server_with, tmp_path, "-DV")
    for user in ("a1", "g"):
        c = login(srv, raw_factory, user, b"SUB trace.%s 7\r\n" % user.encode())
        port = c.sock.getsockname()[1]
        who = b"" if srv.kind == "nats-server 2.9" else (
            b'"%s/user:%s" - ' % (ACCOUNT_OF[user].encode(), user.encode()))
        srv.wait_for_log(rb"\[TRC\] 127\.0\.0\.1:%d - cid:\d+ - %s<<- \[SUB trace\.%s 7\]\r?\n"
                         % (port, re.escape(who), user.encode()), 3)


# -- stream exports and imports ---------------------------------------------------------


def test_stream_import_reaches_importer_and_exporter(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB events.> 1\r\nSUB > 2\r\nSUB events.x 3\r\n"
                                       b"SUB *.x 4\r\nSUB events.y 5\r\nSUB x 6\r\n")
    b = login(srv, raw_factory, "b", b"SUB events.> 1\r\n")
    g = login(srv, raw_factory, "g", b"SUB > 1\r\n")
    c = login(srv, raw_factory, "c", b"SUB > 1\r\n")  # C imports only a service
    b.send(b"PUB events.x 2\r\nev\r\n")
    assert drain(b) == [msg("events.x", 1, b"ev")]
    assert drain(a1) == [msg("events.x", sid, b"ev") for sid in (1, 2, 3, 4)]
    assert drain(g) == []
    assert drain(c) == []


def test_stream_import_passes_the_reply_subject_through(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB events.x 1\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"PUB events.x b.reply 2\r\nev\r\nPING\r\n")
    t_expect_exact(b, b"PONG\r\n")
    t_expect_exact(a1, msg("events.x", 1, b"ev", "b.reply"))


def test_stream_import_with_prefix(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    p = login(srv, raw_factory, "p", b"SUB from_b.> 1\r\nSUB > 2\r\nSUB events.> 3\r\n"
                                     b"SUB from_b.events.x 4\r\nSUB *.events.x 5\r\n"
                                     b"SUB from_b.* 6\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"PUB events.x 2\r\nev\r\n")
    t_ping_pong(b)
    assert drain(p) == [msg("from_b.events.x", sid, b"ev") for sid in (1, 2, 4, 5)]


def test_stream_import_with_to_mapping(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    t = login(srv, raw_factory, "t", b"SUB > 1\r\nSUB to_b.events.* 2\r\nSUB events.> 3\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"PUB events.x 2\r\nev\r\n")
    t_ping_pong(b)
    assert drain(t) == [msg("to_b.events.x", 1, b"ev"), msg("to_b.events.x", 2, b"ev")]


def test_publish_in_importer_does_not_reach_exporter(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB > 1\r\n")
    a1 = login(srv, raw_factory, "a1", b"SUB events.> 1\r\n")
    a1.send(b"PUB events.y 1\r\na\r\n")
    assert drain(a1) == [msg("events.y", 1, b"a")]  # A's own subscriber gets it
    for user, subject in (("p", b"from_b.events.y"), ("t", b"to_b.events.y")):
        c = login(srv, raw_factory, user)
        c.send(b"PUB %s 1\r\nx\r\n" % subject)
        t_ping_pong(c)
    assert drain(b) == []


def test_subjects_not_exported_or_not_imported_do_not_cross(any_server_with, raw_factory,
                                                            tmp_path):
    """B exports priv.> to A only; A imports just priv.x.  other.x is not exported."""
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB > 1\r\n")
    p = login(srv, raw_factory, "p", b"SUB > 1\r\n")
    c = login(srv, raw_factory, "c", b"SUB > 1\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"PUB other.x 1\r\n1\r\nPUB priv.y 1\r\n2\r\nPUB priv.x 1\r\n3\r\n"
           b"PUB svc.echo 1\r\n4\r\n")
    t_ping_pong(b)
    assert drain(a1) == [msg("priv.x", 1, b"3")]
    assert drain(p) == []
    assert drain(c) == []


def test_queue_group_in_importer_gets_each_message_once(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB events.* q 1\r\n")
    a2 = login(srv, raw_factory, "a2", b"SUB events.* q 2\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"".join(b"PUB events.a 2\r\n%02d\r\n" % i for i in range(20)))
    t_ping_pong(b)
    got = drain(a1) + drain(a2)
    payloads = sorted(re.search(rb"\r\n(\d\d)\r\n", f).group(1) for f in got)
    assert payloads == [b"%02d" % i for i in range(20)], got


def test_import_subscription_debug_lines(any_server_with, raw_factory, tmp_path):
    """One DBG line per stream import a SUB overlaps, naming the overlap in the
    exporter's subjects.  gnatsd.py is held to the 2.15 prefix."""
    srv = start(any_server_with, tmp_path, "-D")
    a1 = login(srv, raw_factory, "a1", b"SUB events.a 1\r\nSUB > 2\r\nSUB other 3\r\n"
                                       b"SUB echo 4\r\n")
    p = login(srv, raw_factory, "p", b"SUB from_b.events.x 1\r\nSUB events.x 2\r\n")
    expected = {a1: ["events.>", "events.a", "priv.x"], p: ["events.x"]}
    for conn, names in expected.items():
        user = "a1" if conn is a1 else "p"
        port = conn.sock.getsockname()[1]
        who = b"" if srv.kind == "nats-server 2.9" else (
            b'"%s/user:%s" - ' % (ACCOUNT_OF[user].encode(), user.encode()))
        line = (rb"\[DBG\] 127\.0\.0\.1:%d - cid:\d+ - %sCreating import subscription on "
                rb'"([^"]*)" from account "B"\r?\n' % (port, re.escape(who)))
        srv.wait_for_log(line, 3)
        # Every line of this connection is in the log once its close is.
        conn.close()
        srv.wait_for_log(rb"127\.0\.0\.1:%d - cid:\d+ - [^\n]*Client connection closed" % port, 3)
        found = sorted(m.decode() for m in re.findall(line, srv.log_text().encode()))
        assert found == names, found


# -- service exports and imports --------------------------------------------------------


def test_service_request_is_mapped_into_exporter_and_response_returns(any_server_with,
                                                                      raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    a1 = login(srv, raw_factory, "a1", b"SUB _INBOX.r1 9\r\n")
    a1.send(b"PUB echo _INBOX.r1 2\r\nhi\r\n")
    assert drain(a1) == []
    reply = request_into_b(b, "svc.echo", b"hi")
    b.send(b"PUB %s 2\r\nok\r\n" % reply)
    assert drain(b) == []
    assert drain(a1) == [msg("_INBOX.r1", 9, b"ok")]


def test_second_response_to_a_singleton_service_is_dropped(any_server_with, raw_factory,
                                                           tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    a1 = login(srv, raw_factory, "a1", b"SUB _INBOX.> 9\r\n")
    a1.send(b"PUB echo _INBOX.r1 2\r\nhi\r\n")
    t_ping_pong(a1)
    reply = request_into_b(b, "svc.echo", b"hi")
    b.send(b"PUB %s 3\r\none\r\nPUB %s 3\r\ntwo\r\n" % (reply, reply))
    t_ping_pong(b)
    assert drain(a1) == [msg("_INBOX.r1", 9, b"one")]
    b.send(b"PUB %s 5\r\nthree\r\n" % reply)
    t_ping_pong(b)
    assert drain(a1) == []


def test_stream_response_type_lets_every_response_through(any_server_with, raw_factory,
                                                          tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.many 1\r\n")
    a1 = login(srv, raw_factory, "a1", b"SUB _INBOX.r2 9\r\n")
    a1.send(b"PUB svc.many _INBOX.r2 2\r\nmm\r\n")
    t_ping_pong(a1)
    reply = request_into_b(b, "svc.many", b"mm")
    b.send(b"".join(b"PUB %s 2\r\n%s\r\n" % (reply, r) for r in (b"r1", b"r2", b"r3"))
           + b"PING\r\n")
    t_expect_exact(b, b"PONG\r\n")
    t_expect_exact(a1, msg("_INBOX.r2", 9, b"r1") + msg("_INBOX.r2", 9, b"r2")
                   + msg("_INBOX.r2", 9, b"r3"))


def test_service_request_without_reply_arrives_without_one(any_server_with, raw_factory,
                                                           tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    a1 = login(srv, raw_factory, "a1")
    a1.send(b"PUB echo 2\r\nnr\r\n")
    t_ping_pong(a1)
    assert drain(b) == [msg("svc.echo", 1, b"nr")]


def test_service_request_is_also_delivered_in_the_importing_account(any_server_with,
                                                                    raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    a1 = login(srv, raw_factory, "a1", b"SUB echo 5\r\nSUB > 6\r\n")
    a2 = login(srv, raw_factory, "a2")
    a2.send(b"PUB echo _INBOX.r 2\r\nhi\r\n")
    t_ping_pong(a2)
    assert drain(a1) == [msg("echo", 5, b"hi", "_INBOX.r"), msg("echo", 6, b"hi", "_INBOX.r")]
    request_into_b(b, "svc.echo", b"hi")


def test_export_subject_is_not_reachable_when_imported_under_to(any_server_with, raw_factory,
                                                                tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB > 1\r\n")
    a1 = login(srv, raw_factory, "a1")
    a1.send(b"PUB svc.echo _INBOX.r 2\r\nhi\r\n")
    t_ping_pong(a1)
    assert drain(b) == []


def test_service_import_without_to_uses_the_export_subject(any_server_with, raw_factory,
                                                           tmp_path):
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    c = login(srv, raw_factory, "c", b"SUB _INBOX.c 3\r\n")
    c.send(b"PUB svc.echo _INBOX.c 2\r\nci\r\n")
    t_ping_pong(c)
    reply = request_into_b(b, "svc.echo", b"ci")
    b.send(b"PUB %s 2\r\nco\r\n" % reply)
    t_ping_pong(b)
    assert drain(c) == [msg("_INBOX.c", 3, b"co")]


def test_mapped_reply_subjects_are_fresh_with_one_prefix_per_exporter(any_server_with,
                                                                      raw_factory, tmp_path):
    """Go keeps one "_R_.XXXXXX." prefix per account the reply lives in (B
    here, for requests from A and from C) and adds a fresh token per request."""
    srv = start(any_server_with, tmp_path)
    b = login(srv, raw_factory, "b", b"SUB svc.echo 1\r\n")
    a1 = login(srv, raw_factory, "a1")
    c = login(srv, raw_factory, "c")
    replies = []
    for conn, subject in ((a1, b"echo"), (a1, b"echo"), (c, b"svc.echo")):
        conn.send(b"PUB %s _INBOX.same 2\r\nrq\r\n" % subject)
        t_ping_pong(conn)
        replies.append(request_into_b(b, "svc.echo", b"rq"))
    assert len(set(replies)) == 3, replies
    assert len({r.rsplit(b".", 1)[0] for r in replies}) == 1, replies


def test_exporter_cannot_publish_into_the_importer(any_server_with, raw_factory, tmp_path):
    """Only a mapped reply crosses back; B's PUB on A's inbox, or on a
    _R_ subject it was never given, goes nowhere in A."""
    srv = start(any_server_with, tmp_path)
    a1 = login(srv, raw_factory, "a1", b"SUB _INBOX.> 1\r\nSUB > 2\r\n")
    b = login(srv, raw_factory, "b")
    b.send(b"PUB _INBOX.r1 1\r\nx\r\nPUB _R_.AAAAAA.BBBBBB 1\r\ny\r\n")
    t_ping_pong(b)
    assert drain(a1) == []


# -- no_auth_user and system_account ------------------------------------------------------

NO_AUTH_CONF = """# The no_auth_user lives in account A.
no_auth_user: a
accounts {
  A { users [ {user: a, password: a} ] }
  B { users [ {user: b, password: b} ] }
}
"""

SYS_CONF = """# The system account is one of the configured accounts.
system_account: SYS
accounts {
  A { users [ {user: a, password: a} ] }
  SYS { users [ {user: s, password: s} ] }
}
"""


def test_no_auth_user_lands_in_its_account(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path, conf=NO_AUTH_CONF)
    anon = login(srv, raw_factory, None, b"SUB foo 1\r\n")
    a = login(srv, raw_factory, "a", b"SUB foo 2\r\n")
    b = login(srv, raw_factory, "b", b"SUB foo 3\r\n")
    b.send(b"PUB foo 1\r\nb\r\n")
    assert drain(b) == [msg("foo", 3, b"b")]
    assert drain(anon) == []
    anon.send(b"PUB foo 1\r\nn\r\n")
    assert drain(anon) == [msg("foo", 1, b"n")]
    assert drain(a) == [msg("foo", 2, b"n")]
    assert drain(b) == []


def test_system_account_defined_in_accounts_is_accepted(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path, conf=SYS_CONF)
    s = login(srv, raw_factory, "s", b"SUB ops.x 1\r\n")
    a = login(srv, raw_factory, "a", b"SUB ops.x 2\r\n")
    s.send(b"PUB ops.x 1\r\ns\r\n")
    assert drain(s) == [msg("ops.x", 1, b"s")]
    assert drain(a) == []


# -- config checks ----------------------------------------------------------------------


def run_kind(kind: str, *args, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run the `kind` server with exactly `args` to completion (killed after `timeout`)."""
    if kind == "gnatsd":
        argv = [SERVER_PYTHON, GNATSD, *args]
    else:
        if kind[2:] not in GO_SERVERS:
            pytest.skip("Go nats-server %s is not installed" % kind[2:])
        argv = [GO_SERVERS[kind[2:]], *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s %s did not exit: %s" % (kind, args, e.stderr)) from None


def run_start(kind: str, conf: str) -> subprocess.CompletedProcess:
    return run_kind(kind, "-a", "127.0.0.1", "-p", "-1", "-c", conf)


def assert_config_error(r: subprocess.CompletedProcess, first_line: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert re.fullmatch(first_line, r.stderr.splitlines()[0] if r.stderr else ""), r.stderr


def _accounts(*blocks: str) -> str:
    return "# c\naccounts {\n" + "".join(blocks) + "}\n"


def _acc(name: str, user: str, *lines: str) -> str:
    body = "".join("    %s\n" % line for line in lines)
    return "  %s {\n    users [ {user: %s, password: %s} ]\n%s  }\n" % (name, user, user, body)


B_EXPORTS_Y = _acc("B", "b", 'exports [ {stream: "y"} ]')
B_PRIVATE = _acc("B", "b", 'exports [ {stream: "priv.>", accounts: [A]}, '
                           '{service: "psvc", accounts: [A]} ]')

# (id, config text, first stderr line after "nats-server: FILE:"), all on
# lines Go reports the same way every time.
CONFIG_ERRORS = [
    ("stream-import-from-undefined-account",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: Z, subject: "x"}} ]')),
     r'2:1: "Z" account not defined for stream import'),
    ("service-import-from-undefined-account",
     _accounts(_acc("A", "a", 'imports [ {service: {account: Z, subject: "x"}} ]')),
     r'2:1: "Z" account not defined for service import'),
    ("stream-import-not-exported",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: B, subject: "x"}} ]'), B_EXPORTS_Y),
     r'2:1: Error adding stream import "x": stream import not authorized'),
    ("service-import-not-exported",
     _accounts(_acc("A", "a", 'imports [ {service: {account: B, subject: "x"}} ]'),
               _acc("B", "b", 'exports [ {stream: "x"} ]')),
     r'2:1: Error adding service import "x": service import not authorized'),
    ("stream-import-of-a-service-export",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: B, subject: "x"}} ]'),
               _acc("B", "b", 'exports [ {service: "x"} ]')),
     r'2:1: Error adding stream import "x": stream import not authorized'),
    ("stream-import-broader-than-export",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: B, subject: "events.>"}} ]'),
               _acc("B", "b", 'exports [ {stream: "events.x"} ]')),
     r'2:1: Error adding stream import "events\.>": stream import not authorized'),
    ("private-stream-imported-by-other-account",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: B, subject: "priv.>"}} ]'), B_PRIVATE,
               _acc("C", "c", 'imports [ {stream: {account: B, subject: "priv.>"}} ]')),
     r'2:1: Error adding stream import "priv\.>": stream import not authorized'),
    ("private-service-imported-by-other-account",
     _accounts(_acc("A", "a", 'imports [ {service: {account: B, subject: "psvc"}} ]'), B_PRIVATE,
               _acc("C", "c", 'imports [ {service: {account: B, subject: "psvc"}} ]')),
     r'2:1: Error adding service import "psvc": service import not authorized'),
    ("export-to-undefined-account",
     _accounts(_acc("B", "b", 'exports [ {stream: "x", accounts: [Z]} ]')),
     r'2:1: "Z" account not defined for stream export'),
    ("same-stream-import-twice",
     _accounts(_acc("A", "a", "imports [", '  {stream: {account: B, subject: "x"}}',
                    '  {stream: {account: B, subject: "x"}, prefix: "p"}', "]"),
               _acc("B", "b", 'exports [ {stream: "x"} ]')),
     r'2:1: Error adding stream import "x": stream import already exists'),
    ("user-in-two-accounts",
     _accounts(_acc("A", "a"), "  B {\n    users [ {user: a, password: b} ]\n  }\n"),
     r'(4:5|7:5): Duplicate user "a" detected'),
    ("user-in-authorization-and-account",
     "# c\nauthorization {\n  users [ {user: a, password: x} ]\n}\n"
     "accounts {\n  A {\n    users [ {user: a, password: a} ]\n  }\n}\n",
     r'(2:1|7:5): Duplicate user "a" detected'),
    ("single-user-and-accounts",
     _accounts(_acc("A", "a")) + "authorization {\n  user: g\n  password: g\n}\n",
     r'(7:1: Can not have a single user/pass and a users array'
     r'|4:5: Can not have a single user/pass and accounts)'),
    ("global-account-name-is-reserved",
     "# c\naccounts {\n  $G {\n    users [ {user: a, password: a} ]\n  }\n}\n",
     r'3:3: "\$G" is a Reserved Account'),
    ("unknown-field-in-account",
     _accounts(_acc("A", "a", "bogus: 1")),
     r'5:5: unknown field "bogus"'),
    ("unknown-import-kind",
     _accounts(_acc("A", "a", 'imports [ {foo: {account: B, subject: "x"}} ]'), B_EXPORTS_Y),
     r'5:16: unknown field "foo"'),
    ("import-without-subject",
     _accounts(_acc("A", "a", "imports [ {stream: {account: B}} ]"), B_EXPORTS_Y),
     r'5:16: Expect an account name and a subject'),
    ("unknown-response-type",
     _accounts(_acc("B", "b", 'exports [ {service: "x", response_type: bogus} ]')),
     r'5:30: Unknown response type: "bogus"'),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in CONFIG_ERRORS],
                         ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_exits_1_with_gos_message(kind, tmp_path, text, message):
    conf = write_conf(tmp_path, text)
    line = "nats-server: " + re.escape(conf) + ":" + message
    assert_config_error(run_kind(kind, "-t", "-c", conf), line)
    assert_config_error(run_start(kind, conf), line)


VALID_CONFIGS = [
    ("main", CONF),
    ("no-auth-user-in-account", NO_AUTH_CONF),
    ("system-account", SYS_CONF),
    ("import-a-subset-of-a-private-export",
     _accounts(_acc("A", "a", 'imports [ {stream: {account: B, subject: "priv.x"}} ]'),
               B_PRIVATE)),
    ("accounts-without-users", "# c\naccounts {\n  A {}\n  B {}\n}\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in VALID_CONFIGS], ids=[c[0] for c in VALID_CONFIGS])
def test_valid_account_configs_pass_the_check(kind, tmp_path, text):
    conf = write_conf(tmp_path, text)
    r = run_kind(kind, "-t", "-c", conf)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("nats-server: configuration file %s is valid" % conf), r.stderr


def test_undefined_system_account_passes_the_check_but_stops_the_server(kind, tmp_path):
    conf = write_conf(tmp_path, "# c\nsystem_account: SYS\n" + _accounts(_acc("A", "a"))[4:])
    assert run_kind(kind, "-t", "-c", conf).returncode == 0
    assert_config_error(run_start(kind, conf),
                        r"nats-server: error resolving system account: account missing")


def test_unknown_no_auth_user_with_accounts_stops_the_server(kind, tmp_path):
    """2.9 says "not present as user in ...", 2.15 "... as user or nkey in ..."."""
    conf = write_conf(tmp_path, "# c\nno_auth_user: zz\n" + _accounts(_acc("A", "a"))[4:])
    assert run_kind(kind, "-t", "-c", conf).returncode == 0
    assert_config_error(run_start(kind, conf),
                        r'nats-server: no_auth_user: "zz" not present as user( or nkey)? in '
                        r"authorization block or account configuration")


# -- monitoring -------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def connz(srv, query: str = "") -> dict:
    if not hasattr(srv, "mon"):
        m = srv.wait_for_log(MON_RE, 5)
        srv.mon = "http://127.0.0.1:%d" % int(m.group(2))
    with _OPENER.open(srv.mon + "/connz" + query, timeout=5) as r:
        return json.loads(r.read())


def test_connz_names_the_account_with_auth(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path, "-m", "-1")
    conns = {user: login(srv, raw_factory, user) for user in ("a1", "a2", "b", "g")}
    port_of = {c.sock.getsockname()[1]: user for user, c in conns.items()}
    plain = connz(srv)
    assert plain["num_connections"] == 4
    for info in plain["connections"]:
        assert "account" not in info and "authorized_user" not in info, info
    with_auth = connz(srv, "?auth=1")
    seen = set()
    for info in with_auth["connections"]:
        user = port_of[info["port"]]
        seen.add(user)
        assert info["authorized_user"] == user, info
        if ACCOUNT_OF[user] == "$G":
            assert "account" not in info, info
        else:
            assert info["account"] == ACCOUNT_OF[user], info
        if srv.kind != "nats-server 2.9":  # 2.15 only; gnatsd.py follows it
            assert info["name_tag"] == ACCOUNT_OF[user], info
    assert seen == set(conns)
    only_a = connz(srv, "?acc=A&auth=1")
    assert only_a["num_connections"] == 2
    assert sorted(port_of[i["port"]] for i in only_a["connections"]) == ["a1", "a2"]
    only_g = connz(srv, "?acc=$G")
    assert [port_of[i["port"]] for i in only_g["connections"]] == ["g"]


# -- nats-py end to end -------------------------------------------------------------------


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def nats_login(srv, user):
    return await nats.connect(srv.url, user=user, password=user, allow_reconnect=False,
                              connect_timeout=3)


async def barrier(nc):
    """Everything `nc` sent so far has been processed, and everything sent to
    it before now has been read.  (nats-py 2.16's flush() is no barrier: it
    writes its PING straight to the socket, ahead of SUBs still queued.)"""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(inbox, b"sync")
    assert (await sub.next_msg(timeout=3)).data == b"sync"
    await sub.unsubscribe()


def test_nats_py_accounts_are_isolated_and_streams_cross(any_server_with, tmp_path):
    srv = start(any_server_with, tmp_path)

    async def main():
        a1, a2, b, g = [await nats_login(srv, u) for u in ("a1", "a2", "b", "g")]
        in_a = await a1.subscribe("news")
        in_b = await b.subscribe("news")
        in_g = await g.subscribe("news")
        events = await a1.subscribe("events.*")
        for nc in (a1, b, g):
            await barrier(nc)
        await a2.publish("news", b"from a2")
        await b.publish("events.x", b"from b")
        await barrier(a2)
        assert (await in_a.next_msg(timeout=3)).data == b"from a2"
        got = await events.next_msg(timeout=3)
        assert (got.subject, got.data) == ("events.x", b"from b")
        # Whatever was delivered to b and g came before their barrier message.
        await barrier(b)
        await barrier(g)
        assert in_b.pending_msgs == 0 and in_g.pending_msgs == 0
        for nc in (a1, a2, b, g):
            await nc.close()
    run(main())


def test_nats_py_request_through_service_import(any_server_with, tmp_path):
    srv = start(any_server_with, tmp_path)

    async def main():
        a1, b, c = [await nats_login(srv, u) for u in ("a1", "b", "c")]
        seen = []

        async def echo(m):
            seen.append((m.subject, m.reply))
            await b.publish(m.reply, b"echo:" + m.data)
        await b.subscribe("svc.echo", cb=echo)
        await barrier(b)
        reply = await a1.request("echo", b"hi", timeout=2)
        assert reply.data == b"echo:hi"
        reply = await c.request("svc.echo", b"ci", timeout=2)
        assert reply.data == b"echo:ci"
        assert [s for s, _ in seen] == ["svc.echo", "svc.echo"]
        for _, r in seen:
            assert re.fullmatch(MAPPED_REPLY.decode(), r), r
        for nc in (a1, b, c):
            await nc.close()
    run(main())
