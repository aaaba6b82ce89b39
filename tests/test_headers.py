"""HPUB/HMSG and no_responders, as nats-server 2.x answers them.

Learnt from Go (2.9 and 2.15 agree unless noted):
* HPUB needs CONNECT `headers:true` (the default is false); without it the
  connection is closed silently (log: "message headers not supported").
* A subscriber whose CONNECT did not announce headers gets the message with
  the header block cut off: `MSG subj sid [reply] <total-hdr>`.
* HPUB with header size 0 is delivered as a plain MSG; header bytes are not
  validated (anything goes, as long as the sizes add up).
* no_responders: a PUB/HPUB with a reply subject that nobody is subscribed to
  makes the server send `HMSG <reply> <sid> 16 16\\r\\nNATS/1.0 503\\r\\n\\r\\n\\r\\n`
  to the *publisher's own* subscription on the reply subject, only if its
  CONNECT sent headers:true and no_responders:true.  2.12+ adds a
  `Nats-Subject: <subject>` header (2.15.1: `HMSG r 9 35 35\\r\\nNATS/1.0 503\\r\\n
  Nats-Subject: foo\\r\\n\\r\\n\\r\\n`), as gnatsd.py does; the tests accept both
  forms.
  no_responders without headers: `-ERR 'no responders requires headers support'`
  and close.
"""
from __future__ import annotations

import re

from conftest import (t_expect, t_expect_exact, t_ping_pong, t_read_all,
                      t_read_until_closed)

HDRS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
NOHDRS = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
NR = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
H = b"NATS/1.0\r\nA: B\r\n\r\n"  # 18 bytes


def no_responders_re(reply: bytes, sid: bytes, subject: bytes):
    """The 503 status message; 2.12+ adds a Nats-Subject header."""
    return re.compile(rb"HMSG %s %s (\d+) \1\r\nNATS/1\.0 503\r\n(?:Nats-Subject: %s\r\n)?\r\n\r\n"
                      % (re.escape(reply), re.escape(sid), re.escape(subject)))


def expect_no_responders(conn, reply: bytes, sid: bytes, subject: bytes):
    m = t_expect(conn, no_responders_re(reply, sid, subject))
    hdr = m.group(0)[m.group(0).index(b"\r\n") + 2:-2]
    assert int(m.group(1)) == len(hdr)


# -- HPUB / HMSG -----------------------------------------------------------------


def test_hpub_delivers_hmsg_exact_bytes(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 18 20\r\n" + H + b"hi\r\n"
                                b"HPUB foo rep 18 20\r\n" + H + b"hi\r\nPING\r\n")
    t_expect_exact(c, b"HMSG foo 1 18 20\r\n" + H + b"hi\r\n"
                      b"HMSG foo 1 rep 18 20\r\n" + H + b"hi\r\nPONG\r\n")


def test_hpub_header_only_message(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\n")
    t_expect_exact(c, b"HMSG foo 1 12 12\r\nNATS/1.0\r\n\r\n\r\nPONG\r\n")


def test_hpub_payload_containing_crlf(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 16 20\r\nNATS/1.0\r\nA:\r\n\r\n"
                                b"\r\n\r\n\r\nPING\r\n")
    t_expect_exact(c, b"HMSG foo 1 16 20\r\nNATS/1.0\r\nA:\r\n\r\n\r\n\r\n\r\nPONG\r\n")


def test_hpub_with_zero_header_size_is_delivered_as_msg(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 0 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_hpub_header_bytes_are_passed_through_unchecked(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 4 6\r\nABCDhi\r\nPING\r\n")
    t_expect_exact(c, b"HMSG foo 1 4 6\r\nABCDhi\r\nPONG\r\n")


def test_hpub_to_subscriber_without_headers_strips_headers(any_server, raw_factory):
    plain = raw_factory(any_server, NOHDRS + b"SUB foo 1\r\n")
    aware = raw_factory(any_server, HDRS + b"SUB foo 1\r\n")
    t_ping_pong(plain)
    t_ping_pong(aware)
    pub = raw_factory(any_server, HDRS + b"HPUB foo rep 18 20\r\n" + H + b"hi\r\n"
                                  b"HPUB foo 18 18\r\n" + H + b"\r\n")
    t_ping_pong(pub)
    t_expect_exact(plain, b"MSG foo 1 rep 2\r\nhi\r\nMSG foo 1 0\r\n\r\n")
    t_expect_exact(aware, b"HMSG foo 1 rep 18 20\r\n" + H + b"hi\r\nHMSG foo 1 18 18\r\n" + H
                   + b"\r\n")
    t_ping_pong(plain)
    assert t_read_all(plain, 0.1) == b""


def test_pub_to_header_aware_subscriber_is_plain_msg(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nPUB foo r 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 r 2\r\nhi\r\nPONG\r\n")


def test_hpub_with_headers_false_closes_silently(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"headers":false}\r\n'
                                b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    assert t_read_until_closed(c) == b""


def test_hpub_without_headers_in_connect_closes_silently(any_server, raw_factory):
    c = raw_factory(any_server, NOHDRS + b"SUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    assert t_read_until_closed(c) == b""


def test_hpub_before_connect_closes_silently(any_server, raw_factory):
    c = raw_factory(any_server, b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    assert t_read_until_closed(c) == b""


def test_hpub_header_size_above_total_closes_silently(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"HPUB foo 14 12\r\n")
    assert t_read_until_closed(c) == b""


def test_hpub_bad_args_close_silently(any_server, raw_factory):
    for bad in (b"HPUB foo x 12\r\n", b"HPUB foo 12\r\n", b"HPUB foo 12 x\r\n"):
        c = raw_factory(any_server, HDRS + bad)
        assert t_read_until_closed(c) == b"", bad


def test_hpub_wrong_total_size_is_unknown_op_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB foo 1\r\nHPUB foo 18 19\r\n" + H + b"hi\r\n")
    assert t_read_until_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"


# -- no_responders ------------------------------------------------------------------


def test_no_responders_sends_503_to_publishers_reply_sub(any_server, raw_factory):
    c = raw_factory(any_server, NR + b"SUB r 9\r\nPUB foo r 2\r\nhi\r\n")
    expect_no_responders(c, b"r", b"9", b"foo")
    t_ping_pong(c)
    assert t_read_all(c, 0.1) == b""


def test_no_responders_for_hpub(any_server, raw_factory):
    c = raw_factory(any_server, NR + b"SUB r 9\r\nHPUB foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    expect_no_responders(c, b"r", b"9", b"foo")
    t_ping_pong(c)


def test_no_responders_with_verbose_comes_after_pub_ok(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true,"headers":true,"no_responders":true}'
                                b"\r\nSUB r 9\r\nPUB foo r 2\r\nhi\r\n")
    t_expect_exact(c, b"+OK\r\n+OK\r\n+OK\r\n")
    expect_no_responders(c, b"r", b"9", b"foo")
    t_ping_pong(c)


def test_no_responders_not_sent_when_a_subscriber_exists(any_server, raw_factory):
    c = raw_factory(any_server, NR + b"SUB foo 1\r\nSUB r 9\r\nPUB foo r 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 r 2\r\nhi\r\nPONG\r\n")


def test_no_responders_not_sent_without_reply(any_server, raw_factory):
    c = raw_factory(any_server, NR + b"SUB r 9\r\nPUB foo 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_no_responders_not_sent_unless_asked(any_server, raw_factory):
    c = raw_factory(any_server, HDRS + b"SUB r 9\r\nPUB foo r 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_no_responders_goes_only_to_the_publisher(any_server, raw_factory):
    other = raw_factory(any_server, HDRS + b"SUB r 5\r\n")
    t_ping_pong(other)
    c = raw_factory(any_server, NR + b"PUB foo r 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")
    t_ping_pong(other)
    assert t_read_all(other, 0.1) == b""
    assert t_read_all(c, 0.1) == b""


def test_no_responders_goes_to_a_plain_reply_sub_not_a_queue_one(any_server, raw_factory):
    # Go's subForReply looks at plain subscriptions only (the Go
    # differential fuzzer's find: echo off, the reply subscribed as a queue).
    c = raw_factory(any_server, NR + b"SUB r q 9\r\nPUB foo r 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\n")
    c.send(b"SUB r 7\r\nPUB foo r 2\r\nhi\r\n")
    expect_no_responders(c, b"r", b"7", b"foo")
    t_ping_pong(c)


def test_no_responders_without_headers_sends_err_and_closes(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"no_responders":true}\r\n')
    assert t_read_until_closed(c) == b"-ERR 'no responders requires headers support'\r\n"
