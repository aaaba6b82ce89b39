"""Shared pieces of the fuzzers in tests/fuzz (hypothesis, test-only).

Each fuzzer is a hypothesis property run in batches until its time budget
is spent: FUZZ_SECONDS per fuzzer (default 3, the short pass `make test`
and CI run; `make fuzz` sets 60).  FUZZ_KEEP_GOING=1 (make fuzz) prints
each failure and fuzzes on, failing at the end; FUZZ_RECORD=file appends
the summary lines to a file.  Fresh random inputs every batch; no
example database is written (a crash found becomes a regression test in
tests/fuzz/test_fuzz_regressions.py instead).  Each fuzzer prints one line,
`fuzz NAME: N inputs in S s`, which `make fuzz` shows and RECORD.md quotes.
"""
from __future__ import annotations

import logging
import os
import random
import re
import socket
import sys
import time

from hypothesis import HealthCheck, Phase, settings

# Seconds each fuzzer runs for.
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "3"))

# Examples per hypothesis run; a fuzzer runs batches until its time is up.
BATCH = int(os.environ.get("FUZZ_BATCH", "200"))

FUZZ_SETTINGS = settings(
    max_examples=BATCH,
    deadline=None,
    database=None,
    derandomize=False,
    phases=(Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


REPEATED_SUBJECT_ERR = re.compile(rb"(-ERR 'Invalid Publish Subject'\r\n)+")


def even_out(answer: bytes) -> bytes:
    """A pedantic client's 'Invalid Publish Subject' comes once or twice,
    as Go says it: twice when the PUB's payload is not in the read that
    holds its line.  Runs of it count as one for the fuzzers' comparisons."""
    return REPEATED_SUBJECT_ERR.sub(rb"\1", answer)


def server_frames(answer: bytes) -> list:
    """A server's output cut into frames: each control line, with the
    payload of a MSG or HMSG (an unfinished or odd tail is one last frame)."""
    frames, i = [], 0
    while i < len(answer):
        nl = answer.find(b"\n", i)
        if nl < 0:
            frames.append(answer[i:])
            break
        line = answer[i:nl + 1]
        stop = nl + 1
        parts = line.split()
        if parts[:1] in ([b"MSG"], [b"HMSG"]) and parts[-1].isdigit():
            stop = nl + 1 + int(parts[-1]) + 2
        frames.append(answer[i:stop])
        i = stop
    return frames


def deliveries_in_any_order(answer: bytes) -> bytes:
    """`answer` with each message's deliveries to one connection's several
    subscriptions put in sid order.  Go keeps a sublist node's
    subscriptions in a map, so a message for two of them on one node goes
    out in either order, as the map iterates; gnatsd.py keeps the order of
    the SUBs.  A run of MSG/HMSG frames that differ only in their sid is
    one message's deliveries (or copies of one, which may mix alike)."""
    def key(frame: bytes):
        head, _, rest = frame.partition(b"\n")
        parts = head.split(b" ")
        if parts[0] not in (b"MSG", b"HMSG") or len(parts) < 4:
            return None
        return (parts[0], parts[1], tuple(parts[3:]), rest)

    out, run, run_key = [], [], None
    for frame in server_frames(answer) + [b""]:
        k = key(frame) if frame else None
        if k is None or k != run_key:
            out += sorted(run)
            run, run_key = [], k
        if k is None:
            out.append(frame)
        else:
            run.append(frame)
    return b"".join(out)


def run_fuzzer(name: str, prop, counter: list, seconds: float | None = None) -> int:
    """Run the hypothesis property `prop` (decorated with @FUZZ_SETTINGS and
    @given) in batches for `seconds`; `counter[0]` is bumped by the property
    per input.  Returns the number of inputs tried."""
    budget = FUZZ_SECONDS if seconds is None else seconds
    keep_going = os.environ.get("FUZZ_KEEP_GOING") == "1"
    failures = []
    start = time.monotonic()
    while True:
        try:
            prop()
        except Exception as exc:
            if not keep_going:
                raise
            # Long runs: note the (shrunk) failure and go on fuzzing.
            failures.append(exc)
            inner = getattr(exc, "exceptions", None) or [exc]   # FlakyFailure is a group
            notes = "\n".join(getattr(exc, "__notes__", ()))
            text = "%s: %s\n%s" % (type(inner[0]).__name__, str(inner[0])[:3000], notes)
            print("fuzz %s FAILURE %d:\n%s" % (name, len(failures), text[:4000]))
        if time.monotonic() - start >= budget:
            break
    elapsed = time.monotonic() - start
    line = "fuzz %s: %d inputs in %.1f s, %d failure(s)" % (name, counter[0], elapsed,
                                                         len(failures))
    print(line)
    record = os.environ.get("FUZZ_RECORD")
    if record:
        with open(record, "a") as f:
            f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), line))
    if failures:
        raise failures[0]
    return counter[0]


class ErrorLog(logging.Handler):
    """Collects the gnatsd logger's records that mean a bug: an exception
    logged with a traceback ("Unexpected error, closing connection", a
    failed monitor request) or anything at CRITICAL."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bugs: list = []

    def emit(self, record):
        if record.exc_info or record.levelno >= logging.CRITICAL \
                or "Unexpected error" in record.getMessage():
            self.bugs.append(self.format(record) if record.exc_info is None
                             else "%s\n%s" % (record.getMessage(),
                                              logging.Formatter().formatException(record.exc_info)))

    def check(self):
        if self.bugs:
            bugs, self.bugs = self.bugs, []
            raise AssertionError("server logged %d bug(s); first:\n%s" % (len(bugs), bugs[0]))


def capture_errors(gnatsd_module) -> ErrorLog:
    """Attach an ErrorLog to gnatsd's logger (remove it with release_errors)."""
    handler = ErrorLog()
    logger = gnatsd_module.log
    handler.saved_level = logger.level
    logger.addHandler(handler)
    handler.saved_propagate = logger.propagate
    logger.setLevel(logging.ERROR)  # nothing below ERROR is formatted while fuzzing
    logger.propagate = False        # nor kept by pytest's log capture
    return handler


def release_errors(gnatsd_module, handler: ErrorLog):
    gnatsd_module.log.removeHandler(handler)
    gnatsd_module.log.setLevel(handler.saved_level)
    gnatsd_module.log.propagate = handler.saved_propagate




# The parser's time budget per turn while a fuzzer feeds a connection: out of
# reach, so that split-equals-whole does not depend on the machine's speed
# (a loaded machine runs out of the real one, MAX_INPUT_TIME, at random
# points; Hypothesis reports that as "Flaky").  Input put off must not change
# any answer either: with -1.0 here every check is past the budget, and the
# client, route and websocket fuzzers pass that way too (the websocket one
# found a control frame or a bad header overtaking put-off payloads, fixed:
# WSConnection.ws_input_put_off; test_fuzz_websocket.py keeps the case).
FUZZ_INPUT_BUDGET = 3600.0


def feed_on_loop(server, conn, chunks, seed: int | None = None, between=None,
                 budget: float | None = FUZZ_INPUT_BUDGET) -> tuple:
    """Hand `chunks` to `conn` (a Client or Route of the in-process
    `server`) as separate reads, on the loop thread and as Server.serve
    does: its catch-all around each read, then the flush of the loop turn.
    Then close it.  `seed` seeds the module RNG first (queue-group picks);
    `between(conn)` is called after each read the connection survives;
    `budget` replaces MAX_INPUT_TIME meanwhile (None: the module's own).
    Returns (closed by the input, its close reason or None)."""
    module = sys.modules[type(server).__module__]

    def run():
        saved = module.MAX_INPUT_TIME
        if budget is not None:
            module.MAX_INPUT_TIME = budget
        try:
            return feed()
        finally:
            module.MAX_INPUT_TIME = saved

    def feed():
        if seed is not None:
            random.seed(seed)
        for chunk in chunks:
            try:
                conn.process_input(chunk)
            except Exception:   # what Server.serve does around read_ready
                server.connection_failed(conn)
            # Input past the turn's time budget waits in the connection's
            # backlog, and the loop reads nothing more from it until that is
            # parsed: do the same before the next chunk (under load a slow
            # turn would otherwise parse the next read first).
            while conn.backlog is not None and not (conn.closed or conn.stalled):
                server.run_backlog()
            if server.pending:
                server.flush_pending()
            if conn.closed:
                return True, conn.close_reason
            if between is not None:
                between(conn)
        conn.close("fuzz done")
        return False, None
    return server.call_in_loop(run)


def read_to_close(sock: socket.socket, buf: bytearray, who: str = "server",
                  timeout: float = 5.0) -> bytes:
    """`buf` plus everything `sock` receives until the peer closes it (a
    reset counts as the close); then closes `sock`."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError("%s did not close; got %r" % (who, bytes(buf[:300])))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    finally:
        sock.close()
