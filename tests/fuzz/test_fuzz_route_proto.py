"""Fuzz the route protocol parser (chapter 8: Route.parse / process_op).

A live in-process server with a cluster port and a local client
subscribed to a few subjects (plain, wildcard and queue), whose socket a
thread keeps draining.  For each input we connect to the route port as a
peer server would (CONNECT, read the server's INFO, our INFO, wait for
its PING), then hand the input (valid and broken RS+ / RS- / RMSG / HMSG
/ PING / PONG / INFO / CONNECT / -ERR lines and junk) to the server's
`Route.process_input` on the loop thread: once whole on one route, chunk
by chunk (split at random points) on another.  Both must answer the same
bytes and end the same way; nothing may be logged as an unexpected error.
"""
from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time

import pytest
from hypothesis import given, strategies as st

from conftest import import_gnatsd
from fuzzing import (FUZZ_SETTINGS, capture_errors, feed_on_loop, read_to_close, release_errors,
                     run_fuzzer)

g = import_gnatsd()

CLUSTER = "fuzz"
ACCOUNTS = st.sampled_from([b"$G", b"$G", b"$G", b"$SYS", b"NOPE", b""])
TOKENS = st.sampled_from([b"foo", b"bar", b"a", b"*", b">", b""])
SUBJECTS = st.lists(TOKENS, min_size=1, max_size=3).map(b".".join)
QUEUES = st.sampled_from([b"q", b"w", b"+", b"|"])
SP = st.sampled_from([b" ", b" ", b"  ", b"\t"])
EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b""])
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.text(max_size=5),
                        st.lists(st.text(max_size=5), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
INFO_KEYS = st.sampled_from(["server_id", "server_name", "cluster", "cluster_dynamic", "headers",
                             "connect_urls", "ip", "route_account", "port", "host", "lnoc",
                             "info_on_connect", "gossip_mode", "nonce", "x"])

_peer_ids = itertools.count(1)


@st.composite
def rmsg(draw):
    hmsg = draw(st.integers(0, 3)) == 0
    hdr = draw(st.sampled_from([b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nK: v\r\n\r\n"])) if hmsg \
        else b""
    payload = hdr + draw(st.binary(max_size=30))
    parts = [b"HMSG" if hmsg else draw(st.sampled_from([b"RMSG", b"rmsg"])),
             draw(ACCOUNTS), draw(SUBJECTS)]
    mode = draw(st.integers(0, 3))
    if mode == 1:
        parts.append(draw(SUBJECTS))                      # reply
    elif mode == 2:
        parts += [b"+", draw(SUBJECTS)] + draw(st.lists(QUEUES, max_size=2))
    elif mode == 3:
        parts += [b"|"] + draw(st.lists(QUEUES, min_size=0, max_size=2))
    if hmsg:
        parts.append(b"%d" % len(hdr))
    size = len(payload)
    lie = draw(st.integers(0, 10))
    if lie == 1:
        size += draw(st.integers(-3, 3))
    parts.append(b"%d" % max(size, 0) if lie != 2 else draw(st.sampled_from(
        [b"x", b"-1", b"", b"99999999999999999999", b"1_0", b"\xd9\xa3"])))
    if lie == 3:
        parts = parts[:draw(st.integers(1, len(parts)))]
    line = b" ".join(parts) if lie != 4 else draw(SP).join(parts)
    tail = b"\r\n" if lie != 5 else draw(st.sampled_from([b"", b"\n", b"xx", b"\r"]))
    return line + b"\r\n" + payload + tail


@st.composite
def rs_op(draw):
    parts = [draw(st.sampled_from([b"RS+", b"RS-", b"rs+", b"LS+", b"LS-"])), draw(ACCOUNTS),
             draw(SUBJECTS)]
    if draw(st.booleans()):
        parts.append(draw(QUEUES))
        if draw(st.booleans()):
            parts.append(draw(st.sampled_from([b"1", b"3", b"0", b"-2", b"x", b"9" * 30])))
    if draw(st.integers(0, 8)) == 0:
        parts = parts[:draw(st.integers(1, len(parts)))]
    return draw(SP).join(parts) + draw(EOL)


@st.composite
def json_op(draw, peer_id: str = "PEER"):
    op = draw(st.sampled_from([b"INFO", b"CONNECT"]))
    fields = draw(st.dictionaries(INFO_KEYS, JSON_VALUES, max_size=4))
    if draw(st.booleans()):
        fields["server_id"] = draw(st.sampled_from([peer_id, "OTHER", "", 7, None]))
    if "ip" in fields and isinstance(fields["ip"], str):
        # Never make the server dial: a URL without a host fails to parse.
        # (A host name here would be resolved on the loop thread, blocking
        # it: see RECORD.md and test_fuzz_regressions.py.)
        fields["ip"] = "nats://:4222"
    body = json.dumps(fields).encode()
    if draw(st.integers(0, 6)) == 0:
        body = draw(st.sampled_from([b"{", b"[]", b"1", b"null", b"[" * 3000, b"",
                                     b'{"lang":"go"}']))
    return op + b" " + body + draw(EOL)


JUNK = st.one_of(
    st.binary(max_size=25),
    st.sampled_from([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'x'\r\n", b"\r\n", b"\n",
                     b"MSG foo 1 0\r\n\r\n", b"PUB foo 0\r\n\r\n", b"SUB foo 1\r\n",
                     # (the long line starts a line of its own: a known op's
                     # line over 64 KiB is refused when split, on purpose)
                     b"RMSG $G foo 5000\r\n", b"PING\r\n" + b"R" * 70000,
                     b"RS+ $G " + b"a" * 5000 + b"\r\n",
                     b"RMSG\r\n", b"HMSG $G foo 10 5\r\n12345\r\n", b"RS+\r\n", b"RS-\r\n"]),
)


@st.composite
def stream_and_splits(draw):
    ops = draw(st.lists(st.one_of(rmsg(), rmsg(), rs_op(), rs_op(), json_op(), JUNK),
                        min_size=1, max_size=20))
    data = b"".join(ops)
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=10, unique=True))
    if draw(st.integers(0, 4)) == 0 and len(data) < 300:
        cuts = list(range(1, len(data)))
    cuts = sorted(c for c in cuts if 0 < c < len(data))
    return data, [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# -- a peer server on the route port ----------------------------------------------


class Peer:
    def __init__(self, server):
        self.server = server
        self.id = "FUZZPEER%d" % next(_peer_ids)
        self.sock = socket.create_connection(("127.0.0.1", server.cluster.port), timeout=5)
        self.buf = bytearray()
        connect = {"echo": True, "verbose": False, "pedantic": False, "tls_required": False,
                   "headers": True, "name": self.id, "cluster": CLUSTER}
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        self.read_until(b"INFO ")
        info = {"server_id": self.id, "server_name": self.id, "cluster": CLUSTER,
                "headers": True, "port": 1, "host": "127.0.0.1"}
        self.sock.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
        self.read_until(b"PING\r\n")
        self.buf.clear()
        self.route = server.call_in_loop(lambda: server.cluster.routes.get(self.id))
        assert self.route is not None, "route not registered"

    def read_until(self, marker: bytes):
        deadline = time.monotonic() + 5
        while marker not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            assert chunk, "route closed during the handshake: %r" % bytes(self.buf)
            self.buf += chunk
        del self.buf[:self.buf.index(marker) + len(marker)]

    def feed(self, chunks) -> bool:
        """Hand `chunks` to the route as separate reads; close it. True if
        the input closed it."""
        return feed_on_loop(self.server, self.route, chunks)[0]

    def output(self) -> bytes:
        return read_to_close(self.sock, self.buf)


@pytest.fixture(scope="module")
def server():
    # The server's own $SYS messages (STATSZ: a heartbeat every 0.25 s at
    # first, and one at once, at most a second apart, for a peer that starts
    # listening) would reach a fuzzed route whose RS+ took `$SYS >`, in one
    # of the two runs and not the other: none while fuzzing.
    saved = g.SYS_STATSZ_FIRST, g.SYS_STATSZ_MIN_GAP
    g.SYS_STATSZ_FIRST = g.SYS_STATSZ_MIN_GAP = 3600.0
    srv = g.Server(g.Options(host="127.0.0.1", port=-1, cluster_host="127.0.0.1",
                             cluster_port=-1, cluster_name=CLUSTER)).start()
    deadline = time.monotonic() + 5
    while not srv.cluster.port and time.monotonic() < deadline:
        time.sleep(0.01)
    errors = capture_errors(g)
    sub = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sub.recv(4096)
    sub.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nSUB foo 1\r\nSUB foo.> 2\r\n'
                b"SUB * q 3\r\nSUB * q 4\r\nSUB bar w 5\r\nPING\r\n")
    stop = threading.Event()

    def drain():
        sub.settimeout(0.2)
        while not stop.is_set():
            try:
                if not sub.recv(1 << 20):
                    return
            except socket.timeout:
                continue
            except OSError:
                return
    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    srv.errors = errors
    yield srv
    stop.set()
    sub.close()
    release_errors(g, errors)
    srv.shutdown()
    g.SYS_STATSZ_FIRST, g.SYS_STATSZ_MIN_GAP = saved
    random.seed()   # the inputs seeded the module RNG; leave it random again


def test_fuzz_route_parser(server):
    count = [0]

    @FUZZ_SETTINGS
    @given(stream_and_splits())
    def prop(case):
        count[0] += 1
        data, chunks = case
        random.seed(count[0])
        whole = Peer(server)
        whole_closed = whole.feed([data])
        whole_out = whole.output()
        split = Peer(server)
        split_closed = split.feed(chunks)
        split_out = split.output()
        server.errors.check()
        assert split_out == whole_out, "whole: %r\nsplit: %r" % (whole_out[:400], split_out[:400])
        assert split_closed == whole_closed

    assert run_fuzzer("route-proto", prop, count) > 0
