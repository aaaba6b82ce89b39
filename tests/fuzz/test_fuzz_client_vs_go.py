"""Fuzz the client protocol against the Go server: the same bytes must get
the same answer from gnatsd.py and from Go 2.15.

The reference parse here is Go's own.  Both servers run as processes;
each input (the client-proto fuzzer's ops, valid, broken and junk, joined
into one stream) goes to a fresh connection of each, the client then
half-closes (shutdown SHUT_WR) and reads until the server closes.  What
each sent after its INFO must be byte for byte the same: MSGs, +OKs,
-ERRs, PONGs, and where the stream ends.  Queue groups are left out of the
ops (one connection's queue members are picked at random, differently by
each server); everything else is the client-proto fuzzer's generator.

One Go quirk is evened out before comparing: when a PUB's payload is not
all in the read that holds its line, Go parses the line again
(clonePubArg) and so says -ERR 'Invalid Publish Subject' twice for a
pedantic client; gnatsd.py says it once.  Runs of that -ERR count as one.
And one Go randomness: a message for two subscriptions of the connection
on one sublist node goes out in the order Go's map iterates, so a
message's deliveries are compared in sid order (deliveries_in_any_order).
"""
from __future__ import annotations

import random
import socket
import threading

import pytest
from hypothesis import given, strategies as st

from conftest import GO_SERVERS, RawConn, start_gnatsd, start_go
from fuzzing import (FUZZ_SETTINGS, deliveries_in_any_order, even_out, read_to_close,
                     run_fuzzer)
from test_fuzz_client_proto import (JUNK, SIDS, SPACES, _line, connect_op, pub_op, unsub_op)

QUIET = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


# The client-proto fuzzer's subject tokens but `x y`, which makes a SUB
# line a queue subscription.
PLAIN_SUBJECTS = st.lists(st.sampled_from([b"foo", b"bar", b"a", b"b", b"*", b">", b"",
                                           b"_INBOX"]),
                          min_size=1, max_size=4).map(b".".join)


@st.composite
def plain_sub_op(draw):
    parts = [draw(st.sampled_from([b"SUB", b"sub"])), draw(PLAIN_SUBJECTS), draw(SIDS)]
    if draw(st.integers(0, 20)) == 0:
        parts = parts[:draw(st.integers(1, len(parts)))]
    return draw(SPACES).join(parts)


OPS = st.one_of(
    pub_op(), pub_op(), pub_op(headers=True),
    _line(plain_sub_op()), _line(plain_sub_op()), _line(unsub_op()),
    st.sampled_from([b"PING\r\n", b"PONG\r\n", b"ping\r\n", b"PING \r\n", b"PONG\n"]),
    _line(connect_op()),
    JUNK,
)


@st.composite
def stream(draw, opening: bytes = QUIET) -> bytes:
    ops = draw(st.lists(OPS, min_size=1, max_size=25))
    if draw(st.integers(0, 3)):
        ops.insert(0, opening)
    return b"".join(ops)


# The servers' settings, each fuzzed on its own: the defaults; tight limits
# (so payload, control line and subscription errors come often); users
# with permissions; and accounts with stream and service imports (the
# stream usually opens with a good login).
LIMITS = "max_payload: 40\nmax_control_line: 64\nmax_subscriptions: 3\n"
PERMISSIONS = """authorization {
  users = [
    {user: a, password: b, permissions: {
        publish: {allow: ["foo", "foo.>", "a.*"], deny: ["foo.bar"]},
        subscribe: {allow: ["foo.*", "a", "b.>"], deny: ["foo.b"]}}}
    {user: c, password: d}
  ]
}
"""
ACCOUNTS = """accounts {
  A {
    users = [{user: a, password: b}]
    exports = [{stream: "foo.>"}, {service: "a.*"}]
    imports = [{stream: {account: B, subject: "bar"}, prefix: "in"},
               {service: {account: B, subject: "b.a"}, to: "foo.b"}]
  }
  B {
    users = [{user: c, password: d}]
    exports = [{stream: "bar"}, {service: "b.a"}]
    imports = [{service: {account: A, subject: "a.*"}}]
  }
}
"""
VARIANTS = {
    "defaults": ("", QUIET),
    "limits": (LIMITS, QUIET),
    "permissions": (PERMISSIONS, b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                                 b'"user":"a","pass":"b"}\r\n'),
    "accounts": (ACCOUNTS, b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                           b'"no_responders":true,"user":"a","pass":"b"}\r\n'),
}


def answer(server, data: bytes) -> bytes:
    """Everything `server` sends after INFO to a client that sends `data`
    and then half-closes, up to the server's close."""
    sock = socket.create_connection((server.host, server.port), timeout=5)
    try:
        buf = bytearray()
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "%s closed before INFO" % server.kind
            buf += chunk
        assert buf.startswith(b"INFO ")
        del buf[:buf.index(b"\r\n") + 2]
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass                    # closed by the server halfway: read what it said
        return read_to_close(sock, buf, server.kind)
    finally:
        sock.close()


def start_both(tmp_path, conf: str) -> tuple:
    if "2.15" not in GO_SERVERS:
        pytest.skip("Go nats-server 2.15 is not installed")
    args = ()
    if conf:
        path = tmp_path / "fuzz.conf"
        path.write_text(conf)
        args = ("-c", str(path))
    return start_gnatsd(*args), start_go(*args, version="2.15")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    ours, go = start_both(tmp_path_factory.mktemp("vs-go"), "")
    yield ours, go
    ours.stop()
    go.stop()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fuzz_client_protocol_answers_as_go_does(tmp_path, variant):
    conf, opening = VARIANTS[variant]
    ours, go = start_both(tmp_path, conf)
    count = [0]

    @FUZZ_SETTINGS
    @given(stream(opening))
    def prop(data):
        count[0] += 1
        want = deliveries_in_any_order(even_out(answer(go, data)))
        got = deliveries_in_any_order(even_out(answer(ours, data)))
        assert got == want, "input %r\nGo:        %r\ngnatsd.py: %r" % (
            data[:600], want[:600], got[:600])

    try:
        assert run_fuzzer("client-vs-go " + variant, prop, count) > 0
    finally:
        ours.stop()
        go.stop()



# Streams for deliver_pub_batch (tests/test_hot_path.py): after a warm-up,
# thousands of PUBs on 16 subjects with sizes that vary, which the hot path
# takes a window at a time, and now and then what must end a batch there.
BATCH_SUBJECTS = [b"hot.%d" % n for n in range(16)]


def batch_stream(seed: int) -> bytes:
    """The connection listens to its own subjects (hot.>, and at times a
    second subscription on one of them, so a message gets two MSGs); among
    the PUBs: a payload holding an LF, a reply, an HPUB, a PING, a SUB or
    UNSUB, a size not seen before.  (Not a payload without its CRLF: Go
    may close before its last writes are out; test_hot_path has that.)"""
    rnd = random.Random(seed)
    ops = [QUIET, b"SUB hot.> 1\r\n"]
    ops += [b"PUB %s %d\r\n%s\r\n" % (BATCH_SUBJECTS[n % 16], n, b"w" * n) for n in range(121)]
    for k in range(rnd.randint(300, 3000)):
        subject = rnd.choice(BATCH_SUBJECTS)
        payload = bytes(rnd.choice(b"ab \r.PUB 12") for _ in range(rnd.randint(0, 120)))
        roll = rnd.random()
        if roll < 0.003:
            payload += b"\n" + payload
        elif roll < 0.0015 * 3:
            ops.append(b"PUB %s _INBOX.%d %d\r\n%s\r\n" % (subject, k, len(payload), payload))
            continue
        elif roll < 0.0015 * 4:
            ops.append(b"HPUB %s 12 %d\r\nNATS/1.0\r\n\r\n%s\r\n"
                       % (subject, 12 + len(payload), payload))
            continue
        elif roll < 0.0015 * 5:
            ops.append(b"PING\r\n")
        elif roll < 0.0015 * 6:
            ops.append(b"SUB %s %d\r\n" % (subject, rnd.randint(2, 5)))
        elif roll < 0.0015 * 7:
            ops.append(b"UNSUB %d\r\n" % rnd.randint(2, 5))
        elif roll < 0.0015 * 8:
            payload = b"n" * rnd.randint(121, 300)
        ops.append(b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload))
    return b"".join(ops) + b"PING\r\n"


def answer_while_sending(server, data: bytes) -> bytes:
    """answer(), reading while a thread sends: the connection hears much
    of what it sends, and a server whose writes stall would drop it as a
    slow consumer."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    buf = bytearray()
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "%s closed before INFO" % server.kind
        buf += chunk
    del buf[:buf.index(b"\r\n") + 2]

    def send():
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass                    # closed by the server halfway
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return read_to_close(sock, buf, server.kind, timeout=20)
    finally:
        sender.join(5)


def test_fuzz_many_subject_streams_answer_as_go_does(servers):
    ours, go = servers
    count = [0]

    @FUZZ_SETTINGS
    @given(st.integers(0, 2 ** 32 - 1))
    def prop(seed):
        count[0] += 1
        data = batch_stream(seed)
        want = deliveries_in_any_order(even_out(answer_while_sending(go, data)))
        got = deliveries_in_any_order(even_out(answer_while_sending(ours, data)))
        if got != want:
            at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                      min(len(got), len(want)))
            raise AssertionError("seed %d: answers differ at byte %d\nGo:        %r\n"
                                 "gnatsd.py: %r" % (seed, at, want[max(at - 200, 0):at + 300],
                                                    got[max(at - 200, 0):at + 300]))

    assert run_fuzzer("client-vs-go many subjects", prop, count) > 0

# What this fuzzer found (2026-11-27), each an input and Go 2.15's answer;
# gnatsd.py answered otherwise until the fix named.  Run against both.
FOUND = [
    # Go fails on the first byte no op can start with; we waited for a LF
    # (Client.doomed_op).
    (b"\x00", b"-ERR 'Unknown Protocol Operation'\r\n"),
    # Before CONNECT a client is verbose: a repeated PUB line took the PUB
    # cache's path, which has no +OK (the cache starts disabled now).
    (b"PUB foo 0\r\n\r\nPUB foo 0\r\n\r\n", b"+OK\r\n+OK\r\n"),
    # Whatever follows CONNECT is its argument (process_op).
    (b"CONNECT\x00", b""),
    (b"CONNECTFOO " + b"a" * 5000 + b"\r\n", b"-ERR 'maximum control line exceeded'\r\n"),
    # A pedantic client hears about a bad subject when the PUB line is
    # read, before its payload is checked (process_pub).
    (b"PUB * 0\r\n\n",
     b"-ERR 'Invalid Publish Subject'\r\n-ERR 'Unknown Protocol Operation'\r\n"),
    # CONNECT null is an empty CONNECT (Go's json.Unmarshal of null).
    (b"CONNECTnull\n", b"+OK\r\n"),
    # A SUB reusing a sid is +OK'd without looking at its subject (process_sub).
    (b"SUB \x00 1\nSUB . 1\n", b"+OK\r\n+OK\r\n"),
    # PUB arguments split on spaces and tabs only: the size `0\r` is bad
    # (split_pub_arg); a CR inside an argument drops the byte before the
    # LF (drop_before_lf).
    (b"PUB foo 0\r\r\nPUB foo 0\r\n\r\n", b""),
    (b"PUB foo 0\r\n\r\nSUB \x00\r\x00 \x00 \x00\n", b"+OK\r\n+OK\r\n"),
    # A CONNECT field of the wrong JSON type closes: true is no int, and
    # sig is a string (_CONNECT_FIELDS, _json_type_error).
    (b'CONNECT {"verbose": false, "pedantic": false, "protocol": false}\r\nPING\r\n', b""),
    (b'CONNECT {"verbose": true, "pedantic": false, "sig": false}\r\n', b""),
    # The argument starts right after the blanks, even at a LF.
    (b"PUB \nPUB foo 0\r\n\r\n", b"+OK\r\n"),
    # A client's INFO must unmarshal into Go's Info struct (_INFO_FIELDS).
    (b"INFO0\nPING\r\n", b""),
    (b'INFO {"port": "x"}\r\nPING\r\n', b""),
    # Found by review against Go (same day): the CR rule on a CONNECTx
    # argument (drop_cr after split_client_op); Go's []string takes a null;
    # more Info/clientOpts fields and integer ranges; keys in any case;
    # no NaN; bad UTF-8 replaced (load_go_json); +OK skips a long line;
    # HMSG is spelled before it is refused; a held argument that began at a
    # LF is counted without the CR Go drops.
    (b'CONNECT{"verbose":false}\rx\nPING\r\n', b"PONG\r\n"),
    (b"INFO{}\rx\nPING\r\n", b"PONG\r\n"),
    (b'INFO {"connect_urls":["a",null]}\r\nPING\r\n', b"PONG\r\n"),
    (b'INFO {"xkey":5}\r\nPING\r\n', b""),
    (b'INFO {"gossip_mode":256}\r\nPING\r\n', b""),
    (b'INFO {"client_id":-1}\r\nPING\r\n', b""),
    (b'INFO {"max_payload":3000000000}\r\nPING\r\n', b""),
    (b'CONNECT {"proxy_sig":5}\r\nPING\r\n', b""),
    (b'CONNECT {"import":{"allow":5}}\r\nPING\r\n', b""),
    (b'CONNECT {"VERBOSE":false}\r\nPING\r\n', b"PONG\r\n"),
    (b'CONNECT {"Verbose":5}\r\nPING\r\n', b""),
    (b'CONNECT {"verbose":false,"x":NaN}\r\nPING\r\n', b""),
    (b'CONNECT {"verbose":false,"name":"\xff"}\r\nPING\r\n', b"PONG\r\n"),
    (b"+OK" + b"x" * 5000, b""),
    (b"HM", b""),
    (b"PUB \n" + b"a" * 4000 + b"\r" + b"a" * 95, b""),
    # Go 2.12+ names the subject in a no-responders status (the fuzzer's
    # next find; 2.9 sent the status line alone).
    (b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
     b"SUB r 1\r\nPUB foo r 0\r\n\r\n",
     b"HMSG r 1 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\n"),
    # The 503 goes to a plain subscription on the reply subject only (Go's
    # subForReply), not to the queue one here (echo off: nobody else).
    (b'CONNECT {"verbose": false, "pedantic": false, "echo": false, "headers": true, '
     b'"no_responders": true}\r\nSUB foo\r\x00 PING\r\nPUB foo foo 0\r\n\r\n', b""),
    # An unfinished CONNECTx line past max_control_line is too long, not
    # unknown (split_client_op).
    (b"CONNECTFOO " + b"a" * 5000, b"-ERR 'maximum control line exceeded'\r\n"),
]

# Found with the other settings (VARIANTS): (variant, input, Go's answer).
FOUND_WITH = [
    # An unfinished line's length is counted without the CR that Go drops
    # (partial_line): 64 bytes of argument plus a CR is not over 64.
    ("limits", b'PUB foo 0\r\n\r\nCONNECT {"verbose": false, "pedantic": false, '
               b'"echo": "", "headers": ""}\r', b"+OK\r\n"),
    # A second CONNECT without credentials keeps the first one's login
    # (Go unmarshals each CONNECT over the last: Client.authorize).
    ("permissions", VARIANTS["permissions"][1] + b"PUB foo 0\r\n\r\n"
                    b'CONNECT {"verbose": false, "pedantic": false}\r\nPING\r\n', b"PONG\r\n"),
    ("permissions", VARIANTS["permissions"][1] + b'CONNECT {"user": "a", "pass": "x"}\r\n',
     b"-ERR 'Authorization Violation'\r\n"),
    # A request to an imported service nobody in the exporting account
    # serves gets the no-responders status (Client.route_service).
    ("accounts", VARIANTS["accounts"][1] + b"SUB a 1\r\nPUB foo.b a 2\r\nhi\r\nPING\r\n",
     b"HMSG a 1 37 37\r\nNATS/1.0 503\r\nNats-Subject: foo.b\r\n\r\n\r\nPONG\r\n"),
]


@pytest.mark.parametrize("data, go_answer", FOUND, ids=[repr(d[:24]) for d, _ in FOUND])
def test_found_inputs_get_go_answer(servers, data, go_answer):
    ours, go = servers
    assert answer(go, data) == go_answer
    assert answer(ours, data) == go_answer


def test_later_payload_gets_subject_error_twice(servers):
    """Go parses a PUB line again when its payload is not all in the same
    read (clonePubArg), so a pedantic client hears twice that the subject
    is bad (in the fuzzers, runs of that -ERR count as one)."""
    line = b'CONNECT {"verbose":false,"pedantic":true}\r\nPUB foo..bar 5\r\nhe'
    for server in servers:
        c = RawConn(server.host, server.port)
        c.read_info()
        c.send(line)
        c.expect(rb"(-ERR 'Invalid Publish Subject'\r\n){2}")
        c.send(b"llo\r\nPING\r\n")
        c.expect(rb"PONG\r\n")
        c.close()


@pytest.mark.parametrize("variant, data, go_answer", FOUND_WITH,
                         ids=["%s-%d" % (v, k) for k, (v, _, _) in enumerate(FOUND_WITH)])
def test_found_inputs_with_settings_get_go_answer(tmp_path, variant, data, go_answer):
    ours, go = start_both(tmp_path, VARIANTS[variant][0])
    try:
        assert answer(go, data) == go_answer
        assert answer(ours, data) == go_answer
    finally:
        ours.stop()
        go.stop()
