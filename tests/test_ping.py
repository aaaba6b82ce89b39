"""PING/PONG, both ways, as nats-server 2.x does it (2.9 and 2.15 agree).

* Every client PING gets a PONG, before or after CONNECT, in order with the
  MSGs the earlier commands caused.
* The server PINGs every ping_interval; with `ping_max: 1` a client that
  leaves the first PING unanswered gets, at the next tick,
  `-ERR 'Stale Connection'` and is closed:  ~1 s `PING\\r\\n`, ~2 s
  `-ERR 'Stale Connection'\\r\\n`, close.  A client that answers stays.
* Without a config the Go servers send an early PING ~2 s after connect; the
  `t_*` helpers answer it, so the other tests do not depend on it.
"""
from __future__ import annotations

import time

from conftest import t_expect_exact, t_read_all, write_conf

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


def test_ping_before_connect_gets_pong(any_server, raw_factory):
    c = raw_factory(any_server, b"PING\r\n")
    t_expect_exact(c, b"PONG\r\n")


def test_every_pipelined_ping_gets_a_pong(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"PING\r\n" * 5)
    t_expect_exact(c, b"PONG\r\n" * 5)
    assert t_read_all(c, 0.1) == b""


def test_pong_follows_msgs_caused_by_earlier_commands(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPING\r\nPUB foo 1\r\na\r\nPING\r\n"
                                b"PUB foo 1\r\nb\r\nPING\r\n")
    t_expect_exact(c, b"PONG\r\nMSG foo 1 1\r\na\r\nPONG\r\nMSG foo 1 1\r\nb\r\nPONG\r\n")


def test_unanswered_pings_end_in_stale_connection_answered_pings_do_not(any_server_with,
                                                                         tmp_path, raw_factory):
    srv = any_server_with("-c", write_conf(tmp_path, 'ping_interval: "1s"\nping_max: 1\n'))
    start = time.monotonic()
    quiet = raw_factory(srv, QUIET)
    lively = raw_factory(srv, QUIET)
    seen = bytearray()
    pings_answered = 0
    first_ping_at = None
    while not quiet.closed and time.monotonic() - start < 6:
        if quiet._fill(time.monotonic() + 0.02) and first_ping_at is None:
            first_ping_at = time.monotonic() - start
        if lively._fill(time.monotonic() + 0.02):
            # Raw reads here: the t_* helpers would hide the PINGs under test.
            while b"PING\r\n" in lively.buf:
                i = lively.buf.index(b"PING\r\n")
                seen += lively.buf[:i]
                del lively.buf[:i + 6]
                lively.send(b"PONG\r\n")
                pings_answered += 1
    elapsed = time.monotonic() - start
    assert quiet.closed, "stale client was not closed; got %r" % bytes(quiet.buf)
    assert bytes(quiet.buf) == b"PING\r\n-ERR 'Stale Connection'\r\n"
    assert 0.5 <= first_ping_at <= 2.5, first_ping_at
    assert 1.5 <= elapsed <= 5.0, elapsed
    # The one that answered is still there and has been pinged and nothing else.
    assert pings_answered >= 1
    assert bytes(seen) == b""
    lively.send(b"PING\r\n")
    lively.expect(rb"(?:PING\r\n)?PONG\r\n")
    assert not lively.closed

