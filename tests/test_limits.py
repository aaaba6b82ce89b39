"""Per-server limits from a config file: max_control_line, max_connections,
max_subscriptions, as nats-server 2.x enforces them (2.9 and 2.15 agree).

* max_control_line counts the *arguments* of an op (the bytes after the op
  name and its blanks, CRLF excluded): with `max_control_line: 64` an
  argument of 64 bytes passes, 65 gets `-ERR 'maximum control line exceeded'`
  and the connection is closed.  CONNECT is checked too; an over-long partial
  line (no CRLF yet) is refused as soon as it is read.
* max_connections: the extra client still gets INFO, then
  `-ERR 'maximum connections exceeded'` and is closed.
* max_subscriptions: the extra SUB gets `-ERR 'maximum subscriptions exceeded'`
  (no +OK), is not registered, and the connection stays open; re-SUB of a sid
  in use does not count.
"""
from __future__ import annotations

from conftest import (RawConn, t_expect_exact, t_ping_pong, t_read_all,
                      t_read_until_closed, write_conf)

MCL = b"-ERR 'maximum control line exceeded'\r\n"
QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


def mcl_server(any_server_with, tmp_path):
    return any_server_with("-c", write_conf(tmp_path, "max_control_line: 64\n"))


# -- max_control_line --------------------------------------------------------------


def test_control_line_args_of_exactly_max_control_line_are_accepted(any_server_with, tmp_path,
                                                                    raw_factory):
    srv = mcl_server(any_server_with, tmp_path)
    subj = b"a" * 62                       # "aaa…a 1" is 64 bytes
    c = raw_factory(srv, QUIET + b"SUB " + subj + b" 1\r\nPUB " + subj + b" 0\r\n\r\nPING\r\n")
    t_expect_exact(c, b"MSG " + subj + b" 1 0\r\n\r\nPONG\r\n")


def test_control_line_args_over_max_control_line_send_err_and_close(any_server_with, tmp_path,
                                                                    raw_factory):
    srv = mcl_server(any_server_with, tmp_path)
    for line in (b"SUB " + b"a" * 63 + b" 1\r\n", b"PUB " + b"a" * 63 + b" 0\r\n\r\n",
                 b"UNSUB 1 " + b"1" * 70 + b"\r\n"):
        c = raw_factory(srv, QUIET + line)
        assert t_read_until_closed(c) == MCL, line


def test_blanks_count_towards_max_control_line(any_server_with, tmp_path, raw_factory):
    c = raw_factory(mcl_server(any_server_with, tmp_path), QUIET + b"SUB a\t" + b" " * 70
                    + b"1\r\n")
    assert t_read_until_closed(c) == MCL


def test_connect_is_subject_to_max_control_line(any_server_with, tmp_path, raw_factory):
    c = raw_factory(mcl_server(any_server_with, tmp_path),
                    b'CONNECT {"verbose":false,"name":"' + b"n" * 80 + b'"}\r\n')
    assert t_read_until_closed(c) == MCL


def test_ping_with_trailing_blanks_is_not_a_long_control_line(any_server_with, tmp_path,
                                                              raw_factory):
    c = raw_factory(mcl_server(any_server_with, tmp_path), QUIET + b"PING" + b" " * 80 + b"\r\n")
    t_expect_exact(c, b"PONG\r\n")
    t_ping_pong(c)


def test_partial_control_line_over_limit_is_refused_before_crlf(any_server_with, tmp_path,
                                                                raw_factory):
    c = raw_factory(mcl_server(any_server_with, tmp_path), QUIET + b"PING\r\n")
    t_expect_exact(c, b"PONG\r\n")
    c.send(b"SUB " + b"a" * 70)
    assert t_read_until_closed(c) == MCL


def test_max_control_line_violation_does_not_affect_other_clients(any_server_with, tmp_path,
                                                                  raw_factory):
    srv = mcl_server(any_server_with, tmp_path)
    canary = raw_factory(srv, QUIET + b"SUB foo 1\r\n")
    t_ping_pong(canary)
    bad = raw_factory(srv, QUIET + b"SUB " + b"a" * 100 + b" 1\r\n")
    assert t_read_until_closed(bad) == MCL
    canary.send(b"PUB foo 2\r\nok\r\nPING\r\n")
    t_expect_exact(canary, b"MSG foo 1 2\r\nok\r\nPONG\r\n")


# -- max_connections -----------------------------------------------------------------


def test_max_connections_exceeded_sends_info_then_err_and_closes(any_server_with, tmp_path,
                                                                 raw_factory):
    srv = any_server_with("-c", write_conf(tmp_path, "max_connections: 1\n"))
    first = raw_factory(srv, QUIET + b"SUB foo 1\r\n")
    t_ping_pong(first)
    extra = RawConn(srv.host, srv.port)
    try:
        extra.expect(rb"INFO \{[^\r\n]*\} \r\n")  # raw: t_expect would drop it
        assert t_read_until_closed(extra) == b"-ERR 'maximum connections exceeded'\r\n"
        srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - maximum connections exceeded"
                         % extra.sock.getsockname()[1])
    finally:
        extra.close()
    first.send(b"PUB foo 2\r\nok\r\nPING\r\n")
    t_expect_exact(first, b"MSG foo 1 2\r\nok\r\nPONG\r\n")


# -- max_subscriptions ---------------------------------------------------------------


def subs_server(any_server_with, tmp_path):
    return any_server_with("-c", write_conf(tmp_path, "max_subscriptions: 2\n"))


def test_max_subscriptions_exceeded_sends_err_and_stays_open(any_server_with, tmp_path,
                                                             raw_factory):
    c = raw_factory(subs_server(any_server_with, tmp_path),
                    QUIET + b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPUB c 1\r\ny\r\n"
                            b"PUB a 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, b"-ERR 'maximum subscriptions exceeded'\r\nMSG a 1 1\r\nx\r\nPONG\r\n")


def test_max_subscriptions_frees_a_slot_on_unsub(any_server_with, tmp_path, raw_factory):
    c = raw_factory(subs_server(any_server_with, tmp_path),
                    QUIET + b"SUB a 1\r\nSUB b 2\r\nUNSUB 1\r\nSUB d 4\r\nPUB d 1\r\nx\r\n"
                            b"SUB e 5\r\nPING\r\n")
    t_expect_exact(c, b"MSG d 4 1\r\nx\r\n-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")


def test_max_subscriptions_with_verbose_sends_err_without_ok(any_server_with, tmp_path,
                                                             raw_factory):
    c = raw_factory(subs_server(any_server_with, tmp_path),
                    b'CONNECT {"verbose":true}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n')
    t_expect_exact(c, b"+OK\r\n+OK\r\n+OK\r\n-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")


def test_max_subscriptions_resub_of_sid_in_use_does_not_count(any_server_with, tmp_path,
                                                              raw_factory):
    c = raw_factory(subs_server(any_server_with, tmp_path),
                    b'CONNECT {"verbose":true}\r\nSUB a 1\r\nSUB a 1\r\nSUB b 2\r\nPING\r\n')
    t_expect_exact(c, b"+OK\r\n+OK\r\n+OK\r\n+OK\r\nPONG\r\n")
    assert t_read_all(c, 0.1) == b""
