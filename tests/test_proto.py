"""Client protocol transcripts, byte for byte, as nats-server 2.x speaks them.

Every transcript here was first run against the Go servers (Debian's 2.9.10
and PyPI's 2.15.1); where both answered the same, `any_server` holds gnatsd.py
to that answer.  Unasked lines from newer Go servers (2.12+'s `connect_info`
INFO after the first PONG, the early server PING) are skipped by the `t_*`
helpers in conftest.py.

Facts learnt from Go (2.9 and 2.15 agree on all of them):
* Before CONNECT a client is verbose *and* pedantic; CONNECT changes only the
  fields it sends, so `CONNECT {"verbose":false}` leaves pedantic on.
* Argument errors (bad size, wrong arg count, bad CONNECT JSON) close the
  connection *silently*; errors caught by the byte parser (unknown op, payload
  not followed by CRLF, `PUB\\r\\n`) send `-ERR 'Unknown Protocol Operation'`
  first.
"""
from __future__ import annotations

import itertools
import json
import re
import socket
import time

from conftest import (RawConn, t_expect, t_expect_exact, t_ping_pong, t_read_all,
                      t_read_until_closed)

UNKNOWN_OP = b"-ERR 'Unknown Protocol Operation'\r\n"
INVALID_SUBJECT = b"-ERR 'Invalid Subject'\r\n"
QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'

MSG_RE = re.compile(rb"MSG (\S+) (\S+) (?:(\S+) )?(\d+)\r\n")


def read_msgs(conn: RawConn, n: int) -> list:
    """Read n MSG frames; return [(subject, sid, reply, payload)]."""
    out = []
    for _ in range(n):
        m = t_expect(conn, MSG_RE)
        size = int(m.group(4))
        body = t_expect(conn, re.compile(rb"(.{%d})\r\n" % size, re.S)).group(1)
        out.append((m.group(1), m.group(2), m.group(3), body))
    return out


def msgs_until_pong(conn: RawConn) -> list:
    """Send PING; return every MSG that arrives before the PONG."""
    conn.send(b"PING\r\n")
    m = t_expect(conn, rb"((?:MSG [^\r\n]*\r\n[^\r\n]*\r\n)*)PONG\r\n", timeout=10)
    return [(g[0], g[1], g[2] or None, g[3]) for g in re.findall(
        rb"MSG (\S+) (\S+) (?:(\S+) )?\d+\r\n([^\r\n]*)\r\n", m.group(1))]


# -- INFO ------------------------------------------------------------------------


def test_info_is_first_line_with_required_fields_and_space_before_crlf(any_server):
    c = RawConn(any_server.host, any_server.port)
    try:
        line = c.expect(rb"INFO (\{[^\r\n]*\}) \r\n").group(1)
    finally:
        c.close()
    info = json.loads(line)
    for key in ("server_id", "server_name", "version", "go", "host", "client_ip"):
        assert isinstance(info.get(key), str) and info[key], key
    assert info["proto"] == 1
    assert info["headers"] is True
    assert info["max_payload"] == 1048576
    assert info["port"] == any_server.port
    assert info["host"] == "127.0.0.1"
    assert info["client_ip"] == "127.0.0.1"
    assert isinstance(info["client_id"], int) and not isinstance(info["client_id"], bool)
    # Go's encoding/json is compact: no blanks after separators.
    assert b'": ' not in line and b'", "' not in line


def test_info_client_id_differs_per_connection(any_server, raw_factory):
    a = raw_factory(any_server)
    b = raw_factory(any_server)
    assert a.info["client_id"] != b.info["client_id"]
    assert a.info["server_id"] == b.info["server_id"]


# -- CONNECT ---------------------------------------------------------------------


def test_connect_echo_false_suppresses_only_self_delivery(any_server, raw_factory):
    me = raw_factory(any_server, b'CONNECT {"verbose":false,"echo":false}\r\nSUB foo 1\r\n')
    other = raw_factory(any_server, QUIET + b"SUB foo 7\r\n")
    t_ping_pong(other)
    me.send(b"PUB foo 2\r\nhi\r\n")
    t_ping_pong(me)
    t_expect_exact(other, b"MSG foo 7 2\r\nhi\r\n")
    other.send(b"PUB foo 3\r\nyou\r\n")
    t_expect_exact(me, b"MSG foo 1 3\r\nyou\r\n")
    t_ping_pong(me)
    assert t_read_all(me, 0.1) == b""


def test_connect_echo_default_delivers_to_self(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_connect_bad_json_closes_silently(any_server, raw_factory):
    for bad in (b'CONNECT {"verbose":fal\r\n', b"CONNECT xyz\r\n", b"CONNECT\r\n",
                b"CONNECT \r\n"):
        c = raw_factory(any_server, bad)
        assert t_read_until_closed(c) == b"", bad


def test_connect_unknown_fields_are_ignored(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"zzz":[1,{"a":2}],"lang":"py",'
                                b'"name":"x","protocol":1}\r\nPING\r\n')
    t_expect_exact(c, b"PONG\r\n")


def test_connect_strings_with_a_lone_surrogate_escape_are_taken(any_server, raw_factory):
    """`\ud800` alone is no character; Go's decoder makes it U+FFFD and
    goes on (gnatsd.py's log prefix failed to encode it and dropped the
    client)."""
    c = raw_factory(any_server, b'CONNECT {"verbose":true,"name":"\\ud800x","lang":"\\udfff"}'
                                b'\r\nPING\r\n')
    t_expect_exact(c, b"+OK\r\nPONG\r\n")


# -- PUB / SUB / MSG -------------------------------------------------------------


def test_pub_sub_msg_exact_bytes(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_pub_with_reply_puts_reply_in_msg(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo bar.baz 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 bar.baz 2\r\nhi\r\nPONG\r\n")


def test_msg_goes_to_subscriber_on_another_connection(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB foo.bar 42\r\n")
    t_ping_pong(sub)
    pub = raw_factory(any_server, QUIET + b"PUB foo.bar r 5\r\nhello\r\n")
    t_ping_pong(pub)
    t_expect_exact(sub, b"MSG foo.bar 42 r 5\r\nhello\r\n")
    assert t_read_all(pub, 0.1) == b""


def test_sub_sid_may_be_any_token(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo abc\r\nPUB foo 1\r\nx\r\n"
                                b"UNSUB abc\r\nPUB foo 1\r\ny\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo abc 1\r\nx\r\nPONG\r\n")


def test_wildcards_star_matches_one_token_gt_matches_one_or_more(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo.* 1\r\nSUB foo.> 2\r\nSUB > 3\r\n"
                                b"SUB *.*.c 4\r\nSUB foo.*.> 5\r\n"
                                b"PUB foo.b 1\r\n1\r\nPUB foo.b.c 1\r\n2\r\n"
                                b"PUB foo 1\r\n3\r\nPUB x.y.c.d 1\r\n4\r\n")
    got = msgs_until_pong(c)
    by_payload = {}
    for subj, sid, reply, payload in got:
        by_payload.setdefault(payload, []).append((subj, sid))
    # Copies of one message are contiguous and messages keep publish order.
    assert [p for p, _ in itertools.groupby(x[3] for x in got)] == \
        [b"1", b"2", b"3", b"4"]
    assert sorted(by_payload[b"1"]) == [(b"foo.b", b"1"), (b"foo.b", b"2"), (b"foo.b", b"3")]
    assert sorted(by_payload[b"2"]) == [(b"foo.b.c", b"2"), (b"foo.b.c", b"3"),
                                        (b"foo.b.c", b"4"), (b"foo.b.c", b"5")]
    assert sorted(by_payload[b"3"]) == [(b"foo", b"3")]
    assert sorted(by_payload[b"4"]) == [(b"x.y.c.d", b"3")]


def test_wildcard_chars_inside_a_token_are_literal(any_server, raw_factory):
    # `foo.>x` and `foo*.bar` are valid literal subjects, not wildcards.
    c = raw_factory(any_server, QUIET + b"SUB foo.>x 2\r\nSUB foo*.bar 3\r\n"
                                b"PUB foo.>x 1\r\n1\r\nPUB foo*.bar 1\r\n2\r\n"
                                b"PUB foo.y 1\r\n3\r\nPUB foox.bar 1\r\n4\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo.>x 2 1\r\n1\r\nMSG foo*.bar 3 1\r\n2\r\nPONG\r\n")


def test_sub_invalid_subjects_get_invalid_subject_and_stay_open(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo..bar 1\r\nSUB foo. 2\r\nSUB .foo 3\r\n"
                                b"SUB foo.>.bar 4\r\nPING\r\n")
    t_expect_exact(c, INVALID_SUBJECT * 4 + b"PONG\r\n")
    # None of them was registered; the connection still works.
    c.send(b"SUB > 9\r\nPUB foo.x.bar 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo.x.bar 9 1\r\nx\r\nPONG\r\n")


def test_pub_to_subject_with_empty_token_is_dropped_silently_without_pedantic(
        any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB > 1\r\nPUB foo..bar 1\r\nx\r\n"
                                b"PUB .foo 1\r\ny\r\nPUB foo. 1\r\nz\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")
    assert t_read_all(c, 0.1) == b""


def test_unsub_stops_delivery(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 1\r\n1\r\nUNSUB 1\r\n"
                                b"PUB foo 1\r\n2\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\n1\r\nPONG\r\n")


def test_unsub_with_max_delivers_max_messages_then_stops(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nUNSUB 1 2\r\nPUB foo 1\r\n1\r\n"
                                b"PUB foo 1\r\n2\r\nPUB foo 1\r\n3\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\n1\r\nMSG foo 1 1\r\n2\r\nPONG\r\n")


def test_unsub_with_max_already_reached_removes_sub_now(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 1\r\n1\r\nPUB foo 1\r\n2\r\n"
                                b"UNSUB 1 1\r\nPUB foo 1\r\n3\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\n1\r\nMSG foo 1 1\r\n2\r\nPONG\r\n")


def test_unsub_with_max_zero_removes_sub_now(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nUNSUB 1 0\r\nPUB foo 1\r\n1\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_unsub_with_non_numeric_max_removes_sub_now(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nUNSUB 1 x\r\nPUB foo 1\r\n1\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_unsub_unknown_sid_is_silent(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"UNSUB 99\r\nUNSUB 98 5\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_sub_with_sid_in_use_is_ignored(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nSUB bar 1\r\nPUB foo 1\r\n1\r\n"
                                b"PUB bar 1\r\n2\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 1\r\n1\r\nPONG\r\n")


def test_queue_sub_msg_has_no_queue_name(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo bar 1\r\nPUB foo r 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 r 1\r\nx\r\nPONG\r\n")


def test_queue_groups_get_one_copy_per_group_and_spread_over_members(any_server, raw_factory):
    a = raw_factory(any_server, QUIET + b"SUB work q 1\r\n")
    b = raw_factory(any_server, QUIET + b"SUB work q 2\r\n")
    other = raw_factory(any_server, QUIET + b"SUB work other 3\r\n")
    plain = raw_factory(any_server, QUIET + b"SUB work 4\r\n")
    for c in (a, b, other, plain):
        t_ping_pong(c)
    pub = raw_factory(any_server, QUIET + b"".join(
        b"PUB work 3\r\n%03d\r\n" % i for i in range(200)))
    t_ping_pong(pub)
    want = [b"%03d" % i for i in range(200)]
    assert [m[3] for m in read_msgs(plain, 200)] == want
    assert [m[3] for m in msgs_until_pong(other)] == want
    got_a = [m[3] for m in msgs_until_pong(a)]
    got_b = [m[3] for m in msgs_until_pong(b)]
    assert sorted(got_a + got_b) == want           # each message exactly once
    assert got_a and got_b                         # both members got some
    assert got_a == sorted(got_a) and got_b == sorted(got_b)


def test_payload_containing_crlf_is_delivered_verbatim(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 6\r\na\r\nb\r\n\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 6\r\na\r\nb\r\n\r\nPONG\r\n")


def test_empty_payload(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 0\r\n\r\nPUB foo r 0\r\n\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 0\r\n\r\nMSG foo 1 r 0\r\n\r\nPONG\r\n")


def test_pub_size_with_leading_zero_is_echoed_verbatim(any_server, raw_factory):
    # Go copies the size token from the PUB line into the MSG line.
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 02\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 02\r\nhi\r\nPONG\r\n")


def test_ops_are_case_insensitive(any_server, raw_factory):
    c = raw_factory(any_server, b'connect {"verbose":false}\r\nSub foo 1\r\npub foo 2\r\nhi\r\n'
                                b'uNsUb 1\r\nPuB foo 1\r\nx\r\nsub bar 2\r\nPUB bar 1\r\ny\r\nping\r\n')
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nMSG bar 2 1\r\ny\r\nPONG\r\n")


def test_tabs_and_repeated_spaces_separate_args(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB\tfoo \t 1\r\nPUB  foo\t\tbar   2\r\nhi\r\n"
                                b"SUB\t\tbaz  q\t 2\r\nPUB baz 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 bar 2\r\nhi\r\nMSG baz 2 1\r\nx\r\nPONG\r\n")


def test_trailing_blanks_before_crlf_are_ignored(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1 \r\nPUB foo 2\t\r\nhi\r\nPING \r\n")
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_transcript_split_at_every_byte(any_server, raw_factory):
    c = raw_factory(any_server, None)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transcript = (b'CONNECT {"verbose":true,"pedantic":false,"headers":true}\r\n'
                  b"SUB foo.* 1\r\nPUB foo.bar reply 5\r\nhe\r\no\r\n"
                  b"HPUB foo.baz 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 1\r\n"
                  b"PUB foo.bar 2\r\nno\r\nPING\r\n")
    for i in range(len(transcript)):
        c.send(transcript[i:i + 1])
        time.sleep(0.0005)  # no fact to wait for: give the server a read per byte
    t_expect_exact(c, b"+OK\r\n+OK\r\n+OK\r\nMSG foo.bar 1 reply 5\r\nhe\r\no\r\n"
                      b"+OK\r\nHMSG foo.baz 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
                      b"+OK\r\n+OK\r\nPONG\r\n")


def test_pipelined_10000_pubs_in_one_send_are_delivered_in_order(any_server, raw_factory):
    sub = raw_factory(any_server, QUIET + b"SUB foo 1\r\n")
    t_ping_pong(sub)
    n = 10000
    pub = raw_factory(any_server, QUIET + b"".join(
        b"PUB foo 5\r\n%05d\r\n" % i for i in range(n)) + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n", timeout=20)
    t_expect_exact(sub, b"".join(b"MSG foo 1 5\r\n%05d\r\n" % i for i in range(n)), timeout=20)
    t_ping_pong(sub)


def test_bare_lf_ends_control_lines(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false}\nSUB foo 1\nPUB foo 2\nhi\r\nPING\n')
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_payload_followed_by_bare_lf_is_unknown_op_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\nPUB foo 2\nhi\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


# -- bad input ---------------------------------------------------------------------


def test_unknown_op_sends_unknown_protocol_operation_and_closes(any_server, raw_factory):
    for bad in (b"FOO bar\r\n", b"\r\n", b" PING\r\n", b"PIN\r\n", b"SUBX foo 1\r\n"):
        c = raw_factory(any_server, QUIET + bad)
        assert t_read_until_closed(c) == UNKNOWN_OP, bad


def test_unknown_op_before_connect_sends_err_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, b"FOO bar\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_pub_payload_longer_than_size_is_unknown_op_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 2\r\nhello\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_pub_payload_not_followed_by_crlf_is_unknown_op_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"PUB foo 2\r\nhiXY")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_pub_zero_size_without_empty_payload_line_is_unknown_op(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"PUB foo 0\r\nPING\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_pub_bad_size_closes_silently(any_server, raw_factory):
    for bad in (b"PUB foo x\r\n", b"PUB foo -1\r\n", b"PUB foo r 1x\r\n"):
        c = raw_factory(any_server, QUIET + bad)
        assert t_read_until_closed(c) == b"", bad


def test_pub_wrong_arg_count_closes_silently(any_server, raw_factory):
    for bad in (b"PUB foo\r\n", b"PUB \r\n", b"PUB foo a b 2\r\n"):
        c = raw_factory(any_server, QUIET + bad)
        assert t_read_until_closed(c) == b"", bad


def test_pub_without_args_is_unknown_op(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"PUB\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_sub_wrong_arg_count_closes_silently(any_server, raw_factory):
    for bad in (b"SUB foo\r\n", b"SUB \r\n", b"SUB foo a b c\r\n"):
        c = raw_factory(any_server, QUIET + bad)
        assert t_read_until_closed(c) == b"", bad


def test_sub_without_args_is_unknown_op(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_unsub_missing_args(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"UNSUB\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP
    c = raw_factory(any_server, QUIET + b"UNSUB \r\n")
    assert t_read_until_closed(c) == b""


def test_msg_from_client_is_unknown_op_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"MSG foo 1 2\r\nhi\r\n")
    assert t_read_until_closed(c) == UNKNOWN_OP


def test_err_from_client_closes_silently(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"-ERR 'boom'\r\n")
    assert t_read_until_closed(c) == b""


def test_ok_info_and_pong_from_client_are_ignored(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b'+OK\r\nINFO {"x":1}\r\nPONG\r\nPING\r\n')
    t_expect_exact(c, b"PONG\r\n")
    assert t_read_all(c, 0.1) == b""


def test_bad_clients_never_affect_a_canary(any_server, raw_factory):
    canary = raw_factory(any_server, QUIET + b"SUB canary 1\r\n")
    t_ping_pong(canary)
    bad_inputs = [
        (b"FOO bar\r\n", UNKNOWN_OP),
        (b"SUB canary 2\r\nPUB canary 2\r\nhello\r\n", UNKNOWN_OP),
        (b"MSG canary 1 2\r\nhi\r\n", UNKNOWN_OP),
        (b"CONNECT {bad\r\n", b""),
        (b"-ERR 'boom'\r\n", b""),
        (b"PUB canary x\r\n", b""),
        (b"PUB canary 1048577\r\n", b"-ERR 'Maximum Payload Violation'\r\n"),
    ]
    for bad, answer in bad_inputs:
        c = raw_factory(any_server, QUIET + bad)
        assert t_read_until_closed(c) == answer, bad
    # One that just vanishes mid-payload.
    gone = raw_factory(any_server, QUIET + b"PUB canary 10\r\nabc")
    t_ping_pong(canary)
    gone.close()
    assert t_read_all(canary, 0.1) == b""
    pub = raw_factory(any_server, QUIET + b"PUB canary 5\r\nalive\r\n")
    t_ping_pong(pub)
    t_expect_exact(canary, b"MSG canary 1 5\r\nalive\r\n")
    t_ping_pong(canary)
