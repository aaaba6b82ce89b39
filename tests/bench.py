#!/usr/bin/env python3
"""Throughput, latency and memory of gnatsd.py beside the Go nats-server.

`python3 tests/bench.py` starts a fresh server for every measurement and runs
each scenario against gnatsd.py and each Go nats-server found, interleaved
(gnatsd, go2.9, go2.15, gnatsd, ...) so drift on the machine hits all of
them alike. It prints the machine, then a table of medians and the ratios
gnatsd/go that the project's targets are written in (and with --results,
writes the same to a Markdown file: `make bench` keeps tests/BENCH-RESULTS.md).

The table leads with realistic traffic, made and checked by tests/loadgen.c
(compiled on demand into bench-results/; without a C compiler these are
skipped with a note). Every message picks its subject and payload size
afresh (64 subjects real.0 .. real.63 and 16..256-byte payloads unless
named); subscribers hold real.> so each sees every message:

    real_pub     4 publishers, no subscribers
    real_pubsub  1 publisher, 1 subscriber
    real_fanout8 1 publisher, 8 subscribers (msgs/s counts deliveries)
    real_queue4  1 publisher, a queue group of 4 (each message to exactly one)
    real_10k     as real_pubsub over 10,000 subjects
    real_100k    as real_pubsub over 100,000 subjects
    real_big     as real_pubsub with 1 KiB..64 KiB payloads
    real_reply   as real_pubsub, every message with a reply subject of its
                 own (_INBOX.<pub>.<seq>, as requests carry)
    real_headers as real_pubsub, every message an HPUB with a 38-byte header
                 block (a Msg-Id header of its own; MB/s counts the payload)
    real_route   as real_pubsub across a route: two nodes of one kind, the
                 publisher on node 1, the subscriber on node 2
    real_route_10k  as real_route over 10,000 subjects (node 2's side of
                 the route past its sublist cache)
    real_leaf    as real_route across a leaf connection: the publisher on a
                 leaf node, the subscriber on its hub (the hub parses LMSGs)
    real_reqrep  sequential request/reply as a NATS client makes it: one
                 _INBOX.<id>.* subscription, a reply subject per request,
                 requests over the 64 subjects and sizes: p50/p99 round trip
    real_ws      as real_pubsub with both clients over WebSocket (ws://, each
                 server started with WS_CONFIG: no TLS, no compression)
    same_line    1 publisher, 1 subscriber, one subject and 128-byte payloads:
                 the same PUB line every message ...
    varied_line  ... beside the same with 64..192-byte payloads: what it costs
                 when consecutive messages stop sharing a size

Then the older scenarios (16-byte payloads unless named). Up to pubsub1k
they send the same PUB line every message: the best case (gnatsd.py delivers
runs of one PUB line in bulk); the table says so where they start.

    pub        one publisher, no subscribers
    pubsub     one publisher, one subscriber
    pubsub2    pub->sub, alternating subjects: as pubsub, but the PUBs alternate
               between bench.a and bench.b record by record and the subscriber
               holds bench.*, so no two consecutive PUB lines are identical
               (gnatsd.py delivers runs of one PUB line in bulk; this shows its
               per-message path)
    fanout4    one publisher, 4 subscribers on the subject (msgs/s counts deliveries)
    fanout16   one publisher, 16 subscribers
    queue4     one publisher, a queue group of 4 (each message to exactly one)
    pubsub1k   one publisher, one subscriber, 1 KiB payloads
    routepubsub  pub->sub across a route: two nodes of the same kind routed
               into a cluster (each server's default route settings, so Go
               2.10+ pools its routes), the subscriber on node 2, the
               publisher on node 1; no message is sent until a probe has
               crossed the route on the subscribers' subject
    routepubsub1k  as routepubsub, 1 KiB payloads
    tlspubsub1k  as pubsub1k, every connection over TLS (the servers get
               --tls with tests/certs/server-*.pem; clients upgrade after INFO)
    reqrep     one requester, one responder, sequential: p50/p99 round trip
    idle10k    10,000 connections that CONNECT, PING/PONG, then idle: server
               RSS growth per connection (/proc/PID/status VmRSS)
    subs100k   100,000 subscriptions on distinct subjects from 4 connections,
               then publishes to random ones of them (half from a hot set of
               256 subjects, sublist cache hits; half uniform, mostly misses)

Logins: not in the default run (they add about a minute and need PyNaCl,
which `make dev` installs into .venv); ask for them by name:

    login_nkey  connections per second with nkey auth (issue 17): LOGIN_CLIENTS
               client processes, a user each, log in over and over: connect,
               read INFO, sign its nonce (PyNaCl), CONNECT {"nkey","sig"} and
               PING, wait for the PONG, close. The servers get an
               `authorization { users = [ { nkey: U... } ] }` config.
    login_jwt  the same in operator mode: a user JWT each in the CONNECT
               (its account's signature), resolver MEMORY with the accounts
               preloaded (gnatsd.py verifies a JWT once and remembers it; Go
               verifies it at every login, two Ed25519 checks to our one)

Both also run against "gnatsd-pure": gnatsd.py under the same interpreter
with -S (no site-packages, so no `cryptography` package: its plain-Python
Ed25519); the target is gnatsd-pure's logins/s (LOGIN_PURE_TARGET). A
login is at least one Ed25519 verification, so logins/s bounds
verifications/s from below. (With pyenv, the base interpreter may have
`cryptography` in its own site-packages: -S is what keeps it out, and the
bench refuses to run gnatsd-pure if `python -S` can still import it.)

    .venv/bin/python tests/bench.py --scenarios login_nkey,login_jwt

(Not `make bench BENCH_ARGS=...`: that would overwrite tests/BENCH-RESULTS.md
with these two rows alone.)

How the load is made, so that the generator is not what is measured:

* The realistic scenarios run tests/loadgen.c (its header comment has the
  details): one C process per publisher, building each batch of PUBs
  (subject and size from a hash of publisher id and sequence number, payload
  opening with both in hex) as it goes, a PING after each batch, at most
  MAX_UNACKED_BYTES un-PONGed; subscriber processes of several connections
  that parse every MSG and check its subject, size, reply subject and
  per-publisher order (+1 each, or increasing for queue members). A shared
  counter file keeps publishers within WINDOW_BYTES of the slowest subscriber
  group; at the end each group's per-publisher counts and sums of message
  hashes must equal what each publisher sent (so a queue group neither lost
  nor doubled a message). `--self-test` also feeds loadgen subscribers
  streams with faults, each of which must be caught (and, for real_ws,
  websocket frames of every shape, split across reads, and frames or
  upgrade answers a server must not send).
* The older scenarios are made in Python. Publishing sends pre-built batches (thousands of `PUB subj n\\r\\n...` in one
  buffer, a PING at the end) with one sendall each. Each payload starts
  with a 16-hex-digit sequence number; batch k is its template with k
  written into every record by a few extended-slice assignments, so the
  numbers cost next to nothing.
* Flow control: at most MAX_UNACKED_BYTES of PUBs go out before their PONG
  has come back (the server has processed them), and no subscriber may fall
  more than WINDOW_BYTES behind, so no buffer grows without bound and the rate
  is the sustained one.
* Subscribers live in separate processes (up to MAX_SUB_PROCS, each serving
  several connections) and read with recv_into into one reused buffer. Every
  delivery on a connection has the same length, so a chunk of n records is
  checked by stride slices, a few bytes per record: the header bytes and
  the closing CRLF of every record, the low three hex digits of every
  sequence number (for subscribers that see every message), full sequence
  numbers of the first, last and every SAMPLE_EVERY-th record. Counts are
  exact; loss, duplication or reordering fail the scenario
  (`--self-test` shows the checker catching each).
* `--sink` runs the same scenarios against tests/bench_sink.py, which only
  discards input and answers PINGs: the publishing rates it shows are the
  generator's ceiling. It also times the subscriber's checker alone. (Not
  the TLS, route and websocket scenarios: the sink speaks none of them.)
  The realistic throughput scenarios use loadgen's own C sink instead (the
  Python one cannot find PINGs in batches of varying length fast enough),
  publishers only; their checker ceiling is `loadgen speed`.
* Server CPU: /proc/PID/stat utime+stime of the server (all threads, all
  nodes) from just before the first publish to the last delivery, divided
  by the messages counted: the "srv us/msg" rows.

Usage:

    python3 tests/bench.py                          # all scenarios, 3 reps, ~5 min
    python3 tests/bench.py --servers go2.9,go2.15 --scenarios pub,pubsub
    python3 tests/bench.py --scenarios real_pubsub,real_queue4 --reps 1 --duration 1
    python3 tests/bench.py --sink                   # generator ceilings
    python3 tests/bench.py --python pypy3 --json out.json
    python3 tests/bench.py --results tests/BENCH-RESULTS.md   # as make bench does
    .venv/bin/python tests/bench.py --scenarios login_nkey,login_jwt   # logins/s, ~1 min

Exit status 1 if any measurement failed (it shows as FAIL in the table).
Run it on an otherwise idle machine: the header prints the load average.
Standard library only; Python 3.8+; Linux (/proc is read for RSS and CPU).

Contents:
    1. Constants
    2. Machine and servers
    3. Wire helpers
    4. Checking deliveries
    5. Subscriber processes
    6. Publishing
    7. Scenarios
    8. Realistic traffic: tests/loadgen.c
    9. Running, medians and the table
    10. Command line
"""
from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import hashlib
import json
import mmap
import multiprocessing
import os
import platform
import random
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback

# ============================================================================
# 1. Constants
# ============================================================================

# The repository root (this file lives in tests/).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The server under test and the sink.
GNATSD = os.path.join(ROOT, "gnatsd.py")
SINK = os.path.join(ROOT, "tests", "bench_sink.py")
# The realistic scenarios' generator: its source, and where it is compiled
# (bench-results/ is gitignored and removed by `make clean`).
LOADGEN_SRC = os.path.join(ROOT, "tests", "loadgen.c")
LOADGEN_DIR = os.path.join(ROOT, "bench-results")
LOADGEN = os.path.join(LOADGEN_DIR, "loadgen")
# Requests loadgen's requester makes before its clock starts (WARMUP there).
LOADGEN_WARMUP = 200
# Every server listens here, on a port it picks itself (-p -1).
HOST = "127.0.0.1"
# TLS scenarios: the test certificates (`make certs`), and the flags that
# give every server the same certificate.
CERTS = os.path.join(ROOT, "tests", "certs")
TLS_SERVER_ARGS = ["--tls", "--tlscert", os.path.join(CERTS, "server-cert.pem"),
                   "--tlskey", os.path.join(CERTS, "server-key.pem")]

# Log lines a server prints once it can take clients.
LISTEN_RE = re.compile(rb"Listening for client connections on (\S+):(\d+)")
READY_RE = re.compile(rb"(Server|gnatsd) is ready")
# ... and once it takes routes (Go and gnatsd.py print it after the above).
ROUTE_LISTEN_RE = re.compile(rb"Listening for route connections on (\S+):(\d+)")
LEAF_LISTEN_RE = re.compile(rb"Listening for leafnode connections on (\S+):(\d+)")
# The two configs of a LeafPair: the hub's, and the leaf's (host, port).
HUB_CONFIG = 'leafnodes { host: "127.0.0.1", port: -1 }\n'
LEAF_CONFIG = 'leafnodes { remotes = [ { url: "nats-leaf://%s:%d" } ] }\n'
# ... and, before it is ready, where websocket clients connect (if it does).
WS_LISTEN_RE = re.compile(rb"Listening for websocket clients on wss?://(\S+):(\d+)")
# Websocket scenarios: the configuration file every server is started with
# (-c, written once per run; -a and -p still come from the command line).
WS_CONFIG = "websocket { host: %s, port: -1, no_tls: true }\n" % HOST
# Route scenarios: the cluster's name, and how long one probe waits for its
# delivery across the route before the next is published, seconds.
CLUSTER_NAME = "bench"
PROBE_WAIT = 0.05

# Wire literals.
CONNECT = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
PING = b"PING\r\n"
PONG = b"PONG\r\n"
CRLF = b"\r\n"

# Hex digits of the sequence number that opens every payload.
SEQ_DIGITS = 16
# Pads a payload after its sequence number; never 'M', CR or LF, so the
# checker's byte counts see only the framing.
FILL = b"."
# Payload sizes, bytes.
SMALL = 16
KIB = 1024

# Upper bound on one pre-built publish batch, bytes.
BATCH_BYTES = 512 * 1024
# PUB bytes that may be sent before the server has PONGed them, bytes.
MAX_UNACKED_BYTES = 2 * 1024 * 1024
# Deliveries a subscriber (or queue group) may lag the publisher by, bytes.
WINDOW_BYTES = 4 * 1024 * 1024
# Bytes asked of each subscriber recv, and room kept beyond it for the
# unfinished record or line left from the previous read.
RECV_SIZE = 1 << 20
RECV_SLACK = 64 * 1024
# Sequence numbers are read from every Nth record of a checked chunk.
SAMPLE_EVERY = 1024
# Subscriber connections are spread over at most this many processes: as
# many as there are cores, 2 to 4 (on 2 cores, 2 beat 4, 8 and 16 for fanout16).
MAX_SUB_PROCS = max(2, min(4, os.cpu_count() or 2))
# A subscriber process whose round of reads brought fewer bytes than this
# sleeps this long before the next, so that reads come in bigger pieces.
COALESCE_BYTES = 64 * 1024
COALESCE_SLEEP = 0.001

# Longest wait for a reply or for progress before a run fails, seconds.
IO_TIMEOUT = 20.0
# Longest wait for a server to print its ready line, seconds.
START_TIMEOUT = 30.0
# Poll interval while the publisher waits for subscribers, seconds.
WINDOW_POLL = 0.0005

# Request/reply subjects, and requests made before timing starts.
REQ_SUBJECT = b"bench.req"
REPLY_INBOX = b"_INBOX.bench"
REQ_WARMUP = 200
# Cap on timed requests, so latency lists stay small.
REQ_MAX = 200000

# Idle connections, how many connect at once, and how many are re-PINGed
# at the end to prove they are still served.
IDLE_CONNS = 10000
IDLE_BATCH = 100
IDLE_PROBES = 100
# Seconds the server may settle before RSS is read.
RSS_SETTLE = 0.5

# The many-subscriptions scenario: subjects, connections, hot subjects,
# distinct publish templates (more templates, fewer repeats).
MANY_SUBJECTS = 100000
MANY_CONNS = 4
HOT_SUBJECTS = 256
MANY_TEMPLATES = 16
# Subject and sid numbers start here so they all have six digits.
SUBJECT_BASE = 100000

# Ratio gnatsd/go2.9 each scenario should reach (the project issue).
# pubsub2 has none: it is there to show the per-message path, which the
# alternating subjects force (gnatsd.py's runs of one PUB line cannot form);
# nor have real_reply, real_headers, real_reqrep, same_line and varied_line.
TARGETS = {"real_pub": 0.20, "real_pubsub": 0.45, "real_fanout8": 0.60,
           "real_queue4": 0.40, "real_10k": 0.40, "real_100k": 0.40, "real_big": 0.80,
           "real_ws": 0.50,
           "pub": 0.20, "pubsub": 0.35, "fanout16": 0.60, "pubsub1k": 0.75,
           "tlspubsub1k": 0.50, "routepubsub": 0.30}
# The table marks where the older scenarios start, after the realistic ones.
BEST_CASE_NOTE = ("-- older scenarios, one payload size each: pub, pubsub, fanout4, fanout16, "
                  "queue4 and pubsub1k\n   send the same PUB line every message (the best "
                  "case for gnatsd.py) --")
# Most server memory per idle connection for gnatsd.py, KiB.
IDLE_TARGET_KIB = 4.0
# A load average above this before the run means the machine was busy.
BUSY_LOAD = 0.5

# The login scenarios: client processes, each logging in over and over as
# a user of its own (enough that a server, not the clients, is the limit).
LOGIN_CLIENTS = 8
# Logins/s gnatsd.py must reach with plain-Python Ed25519 (issue 17).
LOGIN_PURE_TARGET = 300
# The server name and interpreter flag for gnatsd.py without site-packages.
PURE = "gnatsd-pure"
PURE_FLAG = "-S"
# The nonce a server's INFO asks the client to sign.
NONCE_RE = re.compile(rb'"nonce":"([^"]+)"')
# What follows the signature in a login's CONNECT.
LOGIN_TAIL = b'"}\r\n' + PING
# An nkey's prefix byte (its first base32 letter) by role.
NKEY_PREFIXES = {"O": 14 << 3, "A": 0, "U": 20 << 3}


class BenchError(Exception):
    """A run that must not count: loss, duplication, reordering, a server
    that died or stopped answering."""


def now() -> float:
    """Seconds on the system-wide monotonic clock (comparable across processes)."""
    return time.monotonic()


# ============================================================================
# 2. Machine and servers
# ============================================================================
#
# The header names the machine so a table can be copied into the README
# with its context. Servers are found like tests/conftest.py finds them;
# each measurement starts a fresh one whose log goes to a temporary file,
# polled for the ready line (no threads, so forking subscribers is safe).
# The route scenarios start a RoutedPair instead: two fresh servers of one
# kind, the second routed to the first.


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_total_gib() -> float:
    """Installed memory, GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def load_average() -> float:
    """The 1-minute load average (0.0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def command_output(argv: list) -> str:
    """Stdout+stderr of a short command, or '' if it cannot run."""
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=20)
        return out.stdout.decode(errors="replace").strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def go_version(path: str) -> str:
    """'2.9' for a nats-server v2.9.x binary, '' if it is not one."""
    m = re.search(r"v(\d+)\.(\d+)\.\d+", command_output([path, "--version"]))
    return "%s.%s" % (m.group(1), m.group(2)) if m else ""


def find_go_servers() -> dict:
    """Installed Go servers as {'go2.9': path, ...}, oldest first."""
    candidates = [os.environ.get("NATS_SERVER_GO", ""), "/usr/sbin/nats-server",
                  "/usr/bin/nats-server", os.path.join(ROOT, ".venv", "bin", "nats-server"),
                  os.path.join(os.path.dirname(sys.executable), "nats-server"),
                  shutil.which("nats-server") or ""]
    found = {}
    for path in candidates:
        if path and os.path.exists(path) and path not in found.values():
            ver = go_version(path)
            if ver:
                found.setdefault("go" + ver, path)
    order = sorted(found, key=lambda name: tuple(int(x) for x in name[2:].split(".")))
    return {name: found[name] for name in order}


def server_commands(python: str) -> dict:
    """Every server the bench knows, as {name: argv prefix}. PURE is
    gnatsd.py on the same interpreter without site-packages (only the
    scenarios marked `pure` run on it)."""
    commands = {"gnatsd": [python, GNATSD], PURE: [python, PURE_FLAG, GNATSD]}
    commands.update({name: [path] for name, path in find_go_servers().items()})
    commands["sink"] = [sys.executable, SINK]
    return commands


def describe_server(name: str, argv: list) -> str:
    """One header line naming what a server really is."""
    if name in ("gnatsd", PURE):
        ver = command_output(argv[:-1] + ["-c", "import sys; print(sys.version.split()[0])"])
        return "gnatsd.py on Python %s (%s), %s" % (ver or "?", " ".join(argv[:-1]),
                                                  ed25519_note(argv[:-1]))
    if name == "sink":
        return "tests/bench_sink.py (discards input: the generator's ceiling)"
    return "%s (%s)" % (command_output([argv[0], "--version"]), argv[0])


def ed25519_note(python: list) -> str:
    """Which Ed25519 gnatsd.py gets from the interpreter `python` (a list:
    the path and any flags): the `cryptography` package's, or its own."""
    version = command_output(python + ["-c", "import cryptography as c; print(c.__version__)"])
    if re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", version):
        return "Ed25519 from cryptography %s" % version
    return "plain-Python Ed25519 (no cryptography package)"


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE toward `wanted` (the hard limit too, where allowed);
    servers started later inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


class Server:
    """One server process on a free port; its output goes to a temporary file."""

    def __init__(self, name: str, argv: list, extra: list = ()):
        self.name = name
        self.argv = argv + ["-a", HOST, "-p", "-1"] + list(extra)
        self.proc = None
        self.port = 0
        self.ws_port = 0    # with a websocket block: its port, else 0
        self.log = tempfile.TemporaryFile()

    def start(self) -> "Server":
        """Start it and wait for 'Listening ... PORT' and 'is ready'."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self.port = int(self.wait_log(LISTEN_RE).group(2))
            self.wait_log(READY_RE)
            ws = WS_LISTEN_RE.search(self.log_text())
            self.ws_port = int(ws.group(2)) if ws else 0
        except BenchError:
            self.stop()
            raise
        return self

    def wait_log(self, pattern: re.Pattern) -> re.Match:
        """The first match of `pattern` in the log, once the server prints it."""
        deadline = now() + START_TIMEOUT
        while now() < deadline:
            match = pattern.search(self.log_text())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise BenchError("%s did not start (no %r):\n%s" % (
            self.name, pattern.pattern.decode(), self.tail()))

    @property
    def sub_port(self) -> int:
        """Where subscribers connect: this same server (see RoutedPair)."""
        return self.port

    def log_text(self) -> bytes:
        """Everything the server has printed so far."""
        return os.pread(self.log.fileno(), 1 << 20, 0)

    def tail(self) -> str:
        """The end of the log, for error messages."""
        size = os.fstat(self.log.fileno()).st_size
        return os.pread(self.log.fileno(), 2000, max(0, size - 2000)).decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS), KiB."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError("no VmRSS for %s" % self.name)

    def cpu_seconds(self) -> float:
        """User+system CPU the process has used (all threads), seconds."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def node_cpu_seconds(self) -> list:
        """cpu_seconds() of each node: here just the one."""
        return [self.cpu_seconds()]


class RoutedPair:
    """Two servers of one kind in a cluster: node 1 (the seed, which takes
    the publisher on `port`) and node 2, started with a route to node 1 (the
    subscribers connect to its `sub_port`). Each keeps its kind's default
    route settings. Stands in for a Server in run_one and measure_throughput;
    that the route is up is proven later by an InterestProbe, not here."""

    def __init__(self, name: str, argv: list, extra: list = ()):
        self.name = name
        self.argv = argv
        self.extra = list(extra) + ["--cluster", "nats://%s:-1" % HOST,
                                    "--cluster_name", CLUSTER_NAME]
        self.nodes = []
        self.port = self.sub_port = 0

    def start(self) -> "RoutedPair":
        """Start node 1, read its route port, start node 2 routed to it."""
        try:
            seed = self._start_node(self.extra)
            route_port = int(seed.wait_log(ROUTE_LISTEN_RE).group(2))
            peer = self._start_node(self.extra + ["--routes", "nats://%s:%d" % (HOST, route_port)])
        except BaseException:
            self.stop()
            raise
        self.port, self.sub_port = seed.port, peer.port
        return self

    def _start_node(self, extra: list) -> Server:
        node = Server(self.name, self.argv, extra)
        self.nodes.append(node)
        return node.start()

    def alive(self) -> bool:
        return len(self.nodes) == 2 and all(node.alive() for node in self.nodes)

    def tail(self) -> str:
        return "\n".join("--- node %d ---\n%s" % (i + 1, node.tail())
                         for i, node in enumerate(self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cpu_seconds(self) -> float:
        return sum(self.node_cpu_seconds())

    def node_cpu_seconds(self) -> list:
        return [node.cpu_seconds() for node in self.nodes]


class LeafPair(RoutedPair):
    """Two servers of one kind joined as a leaf node and its hub: node 1,
    the leaf (it dials the hub and takes the publisher on `port`), and
    node 2, the hub (`leafnodes { port: -1 }`; the subscribers connect to its
    `sub_port`). The publisher's messages cross the leaf connection as LMSGs,
    which the hub parses. Otherwise as a RoutedPair."""

    def start(self) -> "LeafPair":
        """Start the hub, read its leafnode port, start the leaf dialing it."""
        try:
            hub = self._start_node(["-c", temp_config("bench-hub-", HUB_CONFIG)])
            leaf_port = int(hub.wait_log(LEAF_LISTEN_RE).group(2))
            leaf = self._start_node(["-c", temp_config(
                "bench-leaf-", LEAF_CONFIG % (HOST, leaf_port))])
        except BaseException:
            self.stop()
            raise
        self.nodes.reverse()        # (node 1 is the leaf, as a RoutedPair's seed)
        self.port, self.sub_port = leaf.port, hub.port
        return self


# ============================================================================
# 3. Wire helpers
# ============================================================================
#
# Plain blocking sockets with a timeout; every wait is bounded, so a hung
# server fails the run instead of hanging it.


def connect(port: int, tls: bool = False) -> socket.socket:
    """A TCP connection to the server with Nagle off; with `tls`, the plain
    INFO is read and the socket upgraded (an ssl.SSLSocket is returned)."""
    sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        _, rest = read_until(sock, b"", CRLF)
        if rest:
            raise BenchError("unexpected bytes after INFO: %r" % rest[:200])
        context = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return sock


def recv_some(sock: socket.socket, size: int = 65536) -> bytes:
    """One recv; a timeout or EOF is a BenchError."""
    try:
        data = sock.recv(size)
    except socket.timeout:
        raise BenchError("no answer from the server within %.0f s" % IO_TIMEOUT)
    except OSError as e:
        raise BenchError("connection failed: %s" % e)
    if not data:
        raise BenchError("server closed the connection")
    return data


def read_until(sock: socket.socket, buf: bytes, marker: bytes) -> tuple:
    """Read until `marker` is in the buffer; return (before+marker, after)."""
    while True:
        if b"-ERR" in buf:
            raise BenchError("server said %r" % buf[buf.find(b"-ERR"):][:200])
        if marker in buf:
            break
        buf += recv_some(sock)
    cut = buf.find(marker) + len(marker)
    return buf[:cut], buf[cut:]


def handshake(sock: socket.socket, ops: bytes = b"") -> None:
    """CONNECT, then `ops` (SUBs), then PING; return once the PONG is back,
    so the server has applied them all."""
    sock.sendall(CONNECT + ops + PING)
    _, rest = read_until(sock, b"", PONG)
    if rest:
        raise BenchError("unexpected bytes after handshake: %r" % rest[:200])


def payload(seq: int, size: int) -> bytes:
    """A payload of `size` bytes opening with the hex sequence number."""
    return b"%016x" % seq + FILL * (size - SEQ_DIGITS)


# ============================================================================
# 4. Checking deliveries
# ============================================================================
#
# Every MSG a subscriber connection receives has the same length (one
# subject length, one sid length, one payload size), so the stream is a run
# of fixed-size records, now and then interrupted by a PING or PONG. The
# checker takes the aligned block of whole records at the start of each read
# and proves it with stride slices instead of a Python loop per message:
#
#   * every header byte that all allowed headers share (all of it when there
#     is one subject and sid) is checked in every record: for each such
#     offset, buf[offset:end:size] must be n copies of that byte;
#   * every record's last two bytes are CRLF, the same way;
#   * the first, last and every SAMPLE_EVERY-th record must have an allowed
#     header and sequence numbers in order; for a subscriber that sees every
#     message, last - first == n - 1 and first follows the previous last;
#   * for such a subscriber, the three lowest hex digits of every record's
#     sequence number are compared with the expected cycle (one stride slice
#     and one compare per digit), so a lost, doubled or swapped message
#     anywhere in the block shows.
#
# So the cost is a few bytes per record whatever the payload size, and the
# count is exact. A block that fails any check is re-read record by record
# (the slow path), which also handles PING/PONG and names the bad record.


def common_prefix(items) -> bytes:
    """The longest prefix shared by all byte strings in `items`."""
    items = list(items)
    return os.path.commonprefix(items) if items else b""


class RecordChecker:
    """Counts and verifies one subscriber connection's deliveries.

    `headers` holds every allowed `MSG subj sid n\\r\\n` line (all one length);
    `consecutive` is True when this connection must see every sequence number
    (plain subscribers), False when it sees an increasing subset (queue
    members, connections holding some of many subjects).
    """

    def __init__(self, headers, size: int, consecutive: bool):
        self.headers = headers
        first = next(iter(headers))
        self.header_len = len(first)
        self.size = self.header_len + size + 2
        self.prefix = common_prefix(headers)
        self.fixed = self._shared_bytes(headers, first) + [
            (self.size - 2, b"\r"), (self.size - 1, b"\n")]
        self.consecutive = consecutive
        # Most records one fast-path block holds.
        self.max_block = (RECV_SIZE + RECV_SLACK) // self.size + 1
        self.digit_cycles = self._digit_cycles(self.max_block) if consecutive else []
        self.count = 0
        self.last_seq = -1
        self.pings = 0
        self.pongs = 0
        self.error = None

    @staticmethod
    def _shared_bytes(headers, first: bytes) -> list:
        """(offset, byte) for every header offset where all headers agree."""
        return [(j, first[j:j + 1]) for j in range(len(first))
                if all(h[j] == first[j] for h in headers)]

    @staticmethod
    def _digit_cycles(records: int) -> list:
        """For hex digit p = 0, 1, 2 (from the right): its period and the
        digit's value for seq 0, 1, 2, ..., long enough for any block."""
        cycles = []
        for p in range(3):
            period = 16 ** (p + 1)
            one = b"".join(b"%x" % d * 16 ** p for d in range(16))
            cycles.append((p, period, one * ((records + period) // period + 1)))
        return cycles

    def consume(self, buf, end: int) -> int:
        """Check and count what buf[:end] holds (bytes or bytearray); return
        how many bytes were used. The rest is an unfinished record or line."""
        pos = 0
        while end - pos >= self.size and buf.startswith(self.prefix, pos):
            n = min((end - pos) // self.size, self.max_block)
            if not self._fast(buf, pos, n):
                break
            pos += n * self.size
        return self._slow(buf, pos, end)

    # -- fast path ------------------------------------------------------------

    def _fast(self, buf, pos: int, n: int) -> bool:
        """Verify and count n whole records from buf[pos]; False (nothing
        counted) if the block is not clean."""
        size, end = self.size, pos + n * self.size
        for offset, byte in self.fixed:
            if buf[pos + offset:end:size].count(byte) != n:
                return False
        seqs = self._sample(buf, pos, n)
        if seqs is None or not self._in_order(seqs, n):
            return False
        for p, period, cycle in self.digit_cycles:
            column = pos + self.header_len + SEQ_DIGITS - 1 - p
            first = seqs[0] % period
            if buf[column:end:size] != cycle[first:first + n]:
                return False
        self.count += n
        self.last_seq = seqs[-1]
        return True

    def _sample(self, buf, pos: int, n: int):
        """Sequence numbers of sampled records, or None if a header is wrong."""
        picks = list(range(0, n, SAMPLE_EVERY))
        if picks[-1] != n - 1:
            picks.append(n - 1)
        seqs = []
        for i in picks:
            at = pos + i * self.size
            if bytes(buf[at:at + self.header_len]) not in self.headers:
                return None
            at += self.header_len
            seqs.append(int(buf[at:at + SEQ_DIGITS], 16))
        return seqs

    def _in_order(self, seqs: list, n: int) -> bool:
        """Do the sampled numbers fit n records following self.last_seq?"""
        rising = all(b > a for a, b in zip(seqs, seqs[1:]))
        if self.consecutive:
            return rising and seqs[0] == self.last_seq + 1 and seqs[-1] - seqs[0] == n - 1
        return rising and seqs[0] > self.last_seq and seqs[-1] - seqs[0] >= n - 1

    # -- slow path ------------------------------------------------------------

    def _slow(self, buf, pos: int, end: int) -> int:
        """Walk records and control lines one by one; return where it stopped."""
        while pos < end and self.error is None:
            if buf.startswith(self.prefix, pos):
                if pos + self.size > end:
                    break
                self._one_record(bytes(buf[pos:pos + self.size]))
                pos += self.size
                continue
            eol = buf.find(CRLF, pos, end)
            if eol < 0:
                break
            self._control_line(bytes(buf[pos:eol + 2]))
            pos = eol + 2
        return pos

    def _one_record(self, record: bytes) -> None:
        """Check one whole record in full."""
        body = self.header_len
        if record[:body] not in self.headers or not record.endswith(CRLF):
            self.error = "bad record after %d good ones: %r" % (self.count, record[:200])
            return
        try:
            seq = int(record[body:body + SEQ_DIGITS], 16)
        except ValueError:
            self.error = "bad sequence number after %d good records: %r" % (
                self.count, record[:200])
            return
        if seq <= self.last_seq:
            self.error = "sequence %d after %d: duplicate or reordered" % (seq, self.last_seq)
        elif self.consecutive and seq != self.last_seq + 1:
            self.error = "sequence %d after %d: lost messages" % (seq, self.last_seq)
        else:
            self.last_seq = seq
            self.count += 1

    def _control_line(self, line: bytes) -> None:
        """A PING, PONG, +OK or INFO between records; anything else is an error."""
        if line == PING:
            self.pings += 1
        elif line == PONG:
            self.pongs += 1
        elif not line.startswith((b"+OK", b"INFO ")):
            self.error = "unexpected line after %d records: %r" % (self.count, line[:200])


class RecvBuffer:
    """A reusable bytearray that recv_into fills and a RecordChecker drains;
    the unfinished tail (under one record) moves to the front after each read."""

    def __init__(self, checker: RecordChecker):
        self.checker = checker
        self.buf = bytearray(RECV_SIZE + RECV_SLACK)
        self.view = memoryview(self.buf)
        self.filled = 0

    def space(self) -> memoryview:
        """Where the next recv_into writes."""
        return self.view[self.filled:self.filled + RECV_SIZE]

    def commit(self, nbytes: int) -> None:
        """`nbytes` more arrived in space(): check them, keep the tail."""
        self.filled += nbytes
        used = self.checker.consume(self.buf, self.filled)
        left = self.filled - used
        if left > RECV_SLACK:
            self.checker.error = self.checker.error or "unparseable input: %r" % (
                bytes(self.buf[used:used + 200]))
            left = 0
        if left and used:
            self.buf[:left] = self.buf[used:self.filled]
        self.filled = left


def checker_ceiling(headers, size: int, stream_bytes: int = 32 << 20,
                    chunk: int = 256 * 1024) -> float:
    """Records/s one subscriber connection can take in (copy into its buffer
    plus checking), on a synthetic stream arriving in `chunk`-byte reads."""
    header = next(iter(headers))
    records = stream_bytes // (len(header) + size + 2)
    stream = b"".join(header + payload(i, size) + CRLF for i in range(records))
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    checker = RecordChecker(headers, size, consecutive=True)
    receiver = RecvBuffer(checker)
    start = now()
    for piece in chunks:
        receiver.space()[:len(piece)] = piece
        receiver.commit(len(piece))
    elapsed = now() - start
    if checker.count != records or checker.error:
        raise BenchError("checker self-test failed: %s" % checker.error)
    return records / elapsed


def feed_stream(checker: RecordChecker, stream: bytes, rng: random.Random) -> None:
    """Push `stream` through a RecvBuffer in random-sized reads."""
    receiver = RecvBuffer(checker)
    pos = 0
    while pos < len(stream) and checker.error is None:
        piece = stream[pos:pos + rng.choice((1, 7, 100, 4096, 65536, RECV_SIZE))]
        receiver.space()[:len(piece)] = piece
        receiver.commit(len(piece))
        pos += len(piece)


def self_test() -> int:
    """Feed the checker streams with known faults: each must be caught (an
    error, or a count that differs from the publisher's). Returns failures."""
    header = b"MSG bench 1 %d\r\n" % SMALL
    good = [header + payload(i, SMALL) + CRLF for i in range(50000)]
    swapped = list(good)
    swapped[7000], swapped[7001] = swapped[7001], swapped[7000]
    both, plain = (True, False), (True,)
    # (name, records, the modes that must catch it: consecutive=True/False).
    # A swap or a corrupt payload inside a block is only caught where every
    # number is expected; elsewhere payloads are sampled.
    cases = [("clean", good, ()), ("ping inside", good[:100] + [PING] + good[100:], ()),
             ("lost one", good[:30000] + good[30001:], both),
             ("doubled one", good[:30000] + good[29999:], both),
             ("swapped two", swapped, plain),
             ("wrong sid", good[:9000] + [good[9000].replace(b" 1 ", b" 2 ")] + good[9001:], both),
             ("bad payload", good[:9000] + [good[9000][:-3] + b"x\r\n"] + good[9001:], plain),
             ("-ERR inside", good[:100] + [b"-ERR 'Slow Consumer'\r\n"] + good[100:], both)]
    failures = 0
    rng = random.Random(7)
    for name, records, must_catch in cases:
        for consecutive in (True, False):
            checker = RecordChecker(frozenset([header]), SMALL, consecutive)
            feed_stream(checker, b"".join(records), rng)
            caught = checker.error is not None or checker.count != len(good)
            ok = caught or consecutive not in must_catch
            failures += not ok
            print("%-4s %-12s consecutive=%-5s -> %s" % (
                "ok" if ok else "FAIL", name, consecutive,
                checker.error or "count %d of %d" % (checker.count, len(good))))
    return failures


# ============================================================================
# 5. Subscriber processes
# ============================================================================
#
# A SubSpec describes one subscriber connection: the SUB lines it sends, the
# deliveries it accepts, and the group whose total the publisher watches (a
# plain subscriber is a group of its own; queue members share one). A pool
# forks up to MAX_SUB_PROCS processes, each serving several connections
# through a selector. Each connection publishes its running count in shared
# memory; at the end it PINGs, reads to the PONG (so nothing is in flight)
# and reports its final count, timings and any error through a pipe.


class SubSpec:
    """One subscriber connection: SUB lines, allowed headers, record shape."""

    def __init__(self, subs: bytes, headers, size: int, consecutive: bool, group: int,
                 tls: bool = False):
        self.subs = subs
        self.headers = headers
        self.size = size
        self.consecutive = consecutive
        self.group = group
        self.tls = tls


class SubConn:
    """A live subscriber connection inside a subscriber process."""

    def __init__(self, port: int, spec: SubSpec, index: int):
        self.index = index
        self.checker = RecordChecker(spec.headers, spec.size, spec.consecutive)
        self.receiver = RecvBuffer(self.checker)
        self.subscribe_start = now()
        self.tls = spec.tls
        self.sock = connect(port, spec.tls)
        handshake(self.sock, spec.subs)
        self.subscribe_end = now()
        # A TLS socket is read until OpenSSL wants more (see read_tls).
        self.sock.setblocking(not spec.tls)
        self.first = self.last = 0.0
        self.reads = 0

    def read(self) -> int:
        """One recv (the selector said it is readable); count and check.
        Returns the bytes read."""
        if self.tls:
            return self.read_tls()
        try:
            nbytes = self.sock.recv_into(self.receiver.space())
        except OSError as e:
            self.checker.error = "connection failed: %s" % e
            return 0
        if not nbytes:
            self.checker.error = "server closed the connection"
            return 0
        before = self.checker.count
        self.reads += 1
        self.receiver.commit(nbytes)
        if self.checker.count != before:
            self.last = now()
            self.first = self.first or self.last
        if self.checker.pings:
            self.sock.sendall(PONG * self.checker.pings)
            self.checker.pings = 0
        return nbytes

    def read_tls(self) -> int:
        """Decrypt every whole record there is, a receive buffer at a time:
        one SSLSocket recv gives one record (16 KiB), and plaintext left
        inside OpenSSL would never wake the selector."""
        total = 0
        while True:
            space = self.receiver.space()
            nbytes = 0
            try:
                while nbytes < len(space):
                    got = self.sock.recv_into(space[nbytes:])
                    if not got:
                        self.checker.error = "server closed the connection"
                        break
                    nbytes += got
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError as e:
                self.checker.error = "connection failed: %s" % e
            if nbytes:
                before = self.checker.count
                self.reads += 1
                self.receiver.commit(nbytes)
                total += nbytes
                if self.checker.count != before:
                    self.last = now()
                    self.first = self.first or self.last
            if nbytes < len(space) or self.checker.error:
                break
        if self.checker.pings:
            self.sock.setblocking(True)
            self.sock.sendall(PONG * self.checker.pings)
            self.sock.setblocking(False)
            self.checker.pings = 0
        return total

    def drain(self) -> None:
        """PING and read up to the PONG, so every delivery has been counted."""
        self.sock.settimeout(IO_TIMEOUT)
        pongs = self.checker.pongs
        self.sock.sendall(PING)
        while self.checker.pongs == pongs and self.checker.error is None:
            try:
                nbytes = self.sock.recv_into(self.receiver.space())
            except socket.timeout:
                raise BenchError("no PONG within %.0f s" % IO_TIMEOUT)
            if not nbytes:
                raise BenchError("server closed the connection")
            self.receiver.commit(nbytes)

    def result(self) -> dict:
        return {"count": self.checker.count, "first": self.first, "last": self.last,
                "reads": self.reads, "error": self.checker.error,
                "subscribe_start": self.subscribe_start, "subscribe_end": self.subscribe_end}


def subscriber_loop(conns: list, pipe, counts, errors) -> None:
    """Serve the connections until the parent says 'stop'. A round of reads
    that brought little data is followed by a short sleep, so the next reads
    are bigger: fewer system calls and less Python per message, leaving the
    CPU to the server (the socket buffers hold far more than a sleep's worth)."""
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    sel.register(pipe, selectors.EVENT_READ, None)
    while True:
        got = 0
        for key, _ in sel.select(1.0):
            if key.data is None:
                pipe.recv()
                return
            conn = key.data
            got += conn.read()
            counts[conn.index] = conn.checker.count
            if conn.checker.error:
                errors[conn.index] = 1
                sel.unregister(conn.sock)
        if got < COALESCE_BYTES:
            time.sleep(COALESCE_SLEEP)


def subscriber_process(port: int, specs: list, indexes: list, pipe, counts, errors) -> None:
    """Child: connect and subscribe, say 'ready', count until 'stop', report."""
    try:
        conns = [SubConn(port, spec, i) for spec, i in zip(specs, indexes)]
        pipe.send(("ready", None))
        subscriber_loop(conns, pipe, counts, errors)
        for conn in conns:
            if conn.checker.error is None:
                conn.drain()
        times = os.times()
        pipe.send(("done", ([conn.result() for conn in conns], times.user + times.system)))
    except Exception:
        pipe.send(("crash", traceback.format_exc()))


class SubscriberPool:
    """Subscriber processes for one measurement, and their shared counters."""

    def __init__(self, port: int, specs: list):
        self.ctx = multiprocessing.get_context("fork")
        self.specs = specs
        self.counts = self.ctx.RawArray("q", max(1, len(specs)))
        self.errors = self.ctx.RawArray("b", max(1, len(specs)))
        self.procs = []
        self.groups = sorted({spec.group for spec in specs})
        nprocs = min(MAX_SUB_PROCS, len(specs))
        try:
            for p in range(nprocs):
                self._start(port, list(range(p, len(specs), nprocs)))
            for proc, pipe in self.procs:
                self._expect(pipe, "ready")
        except BaseException:
            self.close()
            raise

    def _start(self, port: int, indexes: list) -> None:
        parent, child = self.ctx.Pipe()
        specs = [self.specs[i] for i in indexes]
        proc = self.ctx.Process(target=subscriber_process, daemon=True,
                                args=(port, specs, indexes, child, self.counts, self.errors))
        proc.start()
        self.procs.append((proc, parent))

    def _expect(self, pipe, kind: str, timeout: float = IO_TIMEOUT * 3):
        """The next message from a child, which must be of `kind`."""
        if not pipe.poll(timeout):
            raise BenchError("subscriber process did not answer (%s)" % kind)
        got, body = pipe.recv()
        if got != kind:
            raise BenchError("subscriber process failed:\n%s" % body)
        return body

    def received(self, group: int) -> int:
        """Deliveries counted so far by the group's connections."""
        return sum(self.counts[i] for i, s in enumerate(self.specs) if s.group == group)

    def check_errors(self) -> None:
        """Fail at once if any connection has seen a bad delivery, with the
        children's reports as the message."""
        if any(self.errors[i] for i in range(len(self.specs))):
            try:
                results, _ = self.stop()
            except BenchError as e:
                raise BenchError("a subscriber saw a bad delivery; then %s" % e)
            raise BenchError("; ".join(r["error"] for r in results if r and r["error"]))

    def wait_for(self, expected: dict) -> None:
        """Wait until every group has counted `expected[group]` deliveries;
        fail if progress stops for IO_TIMEOUT."""
        last_total, last_change = -1, now()
        while True:
            self.check_errors()
            got = {g: self.received(g) for g in self.groups}
            if all(got[g] >= expected[g] for g in self.groups):
                return
            total = sum(got.values())
            if total != last_total:
                last_total, last_change = total, now()
            elif now() - last_change > IO_TIMEOUT:
                raise BenchError("lost messages: got %s of %s" % (got, expected))
            time.sleep(0.002)

    def stop(self) -> tuple:
        """Ask every child to drain and report. Returns (results in spec
        order, CPU seconds all children used)."""
        results = [None] * len(self.specs)
        cpu = 0.0
        for proc, pipe in self.procs:
            pipe.send("stop")
        for p, (proc, pipe) in enumerate(self.procs):
            indexes = range(p, len(self.specs), len(self.procs))
            conns, seconds = self._expect(pipe, "done")
            cpu += seconds
            for i, res in zip(indexes, conns):
                results[i] = res
        self.close()
        return results, cpu

    def close(self) -> None:
        for proc, pipe in self.procs:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        self.procs = []


# ============================================================================
# 6. Publishing
# ============================================================================
#
# A PublishPlan is a few batch templates: 16**d PUBs of one length whose
# payloads open with a batch-number field then the record's index in d hex
# digits, and a PING at the end. Batch k is template k % T with k written into
# the batch-number field of every record. The field sits at the same offset in
# each record, so one digit is rewritten in all of them by one extended-slice
# assignment (template[offset::record_len] = digit * records), and only the
# digits that changed since the template was last sent: usually one per batch.
# So payload sequence numbers run 0, 1, 2, ... across batches at next to no
# cost. The plan also knows how many deliveries each template causes per
# subscriber group.


class PublishPlan:
    """Pre-built publish batches and the deliveries each one causes."""

    def __init__(self, subjects_per_template: list, size: int, deliveries: list):
        self.size = size
        first = b"PUB %s %d\r\n" % (subjects_per_template[0][0], size)
        self.record = len(first) + size + 2
        self.stamp_at = len(first)
        self.digits = self._index_digits()
        self.per_batch = 16 ** self.digits
        self.stamp_width = SEQ_DIGITS - self.digits
        self.templates = [self._template(subjects) for subjects in subjects_per_template]
        self.stamps = [b"@" * self.stamp_width for _ in self.templates]
        self.columns = {c: bytes([c]) * self.per_batch for c in b"0123456789abcdef"}
        self.deliveries = deliveries

    def _index_digits(self) -> int:
        """Hex digits d for 16**d records per batch, the most under BATCH_BYTES."""
        digits = 1
        while 16 ** (digits + 1) * self.record <= BATCH_BYTES and digits < 4:
            digits += 1
        return digits

    def _template(self, subjects) -> bytearray:
        """One batch with '@'s where the batch number goes."""
        fill = FILL * (self.size - SEQ_DIGITS)
        stamp = b"@" * (SEQ_DIGITS - self.digits)
        parts = [b"PUB %s %d\r\n%s%0*x%s\r\n" % (subjects[i % len(subjects)], self.size,
                                                   stamp, self.digits, i, fill)
                 for i in range(self.per_batch)]
        if any(len(part) != self.record for part in parts):
            raise ValueError("all PUBs in a plan must have one length")
        return bytearray(b"".join(parts) + PING)

    def batch(self, k: int) -> bytearray:
        """Batch number k, ready to send (valid until the next call)."""
        t = k % len(self.templates)
        buf, old = self.templates[t], self.stamps[t]
        new = b"%0*x" % (self.stamp_width, k)
        end = self.per_batch * self.record
        for j in range(self.stamp_width):
            if new[j] != old[j]:
                buf[self.stamp_at + j:end:self.record] = self.columns[new[j]]
        self.stamps[t] = new
        return buf

    def expected(self, batches: int, group: int) -> int:
        """Deliveries to `group` caused by the first `batches` batches."""
        rounds, extra = divmod(batches, len(self.templates))
        per_round = sum(d[group] for d in self.deliveries)
        return rounds * per_round + sum(d[group] for d in self.deliveries[:extra])


class Publisher:
    """One publishing connection with PING/PONG flow control."""

    def __init__(self, port: int, tls: bool = False):
        self.sock = connect(port, tls)
        handshake(self.sock)
        self.buf = b""

    def read_pongs(self) -> int:
        """Block until at least one PONG arrives; return how many did."""
        data = self.buf + recv_some(self.sock)
        lines = data.split(CRLF)
        self.buf = lines.pop()
        for line in lines:
            if line == b"PING":
                self.sock.sendall(PONG)
            elif line.startswith(b"-ERR"):
                raise BenchError("server said %r" % line[:200])
        return sum(1 for line in lines if line == b"PONG")

    def run(self, plan: PublishPlan, duration: float, pool) -> tuple:
        """Publish batches for `duration` seconds; return (batches, start, end)
        where end is when the last batch's PONG came back."""
        max_unacked = max(2, MAX_UNACKED_BYTES // len(plan.templates[0]))
        unacked = k = 0
        start = now()
        deadline = start + duration
        while now() < deadline:
            while unacked >= max_unacked:
                unacked -= self.read_pongs()
            if pool is not None:
                wait_window(pool, plan, k + 1)
            self.sock.sendall(plan.batch(k))
            k += 1
            unacked += 1
        while unacked > 0:
            unacked -= self.read_pongs()
        return k, start, now()

    def close(self) -> None:
        self.sock.close()


def wait_window(pool: SubscriberPool, plan: PublishPlan, batches: int) -> None:
    """Wait until sending up to batch `batches` keeps every group within
    WINDOW_BYTES of the publisher."""
    window = max(2 * plan.per_batch, WINDOW_BYTES // (plan.size + 40))
    last_change, last_seen = now(), None
    for group in pool.groups:
        target = plan.expected(batches, group) - window
        while pool.received(group) < target:
            pool.check_errors()
            seen = pool.received(group)
            if seen != last_seen:
                last_change, last_seen = now(), seen
            elif now() - last_change > IO_TIMEOUT:
                raise BenchError("subscribers stopped receiving at %d" % seen)
            time.sleep(WINDOW_POLL)


# ============================================================================
# 7. Scenarios
# ============================================================================
#
# Each scenario has run(server, opts) -> metrics dict, and a list of the
# metrics the table shows: (key, label, higher_is_better). `primary` is the
# key the target ratio is written for.


class Throughput:
    """One publisher and `subs` subscribers (or a queue group) on one subject,
    or, given `subjects` (all one length) and a wildcard `sub` matching them
    all, PUBs cycling through the subjects record by record. With `routed`,
    on a RoutedPair: the subscribers on node 2, the publisher on node 1."""

    primary = "msgs"

    def __init__(self, size: int, subs: int, queue: bool = False,
                 subjects: tuple = (b"bench",), sub: bytes = b"bench", tls: bool = False,
                 routed: bool = False):
        self.size = size
        self.subs = subs
        self.queue = queue
        self.tls = tls
        self.routed = routed
        self.server_args = TLS_SERVER_ARGS if tls else []
        self.subjects = list(subjects)
        self.sub = sub
        self.metrics = [("msgs", "msgs/s", True), ("mbs", "MB/s", True),
                        ("cpu_us", "srv us/msg", False)]

    def plan(self) -> PublishPlan:
        """One template over the subjects; every batch reaches every group whole."""
        plan = PublishPlan([self.subjects], self.size, [])
        groups = 1 if self.queue else self.subs
        plan.deliveries = [[plan.per_batch] * groups]
        return plan

    def headers(self) -> frozenset:
        """Every MSG line a subscriber may see (one per subject, one length)."""
        return frozenset(b"MSG %s 1 %d\r\n" % (s, self.size) for s in self.subjects)

    def specs(self) -> list:
        sub = b"SUB %s %s1\r\n" % (self.sub, b"q " if self.queue else b"")
        return [SubSpec(sub, self.headers(), self.size, not self.queue,
                        0 if self.queue else i, self.tls) for i in range(self.subs)]

    def run(self, server: Server, opts) -> dict:
        probe = (self.sub, self.subjects[0]) if self.routed else None
        return measure_throughput(server, self.plan(), self.specs(), opts.duration, self.tls,
                                  probe)

    def ceiling(self) -> float:
        """Checker records/s for this scenario's deliveries (0: no subscribers)."""
        if not self.subs:
            return 0.0
        return checker_ceiling(self.headers(), self.size)


class ManySubs(Throughput):
    """100,000 subjects subscribed over MANY_CONNS connections; publishes go
    to random ones, each to exactly one connection."""

    def __init__(self):
        super().__init__(SMALL, MANY_CONNS)
        self.metrics = self.metrics + [("subs_per_s", "subs/s", True)]
        self._plan = None

    @staticmethod
    def number(n: int) -> int:
        return SUBJECT_BASE + n

    def specs(self) -> list:
        specs = []
        for c in range(MANY_CONNS):
            nums = [self.number(n) for n in range(c, MANY_SUBJECTS, MANY_CONNS)]
            subs = b"".join(b"SUB bench.%d %d\r\n" % (x, x) for x in nums)
            headers = frozenset(b"MSG bench.%d %d %d\r\n" % (x, x, self.size) for x in nums)
            specs.append(SubSpec(subs, headers, self.size, False, c))
        return specs

    def plan(self) -> PublishPlan:
        """Templates of random subjects: half from a hot set, half uniform."""
        if self._plan is None:
            rng = random.Random(1)
            hot = rng.sample(range(MANY_SUBJECTS), HOT_SUBJECTS)
            probe = PublishPlan([[b"bench.%d" % self.number(0)]], self.size, [[0]])
            templates, deliveries = [], []
            for _ in range(MANY_TEMPLATES):
                picks = [rng.choice(hot) if rng.random() < 0.5 else rng.randrange(MANY_SUBJECTS)
                         for _ in range(probe.per_batch)]
                templates.append([b"bench.%d" % self.number(n) for n in picks])
                deliveries.append([sum(1 for n in picks if n % MANY_CONNS == c)
                                   for c in range(MANY_CONNS)])
            self._plan = PublishPlan(templates, self.size, deliveries)
        return self._plan

    def run(self, server: Server, opts) -> dict:
        result = measure_throughput(server, self.plan(), self.specs(), opts.duration)
        result["subs_per_s"] = MANY_SUBJECTS / result.pop("subscribe_s")
        return result

    def ceiling(self) -> float:
        return checker_ceiling(self.specs()[0].headers, self.size)


def measure_throughput(server: Server, plan: PublishPlan, specs: list, duration: float,
                       tls: bool = False, probe: tuple = None) -> dict:
    """Subscribers up, publish for `duration`, wait for every delivery, verify.
    With `probe` (sub, subject), an InterestProbe first proves the interest of
    server.sub_port's subscribers in `sub` reaches server.port (a RoutedPair)."""
    sink = server.name == "sink"
    interest = InterestProbe(server, *probe) if probe else None
    try:
        pool = SubscriberPool(server.sub_port, specs)
    finally:
        if interest:
            interest.close()
    try:
        publisher = Publisher(server.port, tls)
        cpu0, own0 = server.node_cpu_seconds(), process_cpu()
        batches, start, end = publisher.run(plan, duration, None if sink or not specs else pool)
        expected = {g: 0 if sink else plan.expected(batches, g) for g in pool.groups}
        pool.wait_for(expected)
        cpu = {"nodes": [b - a for a, b in zip(cpu0, server.node_cpu_seconds())],
               "publisher": process_cpu() - own0}
        results, cpu["subscribers"] = pool.stop()
        publisher.close()
    finally:
        pool.close()
    verify(results, specs, expected)
    return throughput_metrics(plan, batches, start, end, results, cpu)


class InterestProbe:
    """Proof that a RoutedPair's route is up and carries interest in `sub`
    to node 1, before anything measured is published: a connection on node 2
    subscribes to `sub`, and one on node 1 publishes to `subject` (which
    `sub` matches) until a publish comes through: each attempt is PONGed by
    node 1 (routed or dropped by then) and then given PROBE_WAIT to arrive.
    Earlier attempts travel the same route ahead of it, so when the last one
    has arrived nothing is in flight.

    A route carries interest once per subject (RS+ on the first local
    subscription, RS- when the last goes), so the probe's subscription must
    outlive the subscribers' own: close() it once they have subscribed, and
    node 1 keeps the interest."""

    SID = b"99"

    def __init__(self, server, sub: bytes, subject: bytes):
        self.sock = connect(server.sub_port)
        self.buf = b""
        try:
            handshake(self.sock, b"SUB %s %s\r\n" % (sub, self.SID))
            publisher = connect(server.port)
            try:
                handshake(publisher)
                self.attempts = self._cross(publisher, subject)
            finally:
                publisher.close()
        except BaseException:
            self.sock.close()
            raise

    def _cross(self, publisher: socket.socket, subject: bytes) -> int:
        """Publish probes until one is delivered; return how many it took."""
        deadline = now() + START_TIMEOUT
        attempt = 0
        while True:
            attempt += 1
            body = b"probe %d" % attempt
            publisher.sendall(b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body) + PING)
            read_until(publisher, b"", PONG)
            if self._arrived(CRLF + body + CRLF, min(PROBE_WAIT, deadline - now())):
                return attempt
            if now() >= deadline:
                raise BenchError("no probe crossed the route in %.0f s (%d sent)" % (
                    START_TIMEOUT, attempt))

    def _arrived(self, marker: bytes, wait: float) -> bool:
        """Does `marker` come in within `wait` seconds?"""
        end = now() + wait
        while marker not in self.buf:
            if b"-ERR" in self.buf:
                raise BenchError("server said %r" % self.buf[self.buf.find(b"-ERR"):][:200])
            left = end - now()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return False
            self.buf += recv_some(self.sock)
        return True

    def close(self) -> None:
        """Unsubscribe (confirmed by a PONG) and disconnect."""
        try:
            self.sock.sendall(b"UNSUB %s\r\n" % self.SID + PING)
            read_until(self.sock, b"", PONG)
        finally:
            self.sock.close()


def verify(results: list, specs: list, expected: dict) -> None:
    """Every delivery counted exactly once, no errors: else BenchError."""
    for res in results:
        if res["error"]:
            raise BenchError(res["error"])
    for group, want in expected.items():
        got = sum(r["count"] for r, s in zip(results, specs) if s.group == group)
        if got != want:
            raise BenchError("group %d got %d deliveries, expected %d (%s)" % (
                group, got, want, "duplicates" if got > want else "loss"))


def process_cpu() -> float:
    """CPU seconds this process has used."""
    times = os.times()
    return times.user + times.system


def throughput_metrics(plan, batches, start, end, results, cpu) -> dict:
    """Rates from one measurement. msgs/s counts deliveries (all subscribers
    together) when there are subscribers, else publishes; cpu_us is the
    server's CPU time (all nodes, all threads) per message so counted. CPU
    shares are cores' worth over the measurement (subscribers: whole process
    lives; server: all its nodes, and node by node)."""
    published = batches * plan.per_batch
    delivered = sum(r["count"] for r in results)
    last = max([end] + [r["last"] for r in results])
    elapsed = (last if delivered else end) - start
    msgs = (delivered if delivered else published) / elapsed
    metrics = {"msgs": msgs, "mbs": msgs * plan.size / 1e6,
               "cpu_us": sum(cpu["nodes"]) * 1e6 / max(1, delivered or published),
               "pub_msgs": published / (end - start), "published": published,
               "delivered": delivered, "seconds": elapsed,
               "server_cpu": sum(cpu["nodes"]) / elapsed,
               "node_cpu": [c / elapsed for c in cpu["nodes"]],
               "generator_cpu": (cpu["publisher"] + cpu["subscribers"]) / elapsed,
               "msgs_per_read": delivered / max(1, sum(r["reads"] for r in results))}
    if results:
        metrics["subscribe_s"] = (max(r["subscribe_end"] for r in results)
                                  - min(r["subscribe_start"] for r in results))
    return metrics


class ReqRep:
    """Sequential request/reply: one requester, one responder process."""

    primary = "p50"
    metrics = [("p50", "p50 us", False), ("p99", "p99 us", False), ("rps", "req/s", True)]

    def run(self, server: Server, opts) -> dict:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=responder_process, args=(server.port, child), daemon=True)
        proc.start()
        try:
            expect_message(parent, "ready")
            latencies = run_requests(server.port, opts.duration)
            parent.send("stop")
            expect_message(parent, "done")
        finally:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
        return latency_metrics(latencies)

    def ceiling(self) -> float:
        return 0.0


def expect_message(pipe, kind: str, timeout: float = IO_TIMEOUT):
    """Wait for a child's (kind, body) message and return the body; its
    failure is ours."""
    if not pipe.poll(timeout):
        raise BenchError("child process did not answer (%s)" % kind)
    got, body = pipe.recv()
    if got != kind:
        raise BenchError("child process failed:\n%s" % body)
    return body


def responder_process(port: int, pipe) -> None:
    """Child: answer each request on REQ_SUBJECT with its own payload."""
    try:
        sock = connect(port)
        handshake(sock, b"SUB %s 1\r\n" % REQ_SUBJECT)
        pipe.send(("ready", None))
        sock.setblocking(True)
        buf = b""
        while not pipe.poll(0):
            readable, _, _ = select.select([sock, pipe], [], [], 1.0)
            if sock in readable:
                buf = respond(sock, buf + recv_some(sock))
        pipe.recv()
        pipe.send(("done", None))
    except Exception:
        pipe.send(("crash", traceback.format_exc()))


def respond(sock: socket.socket, buf: bytes) -> bytes:
    """Answer every whole `MSG subj sid reply n` in buf; return the rest."""
    out = []
    while True:
        eol = buf.find(CRLF)
        if eol < 0:
            break
        args = buf[:eol].split()
        if args[0] == b"PING":
            out.append(PONG)
        elif args[0] == b"MSG" and len(args) == 5:
            end = eol + 2 + int(args[4]) + 2
            if end > len(buf):
                break
            out.append(b"PUB %s %s\r\n%s\r\n" % (args[3], args[4], buf[eol + 2:end - 2]))
            eol = end - 2
        elif args[0] != b"PONG":
            raise BenchError("responder got %r" % buf[:200])
        buf = buf[eol + 2:]
    if out:
        sock.sendall(b"".join(out))
    return buf


def run_requests(port: int, duration: float) -> list:
    """Send requests one at a time for `duration` s; return round trips in s."""
    sock = connect(port)
    handshake(sock, b"SUB %s 1\r\n" % REPLY_INBOX)
    latencies = []
    deadline = None
    seq = 0
    while seq < REQ_WARMUP + REQ_MAX:
        if seq == REQ_WARMUP:
            deadline = now() + duration
        elif deadline and now() >= deadline:
            break
        latencies.append(one_request(sock, seq))
        seq += 1
    sock.close()
    return latencies[REQ_WARMUP:]


def one_request(sock: socket.socket, seq: int) -> float:
    """One round trip; the reply must carry this request's sequence number."""
    body = payload(seq, SMALL)
    want = b"MSG %s 1 %d\r\n%s\r\n" % (REPLY_INBOX, SMALL, body)
    start = now()
    sock.sendall(b"PUB %s %s %d\r\n%s\r\n" % (REQ_SUBJECT, REPLY_INBOX, SMALL, body))
    buf = b""
    while True:
        # A server's PING (Go sends its first soon after connecting) may
        # come before or right after the reply: answer it, drop it.
        if buf.startswith(PING):
            sock.sendall(PONG)
            buf = buf[len(PING):]
            continue
        if len(buf) >= len(want):
            rest = buf[len(want):]
            if rest.startswith(PING):
                sock.sendall(PONG)
                buf = buf[:len(want)] + rest[len(PING):]
                continue
            if not rest or not PING.startswith(rest):
                break
        buf += recv_some(sock)
    elapsed = now() - start
    if buf != want:
        raise BenchError("request %d: expected %r, got %r" % (seq, want, buf[:200]))
    return elapsed


def latency_metrics(latencies: list) -> dict:
    """p50/p99 in microseconds and the request rate."""
    if not latencies:
        raise BenchError("no requests completed")
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50) * 1e6, "p99": pick(0.99) * 1e6,
            "rps": len(ordered) / sum(ordered), "requests": len(ordered)}


class Idle:
    """Many connections that CONNECT, PING/PONG and then idle: RSS per connection."""

    primary = "kib_per_conn"
    metrics = [("kib_per_conn", "KiB/conn", False)]

    def __init__(self, conns: int):
        self.conns = conns

    def run(self, server: Server, opts) -> dict:
        time.sleep(RSS_SETTLE)
        before = server.rss_kib()
        start = now()
        socks = open_idle(server.port, self.conns)
        try:
            setup = now() - start
            time.sleep(RSS_SETTLE)
            probe_idle(socks)
            after = server.rss_kib()
        finally:
            for sock in socks:
                sock.close()
        return {"kib_per_conn": (after - before) / len(socks), "rss_before_kib": before,
                "rss_after_kib": after, "conns": len(socks), "connect_s": setup}

    def ceiling(self) -> float:
        return 0.0


def open_idle(port: int, total: int) -> list:
    """Open `total` connections IDLE_BATCH at a time, each CONNECTed and PONGed."""
    socks = []
    try:
        while len(socks) < total:
            batch = [connect(port) for _ in range(min(IDLE_BATCH, total - len(socks)))]
            socks.extend(batch)
            for sock in batch:
                sock.sendall(CONNECT + PING)
            for sock in batch:
                read_until(sock, b"", PONG)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def probe_idle(socks: list) -> None:
    """PING a spread of the idle connections: all must still answer."""
    step = max(1, len(socks) // IDLE_PROBES)
    for sock in socks[::step]:
        sock.sendall(PING)
        read_until(sock, b"", PONG)


# Logins (login_nkey, login_jwt): the cost of verifying who connects. Keys
# and JWTs are made here with PyNaCl (imported on first use; the scenarios
# are dropped with a note without it, see use_nacl), the same keys for
# every server of a run; each client process signs with its own user's key.


def nkey_text(role: str, public: bytes) -> str:
    """An nkey as NATS writes it: base32 of the role's prefix byte, the
    32-byte public key and their CRC-16/XMODEM (little endian)."""
    raw = bytes([NKEY_PREFIXES[role]]) + public
    crc = 0
    for byte in raw:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return base64.b32encode(raw + struct.pack("<H", crc)).decode()


class NKey:
    """A fresh Ed25519 key of one role ("O" operator, "A" account, "U" user)."""

    def __init__(self, role: str):
        from nacl.signing import SigningKey
        self.signing = SigningKey.generate()
        self.public = nkey_text(role, bytes(self.signing.verify_key))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data`."""
        return self.signing.sign(data).signature


def b64url(data: bytes) -> bytes:
    """Unpadded base64url, as NATS signatures and JWTs are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def encode_jwt(subject: NKey, signer: NKey, name: str, nats: dict) -> str:
    """A JWT (nats-io/jwt v2's shape, simplified from tests/test_operator.py:
    the jti is a hash of the claims, which neither server checks) of
    `subject`, signed by `signer`."""
    claims = {"iat": int(time.time()), "iss": signer.public, "name": name,
              "sub": subject.public, "nats": nats}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(
        claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    header = b64url(b'{"typ":"JWT","alg":"ed25519-nkey"}')
    signed = header + b"." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    return (signed + b"." + b64url(signer.sign(signed))).decode()


def temp_config(prefix: str, text: str) -> str:
    """The path of a new temporary file holding `text`, removed when the
    bench exits."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    atexit.register(os.unlink, path)
    return path


class Login:
    """Logins per second: LOGIN_CLIENTS client processes, a user each, each
    logging in over and over (login_once) for the measurement's duration
    after one warm-up login. Without `jwt`, nkey users in an authorization
    block; with it, operator mode: an operator, a system account and an
    account APP preloaded in a MEMORY resolver, every user with a JWT that
    APP signed. `pure`: runs on PURE too. logins/s counts completed logins
    of all clients from the start signal to the last one's end; srv
    us/login is the server's CPU over that time per login."""

    primary = "logins"
    pure = True
    metrics = [("logins", "logins/s", True), ("cpu_us", "srv us/login", False)]

    def __init__(self, jwt: bool = False):
        self.jwt = jwt
        self._made = None           # (config path, [(user key, CONNECT head)])

    @property
    def server_args(self) -> list:
        return ["-c", self.made()[0]]

    def made(self) -> tuple:
        """The config file and each client's key and CONNECT up to its
        signature: made on first use, the same for every server."""
        if self._made is None:
            users = [NKey("U") for _ in range(LOGIN_CLIENTS)]
            head = b'CONNECT {"verbose":false,"pedantic":false,"%s":"%s","sig":"'
            if self.jwt:
                operator, system, app = NKey("O"), NKey("A"), NKey("A")
                account = {"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                                      "exports": -1, "wildcards": True, "conn": -1,
                                      "leaf": -1},
                           "default_permissions": {"pub": {}, "sub": {}},
                           "type": "account", "version": 2}
                user = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                        "type": "user", "version": 2}
                conf = ["operator: \"%s\"" % encode_jwt(operator, operator, "OP", {
                            "type": "operator", "version": 2}),
                        "resolver: MEMORY", "resolver_preload {"]
                conf += ["  %s: \"%s\"" % (acc.public, encode_jwt(acc, operator, name, account))
                         for acc, name in ((system, "SYS"), (app, "APP"))]
                conf += ["}", "system_account: %s" % system.public]
                heads = [head % (b"jwt", encode_jwt(u, app, "user%d" % i, user).encode())
                         for i, u in enumerate(users)]
            else:
                conf = ["authorization { users = ["]
                conf += ["  { nkey: %s }" % u.public for u in users]
                conf += ["] }"]
                heads = [head % (b"nkey", u.public.encode()) for u in users]
            path = temp_config("bench-login-", "\n".join(conf) + "\n")
            self._made = (path, list(zip(users, heads)))
        return self._made

    def run(self, server: Server, opts) -> dict:
        ctx = multiprocessing.get_context("fork")
        clients = []
        try:
            for user, head in self.made()[1]:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=login_client, daemon=True,
                                   args=(server.port, user, head, child))
                proc.start()
                clients.append((proc, parent))
            for _, pipe in clients:
                expect_message(pipe, "ready")
            cpu0 = server.cpu_seconds()
            start = now()
            for _, pipe in clients:
                pipe.send(start + opts.duration)
            done = [expect_message(pipe, "done", opts.duration + IO_TIMEOUT)
                    for _, pipe in clients]
            cpu = server.cpu_seconds() - cpu0
        finally:
            for proc, _ in clients:
                proc.join(2)
                if proc.is_alive():
                    proc.terminate()
        count = sum(d["count"] for d in done)
        elapsed = max(d["end"] for d in done) - start
        return {"logins": count / elapsed, "cpu_us": cpu * 1e6 / count, "count": count,
                "seconds": elapsed, "srv_cpu_share": cpu / elapsed,
                "clients_cpu": sum(d["cpu"] for d in done) / elapsed}


def login_client(port: int, user: NKey, head: bytes, pipe) -> None:
    """Child: one login (warm-up: the server's first verification may build
    tables, and it proves the credentials), 'ready', then logins until the
    deadline the parent sends; 'done' with the count, the time the last one
    ended and this process's CPU seconds."""
    try:
        login_once(port, user, head)
        pipe.send(("ready", None))
        if not pipe.poll(IO_TIMEOUT * 3):
            return
        deadline = pipe.recv()
        cpu0, count = process_cpu(), 0
        while now() < deadline:
            login_once(port, user, head)
            count += 1
        pipe.send(("done", {"count": count, "end": now(), "cpu": process_cpu() - cpu0}))
    except Exception:
        pipe.send(("crash", traceback.format_exc()))


def login_once(port: int, user: NKey, head: bytes) -> None:
    """Connect, sign the INFO's nonce, CONNECT and PING, wait for the PONG
    (an -ERR, such as 'Authorization Violation', fails the run), close."""
    sock = connect(port)
    try:
        info, rest = read_until(sock, b"", CRLF)
        nonce = NONCE_RE.search(info)
        if not nonce:
            raise BenchError("no nonce in the server's INFO: %r" % info[:300])
        sock.sendall(head + b64url(user.sign(nonce.group(1))) + LOGIN_TAIL)
        read_until(sock, rest, PONG)
    finally:
        sock.close()


# ============================================================================
# 8. Realistic traffic: tests/loadgen.c
# ============================================================================
#
# The scenarios above mostly send one PUB line over and over, which the
# stride-slice checker needs (every delivery one length) and which is
# gnatsd.py's best case. The realistic ones vary subject and payload size
# from message to message, so they are driven by tests/loadgen.c, a small C
# generator and checker compiled on demand (see its header comment): one
# process per publisher, subscriber processes holding several connections
# each, and a shared file of counters through which publishers keep within
# a window of the slowest subscriber group and this process sees progress.
# Each delivery is checked in full (subject, size, reply, per-publisher
# order); the totals are compared here with what each publisher sent.


def find_compiler() -> str:
    """$CC, else cc, gcc or clang on PATH; '' if none."""
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return ""


def build_loadgen() -> tuple:
    """(path of a loadgen binary no older than its source, '') or (None,
    why not). Compiles into bench-results/ (gitignored) when needed."""
    if os.path.exists(LOADGEN) and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SRC):
        return LOADGEN, ""
    compiler = find_compiler()
    if not compiler:
        return None, "no C compiler found (cc, gcc, clang or $CC)"
    os.makedirs(LOADGEN_DIR, exist_ok=True)
    partial = "%s.%d" % (LOADGEN, os.getpid())
    argv = [compiler, "-O2", "-o", partial, LOADGEN_SRC]
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if out.returncode:
        return None, "%s failed:\n%s" % (" ".join(argv), out.stdout.decode(errors="replace"))
    os.replace(partial, LOADGEN)
    return LOADGEN, ""


class SharedCounters:
    """The --shm file of tests/loadgen.c: publishers, groups, abort flag,
    then a published count per publisher and a delivered count per group."""

    def __init__(self, pubs: int, groups: int):
        self.pubs, self.groups = pubs, groups
        where = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.file = tempfile.NamedTemporaryFile(prefix="bench-loadgen-", dir=where)
        self.file.write(struct.pack("=%dQ" % (3 + pubs + groups), pubs, groups,
                                    *[0] * (1 + pubs + groups)))
        self.file.flush()
        self.path = self.file.name
        self.map = mmap.mmap(self.file.fileno(), 0)

    def delivered(self, group: int) -> int:
        return struct.unpack_from("=Q", self.map, 8 * (3 + self.pubs + group))[0]

    def close(self) -> None:
        self.map.close()
        self.file.close()


class LoadgenProc:
    """One loadgen process: argv, its stdout read line by line with a
    deadline, its stderr kept for the error message."""

    def __init__(self, argv: list):
        self.argv = argv
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, cwd=ROOT)
        self.buf = b""

    def failure(self) -> str:
        """Why it failed: its stderr, or its exit status."""
        self.err.seek(0)
        text = self.err.read().decode(errors="replace").strip()
        return text or "%s exited with status %s" % (self.argv[1], self.proc.poll())

    def line(self, timeout: float, others=()) -> str:
        """The next line it prints; BenchError if it exits first, if any of
        `others` dies meanwhile, or if `timeout` passes."""
        deadline = now() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            for other in others:
                if other.proc.poll() not in (None, 0):
                    raise BenchError(other.failure())
            left = deadline - now()
            if left <= 0:
                raise BenchError("loadgen %s: no output within %.0f s" % (self.argv[1], timeout))
            if select.select([fd], [], [], min(left, 0.05))[0]:
                data = os.read(fd, 65536)
                if not data:
                    self.proc.wait(5)
                    raise BenchError(self.failure() + self.others_failed(others))
                self.buf += data
        text, self.buf = self.buf.split(b"\n", 1)
        return text.decode()

    @staticmethod
    def others_failed(others, wait: float = 1.0) -> str:
        """The errors of those of `others` that failed, waiting up to `wait`
        for one to finish failing (a publisher stops on a subscriber's abort
        flag, which the subscriber raises just before it exits)."""
        deadline = now() + wait
        while True:
            failed = [o for o in others if o.proc.poll() not in (None, 0)]
            if failed or now() >= deadline:
                return "".join("\n" + o.failure() for o in failed)
            time.sleep(0.01)

    def fields(self, kind: str, timeout: float, others=()) -> dict:
        """Its next line, which must start with `kind`, as {key: value}."""
        text = self.line(timeout, others)
        words = text.split()
        if not words or words[0] != kind:
            raise BenchError("loadgen %s printed %r" % (self.argv[1], text))
        return dict(word.split("=", 1) for word in words[1:])

    def tell(self, text: str) -> None:
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it has exited; the next read says why

    def close(self) -> None:
        """Wait briefly for it to exit; kill it if it does not."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()
        self.err.close()


_ws_config = []


def ws_config_file() -> str:
    """The path of a file holding WS_CONFIG, written on first use and
    removed when the bench exits."""
    if not _ws_config:
        _ws_config.append(temp_config("bench-websocket-", WS_CONFIG))
    return _ws_config[0]


class Realistic:
    """Throughput driven by tests/loadgen.c: `pubs` publisher processes (ids
    1..pubs), each message to one of `subjects` subjects PREFIX.<k> with a
    payload of size[0]..size[1] bytes, both drawn per message; `subs`
    subscriber connections on `sub` (by default PREFIX.>, so each sees every
    message), or with `queue` a queue group of `subs` members. `reply`: every
    message carries a reply subject of its own; `headers`: every message is an
    HPUB with a header block of its own. `routed`: on a RoutedPair (a
    LeafPair with `leaf`), publishers on node 1 and subscribers on node 2 (an
    InterestProbe proves their interest crossed the route before anything is
    published). `ws`:
    the servers get WS_CONFIG and every client connects to the websocket
    port (loadgen --ws: an HTTP upgrade, then frames both ways)."""

    primary = "msgs"
    loadgen = True
    # With --sink: tests/loadgen.c's own sink (bench_sink.py scans varied
    # batches for PINGs at ~1 GB/s, below the Go servers' rates here).
    c_sink = True

    def __init__(self, pubs: int = 1, subs: int = 1, subjects: int = 64,
                 size: tuple = (16, 256), queue: bool = False, reply: bool = False,
                 prefix: str = "real", sub: str = "", routed: bool = False,
                 ws: bool = False, headers: bool = False, leaf: bool = False):
        self.pubs, self.subs, self.subjects, self.size = pubs, subs, subjects, size
        self.queue, self.reply, self.prefix, self.routed = queue, reply, prefix, routed
        self.leaf = leaf
        self.ws, self.headers = ws, headers
        self.sub = sub or prefix + ".>"
        self.metrics = [("msgs", "msgs/s", True), ("mbs", "MB/s", True),
                        ("cpu_us", "srv us/msg", False)]

    @property
    def server_args(self) -> list:
        """What every server is started with: the websocket block for `ws`."""
        return ["-c", ws_config_file()] if self.ws else []

    def traffic(self) -> list:
        """The loadgen options that define the messages (pubs and subs alike)."""
        return (["--prefix", self.prefix, "--subjects", str(self.subjects),
                 "--size", "%d-%d" % self.size, "--seed", "1"]
                + (["--reply"] if self.reply else [])
                + (["--headers"] if self.headers else []))

    def sub_procs(self) -> list:
        """(first group, connections) per subscriber process: a queue group
        is one process (its count is one counter); plain subscribers are
        spread over up to MAX_SUB_PROCS."""
        if not self.subs:
            return []
        if self.queue:
            return [(0, self.subs)]
        nprocs = min(MAX_SUB_PROCS, self.subs)
        sizes = [self.subs // nprocs + (p < self.subs % nprocs) for p in range(nprocs)]
        return [(sum(sizes[:p]), sizes[p]) for p in range(nprocs)]

    def groups(self) -> int:
        return 1 if self.queue else self.subs

    def window(self) -> int:
        """Messages all publishers may run ahead of the slowest group."""
        return max(64, WINDOW_BYTES // (sum(self.size) // 2 + 40))

    def run(self, server: Server, opts) -> dict:
        sink = server.name == "sink"
        if self.ws and not server.ws_port:
            raise BenchError("%s logged no 'Listening for websocket clients' line" % server.name)
        port = server.ws_port if self.ws else server.port
        base = ([opts.loadgen, "", "--host", HOST, "--port", str(port)] + self.traffic()
                + (["--ws"] if self.ws else []))
        counters = SharedCounters(self.pubs, self.groups())
        procs, subs, pubs = [], [], []

        def start(mode: str, extra: list) -> LoadgenProc:
            argv = list(base)
            argv[1] = mode
            proc = LoadgenProc(argv + extra)
            procs.append(proc)
            return proc

        try:
            if not sink:  # the sink delivers nothing: the publishers' ceiling alone
                sub_port = ["--port", str(server.sub_port)] if self.routed else []
                for group, conns in self.sub_procs():
                    subs.append(start("sub", ["--sub", self.sub, "--conns", str(conns),
                                              "--group", str(group), "--shm", counters.path]
                                      + (["--queue", "q"] if self.queue else []) + sub_port))
                for proc in subs:
                    proc.fields("ready", IO_TIMEOUT * 3, procs)
                if self.routed:     # their RS+ went ahead of the probe's on the route
                    InterestProbe(server, b"probe.>", b"probe.x").close()
            window = ["--shm", counters.path, "--window", str(self.window())] if subs else []
            for j in range(1, self.pubs + 1):
                pubs.append(start("pub", ["--id", str(j), "--duration", str(opts.duration),
                                          "--sync"] + window))
            for proc in pubs:
                proc.fields("ready", IO_TIMEOUT, procs)
            cpu0 = server.node_cpu_seconds()
            for proc in pubs:
                proc.tell("go")
            sent = {int(r["id"]): r for r in
                    (proc.fields("pub", opts.duration + IO_TIMEOUT * 3, procs) for proc in pubs)}
            published = sum(int(r["msgs"]) for r in sent.values())
            self.wait_delivered(counters, published, subs)
            cpu = [b - a for a, b in zip(cpu0, server.node_cpu_seconds())]
            for proc in subs:
                proc.tell("stop")
            conns = [proc.fields("sub", IO_TIMEOUT * 3, procs)
                     for proc, (_, n) in zip(subs, self.sub_procs()) for _ in range(n)]
        finally:
            for proc in procs:
                proc.close()
            counters.close()
        self.verify(sent, conns)
        return self.metrics_of(sent, conns, cpu)

    def wait_delivered(self, counters: SharedCounters, published: int, subs: list) -> None:
        """Until every group has counted `published` deliveries; BenchError
        if a subscriber process dies or progress stops for IO_TIMEOUT."""
        last_total, last_change = -1, now()
        while True:
            got = [counters.delivered(g) for g in range(self.groups())] if subs else []
            if all(n >= published for n in got):
                return
            for proc in subs:
                if proc.proc.poll() is not None:
                    raise BenchError(proc.failure())
            if sum(got) != last_total:
                last_total, last_change = sum(got), now()
            elif now() - last_change > IO_TIMEOUT:
                raise BenchError("lost messages: groups got %s of %d" % (got, published))
            time.sleep(0.002)

    def verify(self, sent: dict, conns: list) -> None:
        """Every group got every publisher's messages exactly once: counts
        and sums of the messages' hashes per publisher (a queue group's
        members summed), against what each publisher reports sending."""
        by_group = {}
        for conn in conns:
            tally = by_group.setdefault(int(conn["group"]), {})
            for item in filter(None, conn["pubs"].split(",")):
                pub, count, digest = item.split(":")
                got = tally.setdefault(int(pub), [0, 0])
                got[0] += int(count)
                got[1] = (got[1] + int(digest, 16)) % (1 << 64)
        for group in range(self.groups() if conns else 0):
            tally = by_group.get(group, {})
            for pub, res in sent.items():
                count, digest = tally.pop(pub, [0, 0])
                want = int(res["msgs"])
                if count != want:
                    raise BenchError("group %d got %d of publisher %d's %d messages (%s)" % (
                        group, count, pub, want, "duplicates" if count > want else "loss"))
                if digest != int(res["hash"], 16):
                    raise BenchError("group %d: publisher %d's messages were not each "
                                     "delivered once (hash sums differ)" % (group, pub))
            if tally:
                raise BenchError("group %d got messages from unknown publishers %s" % (
                    group, sorted(tally)))

    def metrics_of(self, sent: dict, conns: list, cpu: list) -> dict:
        """Rates as Throughput's: deliveries (publishes without subscribers)
        per second from the first publish to the last delivery; server CPU
        per counted message."""
        start = min(float(r["start"]) for r in sent.values())
        end = max(float(r["end"]) for r in sent.values())
        published = sum(int(r["msgs"]) for r in sent.values())
        delivered = sum(int(c["msgs"]) for c in conns)
        last = max([end] + [float(c["last"]) for c in conns])
        elapsed = (last if delivered else end) - start
        count = delivered if conns else published
        nbytes = (sum(int(c["bytes"]) for c in conns) if conns
                  else sum(int(r["bytes"]) for r in sent.values()))
        generator = sum(float(r["cpu"]) for r in list(sent.values()) + conns if "cpu" in r)
        return {"msgs": count / elapsed, "mbs": nbytes / elapsed / 1e6,
                "cpu_us": sum(cpu) * 1e6 / max(1, count),
                "pub_msgs": published / (end - start), "published": published,
                "delivered": delivered, "seconds": elapsed,
                "server_cpu": sum(cpu) / elapsed, "node_cpu": [c / elapsed for c in cpu],
                "generator_cpu": generator / elapsed,
                "msgs_per_read": delivered / max(1, sum(int(c["reads"]) for c in conns))}

    def ceiling(self, opts) -> float:
        """One subscriber process's checking rate (loadgen speed), msgs/s."""
        out = subprocess.run([opts.loadgen, "speed"] + self.traffic(), stdout=subprocess.PIPE)
        fields = dict(w.split("=") for w in out.stdout.decode().split()[1:])
        return float(fields.get("check", 0)) if self.subs else 0.0


class RealReqRep:
    """Sequential request/reply through tests/loadgen.c as a NATS client
    does it: one wildcard inbox subscription (_INBOX.<id>.*) and a reply
    subject of its own per request; requests go to 64 subjects with 16..256
    byte payloads; a responder (PREFIX.>) echoes each payload to its reply
    subject. Both ends check every message."""

    primary = "p50"
    loadgen = True
    metrics = ReqRep.metrics

    def __init__(self):
        self.base = Realistic(subs=1, reply=True)

    def run(self, server: Server, opts) -> dict:
        traffic = ["--host", HOST, "--port", str(server.port)] + self.base.traffic()
        procs = []
        try:
            if server.name != "sink":  # the sink echoes requests itself
                procs.append(LoadgenProc([opts.loadgen, "sub", "--sub", self.base.sub,
                                          "--respond", "--coalesce-us", "0"] + traffic))
                procs[0].fields("ready", IO_TIMEOUT * 3)
            requester = LoadgenProc([opts.loadgen, "req", "--id", "1", "--duration",
                                     str(opts.duration), "--sync"] + traffic)
            procs.append(requester)
            requester.fields("ready", IO_TIMEOUT, procs)
            requester.tell("go")
            res = requester.fields("req", opts.duration + IO_TIMEOUT * 3, procs)
            if len(procs) == 2:  # the responder answered each request once
                procs[0].tell("stop")
                answered = int(procs[0].fields("sub", IO_TIMEOUT, procs)["msgs"])
                if answered != int(res["count"]) + LOADGEN_WARMUP:
                    raise BenchError("the responder saw %d requests, the requester made %d" % (
                        answered, int(res["count"]) + LOADGEN_WARMUP))
        finally:
            for proc in procs:
                proc.close()
        return {"p50": float(res["p50"]), "p99": float(res["p99"]), "rps": float(res["rps"]),
                "requests": int(res["count"])}

    def ceiling(self, opts) -> float:
        return 0.0


# The self-test's fake websocket server (loadgen --ws): the upgrade, and
# frames as a server may send them, split across reads.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CLOSE, WS_PING, WS_PONG = 8, 9, 10


def ws_frame(opcode: int, data: bytes, fin: bool = True, first_byte: int = 0,
             masked: bool = False) -> bytes:
    """A server frame (unmasked unless `masked`, with the zero key);
    `first_byte` ORs in more bits (RSV)."""
    n = len(data)
    b1 = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | opcode | first_byte])
    if n < 126:
        head += bytes([b1 | n])
    elif n < 65536:
        head += bytes([b1 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([b1 | 127]) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + data


def ws_frames(stream: bytes, rng: random.Random) -> list:
    """`stream` in frames of every length class (empty, 7-, 16- and 64-bit
    lengths), some messages fragmented into continuation frames, pings and
    pongs between frames (also inside a fragmented message)."""
    frames, pos, fragmented = [], 0, False
    while pos < len(stream):
        kind = rng.random()
        size = (rng.randint(0, 125) if kind < 0.5 else rng.randint(126, 65535) if kind < 0.85
                else rng.randint(65536, 200000))
        chunk = stream[pos:pos + size]
        pos += len(chunk)
        fin = pos >= len(stream) or rng.random() < 0.6
        frames.append(ws_frame(0 if fragmented else 2, chunk, fin))
        fragmented = not fin
        if rng.random() < 0.15:
            frames.append(ws_frame(rng.choice((WS_PING, WS_PONG)), b"self-test"))
    return frames


class FakePeer:
    """The fake server's side of a loadgen connection: plain, or with
    `ws` a websocket one, which reads the upgrade request and answers it
    (with `answer`, else a 101 for its key), frames what it sends and
    unframes what it reads, each client frame checked: final, binary,
    masked."""

    def __init__(self, sock: socket.socket, ws: bool, rng: random.Random):
        self.sock, self.ws, self.rng = sock, ws, rng
        self.raw = self.stream = self.pending = b""

    def upgrade(self, answer: bytes = b"") -> None:
        head, self.raw = read_until(self.sock, b"", b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(":") for line in lines[1:] if line)}
        key = fields.get("sec-websocket-key", "")
        if (lines[0] != "GET / HTTP/1.1" or "host" not in fields
                or fields.get("upgrade", "").lower() != "websocket"
                or fields.get("connection", "").lower() != "upgrade"
                or fields.get("sec-websocket-version") != "13"
                or len(base64.b64decode(key, validate=True)) != 16):
            raise BenchError("bad upgrade request: %r" % head)
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())
        # Sent with the first frame, as Go and gnatsd.py send INFO with it.
        self.pending = answer or (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                                  b"\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                                  b"\r\n" % accept)

    def send(self, data: bytes) -> None:
        """`data` as they are or, for ws, as one frame."""
        self.sock.sendall(self.pending + (ws_frame(2, data) if self.ws else data))
        self.pending = b""

    def send_frames(self, frames: list) -> None:
        """Ready frames, each cut inside its header (a short pause between
        the pieces), so that headers straddle the client's reads."""
        for frame in frames:
            cut = self.rng.randint(1, {126: 3, 127: 9}.get(frame[1] & 127, 1))
            self.sock.sendall(frame[:cut])
            time.sleep(0.0002)
            self.sock.sendall(frame[cut:])

    def read_until(self, marker: bytes) -> None:
        """Read (unframing, for ws) until `marker` came; what follows is dropped."""
        if not self.ws:
            read_until(self.sock, b"", marker)
            return
        while marker not in self.stream:
            while len(self.raw) >= 2:
                b0, b1 = self.raw[0], self.raw[1]
                if b0 != 0x82 or not b1 & 0x80:
                    raise BenchError("client frame not final, binary and masked: %r"
                                     % self.raw[:2])
                n, at = b1 & 127, 2
                if n >= 126:
                    at = 4 if n == 126 else 10
                    n = int.from_bytes(self.raw[2:at], "big")
                if len(self.raw) < at + 4 + n:
                    break
                key = self.raw[at:at + 4] * (n // 4 + 1)
                data = self.raw[at + 4:at + 4 + n]
                self.stream += bytes(a ^ b for a, b in zip(data, key))
                self.raw = self.raw[at + 4 + n:]
            if marker not in self.stream:
                self.raw += recv_some(self.sock)
        self.stream = b""


def fake_server_feed(loadgen: str, traffic: list, stream: bytes, queue: bool,
                     ws=None, answer: bytes = b"") -> tuple:
    """Serve `stream` to a loadgen subscriber as a server would: INFO, the
    handshake's PONG, the stream, then the PONG of its final PING. With
    `ws` (a function of the stream and an rng returning frames), over
    websocket: the upgrade answered (by `answer` if given), the stream sent
    as ws(...)'s frames. Returns (its sub fields or None, its error text or '')."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(IO_TIMEOUT)
    argv = [loadgen, "sub", "--port", str(listener.getsockname()[1]), "--sub", "real.>"]
    proc = LoadgenProc(argv + traffic + (["--queue", "q"] if queue else [])
                       + (["--ws"] if ws else []))
    rng = random.Random(len(stream))
    try:
        sock, _ = listener.accept()
        sock.settimeout(IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = FakePeer(sock, bool(ws), rng)
        try:
            if ws:
                peer.upgrade(answer)
            peer.send(b'INFO {"server_id":"self-test","max_payload":1048576}\r\n')
            peer.read_until(PING)
            peer.send(PONG)
            proc.fields("ready", IO_TIMEOUT)
        except BenchError as e:
            if not ws:
                raise
            try:  # loadgen refused the upgrade: its reason
                proc.proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None, "fake server: %s" % e
            return None, proc.failure()
        try:
            if ws:
                peer.send_frames(ws(stream, rng))
            else:
                sock.sendall(stream)
            proc.tell("stop")
            peer.read_until(PING)
            peer.send(PONG)
        except (OSError, BenchError):
            pass  # it found a fault and hung up
        try:
            return proc.fields("sub", IO_TIMEOUT), ""
        except BenchError as e:
            return None, str(e)
    finally:
        proc.close()
        listener.close()


def loadgen_frames(loadgen: str, traffic: list) -> tuple:
    """What publisher 1's first 5,000 messages of `traffic` look like to a
    subscriber: ({1: the publisher's fields}, its MSG or HMSG frames)."""
    out = subprocess.run([loadgen, "frames", "--count", "5000"] + traffic,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    sent = {1: dict(w.split("=") for w in out.stderr.decode().split()[1:])}
    frames, pos = [], 0
    while pos < len(out.stdout):  # split the stream into whole frames (total size last)
        eol = out.stdout.index(CRLF, pos)
        end = eol + 2 + int(out.stdout[pos:eol].split()[-1]) + 2
        frames.append(out.stdout[pos:end])
        pos = end
    return sent, frames


def loadgen_self_test(loadgen: str) -> int:
    """Feed loadgen subscribers streams with known faults: each must be
    caught, by the subscriber itself or by Realistic.verify. Returns failures."""
    spec = Realistic(reply=True)
    traffic = spec.traffic()
    sent, frames = loadgen_frames(loadgen, traffic)
    head, body = frames[100].split(CRLF, 1)
    other = frames[101].split(CRLF, 1)[0].split()[1]
    cases = [  # (name, frames, must it be caught)
        ("clean", frames, False),
        ("ping inside", frames[:100] + [PING] + frames[100:], False),
        ("lost one", frames[:3000] + frames[3001:], True),
        ("lost the last", frames[:-1], True),
        ("doubled one", frames[:3000] + frames[2999:], True),
        ("swapped two", frames[:3000] + [frames[3001], frames[3000]] + frames[3002:], True),
        ("wrong subject", frames[:100] + [frames[100].replace(head.split()[1], other, 1)]
         + frames[101:], True),
        ("wrong size", frames[:100] + [head.rsplit(b" ", 1)[0] + b" %d\r\n" % (len(body) - 3)
                                       + body[:-3] + CRLF] + frames[101:], True),
        ("short payload", frames[:100] + [frames[100][:-3] + CRLF] + frames[101:], True),
        ("no reply", frames[:100] + [b" ".join(head.split()[:3] + head.split()[4:]) + CRLF + body]
         + frames[101:], True),
        ("-ERR inside", frames[:100] + [b"-ERR 'Slow Consumer Detected'\r\n"] + frames[100:],
         True),
    ]
    # Each case for a plain subscriber and a queue member (one connection
    # each), then a queue group of two where a message reaches both members
    # and another none: every count looks right, the hash sums do not.
    runs = [(name, [stream], catch, queue, None, b"", spec) for name, stream, catch in cases
            for queue in (False, True)]
    runs.append(("dup+loss", [frames[:2] + frames[2::2], frames[1:2] + frames[5::2]], True, True,
                 None, b"", spec))

    # With --headers: HMSG frames whose header block repeats the stamp.
    hspec = Realistic(reply=True, headers=True)
    hsent, hframes = loadgen_frames(loadgen, hspec.traffic())
    hhead, hbody = hframes[100].split(CRLF, 1)
    hsize = hhead.split()[-2]
    assert hhead.startswith(b"HMSG ") and hsize == b"38", hhead
    runs += [(name, [stream], catch, False, None, b"", hspec) for name, stream, catch in [
        ("hdr clean", hframes, False),
        ("hdr lost one", hframes[:3000] + hframes[3001:], True),
        ("hdr stamp", hframes[:100] + [hhead + CRLF + hbody.replace(b"Msg-Id: 0001",
                                                                    b"Msg-Id: 0002", 1)]
         + hframes[101:], True),
        ("hdr size", hframes[:100] + [hhead.replace(b" 38 ", b" 37 ", 1) + CRLF + hbody]
         + hframes[101:], True),
        ("hdr as MSG", hframes[:100] + frames[100:101] + hframes[101:], True),
    ]]

    # Over websocket (--ws): the stream in frames of every length class,
    # fragmented, with pings and pongs, every header split across reads;
    # then frames a server must not send, and refused upgrades.
    def with_frame(extra: bytes, at_start: bool = True):
        def framer(stream: bytes, rng: random.Random) -> list:
            out = ws_frames(stream, rng)
            out.insert(0 if at_start else len(out) // 2, extra)
            return out
        return framer

    ws_cases = [  # (name, frames, must it be caught, framer, upgrade answer)
        ("ws clean", frames, False, ws_frames, b""),
        ("ws lost one", frames[:3000] + frames[3001:], True, ws_frames, b""),
        ("ws close", frames, True, with_frame(ws_frame(WS_CLOSE, b"\x03\xf0Slow Consumer"),
                                              False), b""),
        ("ws masked", frames, True, with_frame(ws_frame(2, PING, masked=True)), b""),
        ("ws rsv1", frames, True, with_frame(ws_frame(2, PING, first_byte=0x40)), b""),
        ("ws stray cont", frames, True, with_frame(ws_frame(0, PING)), b""),
        ("ws long ping", frames, True, with_frame(ws_frame(WS_PING, b"x" * 126)), b""),
        ("ws refused", frames, True, ws_frames,
         b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        ("ws bad accept", frames, True, ws_frames,
         b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
         b"\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"),
    ]
    runs += [(name, [stream], catch, False, framer, answer, spec)
             for name, stream, catch, framer, answer in ws_cases]
    failures = 0
    for name, members, must_catch, queue, framer, answer, run_spec in runs:
        conns, error = [], ""
        for stream in members:
            conn, error = fake_server_feed(loadgen, run_spec.traffic(), b"".join(stream), queue,
                                           framer, answer)
            if error:
                break
            conn["group"] = "0"
            conns.append(conn)
        if not error:
            try:
                run_spec.verify(hsent if run_spec is hspec else sent, conns)
            except BenchError as e:
                error = "verify: %s" % e
        ok = bool(error) == must_catch
        failures += not ok
        print("%-4s loadgen %-13s queue=%-5s -> %s" % (
            "ok" if ok else "FAIL", name, queue, (error or "count %d of %d" % (
                sum(int(c["msgs"]) for c in conns), len(frames))).splitlines()[0]))
    return failures


# Scenario names in run order: the realistic ones first (tests/loadgen.c),
# then the older ones, which mostly repeat one PUB line.
SCENARIOS = {
    "real_pub": Realistic(pubs=4, subs=0),
    "real_pubsub": Realistic(),
    "real_fanout8": Realistic(subs=8),
    "real_queue4": Realistic(subs=4, queue=True),
    "real_10k": Realistic(subjects=10000),
    "real_100k": Realistic(subjects=100000),
    "real_big": Realistic(size=(KIB, 64 * KIB)),
    "real_reply": Realistic(reply=True),
    "real_headers": Realistic(headers=True),
    "real_reqrep": RealReqRep(),
    "real_route": Realistic(routed=True),
    "real_route_10k": Realistic(routed=True, subjects=10000),
    "real_leaf": Realistic(routed=True, leaf=True),
    "real_ws": Realistic(ws=True),
    "same_line": Realistic(subjects=1, size=(128, 128), prefix="line", sub="line.0"),
    "varied_line": Realistic(subjects=1, size=(64, 192), prefix="line", sub="line.0"),
    "pub": Throughput(SMALL, 0),
    "pubsub": Throughput(SMALL, 1),
    "pubsub2": Throughput(SMALL, 1, subjects=(b"bench.a", b"bench.b"), sub=b"bench.*"),
    "fanout4": Throughput(SMALL, 4),
    "fanout16": Throughput(SMALL, 16),
    "queue4": Throughput(SMALL, 4, queue=True),
    "pubsub1k": Throughput(KIB, 1),
    "tlspubsub1k": Throughput(KIB, 1, tls=True),
    "routepubsub": Throughput(SMALL, 1, routed=True),
    "routepubsub1k": Throughput(KIB, 1, routed=True),
    "reqrep": ReqRep(),
    "idle10k": Idle(IDLE_CONNS),
    "subs100k": ManySubs(),
    "login_nkey": Login(),
    "login_jwt": Login(jwt=True),
}
# Left out of the default run (--scenarios names them): see the docstring.
OPTIONAL_SCENARIOS = ("login_nkey", "login_jwt")


# ============================================================================
# 9. Running, medians and the table
# ============================================================================
#
# For each scenario, for each repetition, each server in turn: a fresh
# server, one measurement, server stopped. Progress goes to stderr; the
# header and the table to stdout, ready to paste.


def run_one(scenario, name: str, argv: list, opts) -> dict:
    """One measurement on a fresh server; {'error': text} if it failed."""
    server = None
    kind = Server
    if getattr(scenario, "routed", False):
        kind = LeafPair if getattr(scenario, "leaf", False) else RoutedPair
    if name == "sink" and getattr(scenario, "c_sink", False):
        argv = [opts.loadgen, "sink"]  # as cheap as the C publishers it serves
    try:
        server = kind(name, argv, getattr(scenario, "server_args", ())).start()
        result = scenario.run(server, opts)
        if not server.alive():
            raise BenchError("%s exited during the run:\n%s" % (name, server.tail()))
        return result
    except BenchError as e:
        tail = server.tail() if server and not server.alive() else ""
        if server and not tail and "closed the connection" in str(e):
            # Why did a live server hang up (a slow consumer, an error)?
            tail = "server log ends:\n" + "\n".join(server.tail().splitlines()[-4:])
        return {"error": str(e) + ("\n" + tail if tail else "")}
    finally:
        if server:
            server.stop()


def progress_line(count: str, scen: str, name: str, rep: int, result: dict, scenario) -> str:
    """One stderr line per measurement."""
    if "error" in result:
        return "%s %-9s %-11s rep %d  FAIL: %s" % (count, scen, name, rep, result["error"])
    shown = "  ".join("%s %s" % (fmt_value(result[key], label), label)
                      for key, label, _ in scenario.metrics)
    if "server_cpu" in result:
        shown += "  (pub %s msgs/s; cpu: server %s%%, generator %.0f%%)" % (
            fmt_value(result["pub_msgs"], "msgs/s"),
            "+".join("%.0f" % (100 * c) for c in result["node_cpu"]),
            100 * result["generator_cpu"])
    if "clients_cpu" in result:
        shown += "  (%d logins; cpu: server %.0f%%, clients %.0f%%)" % (
            result["count"], 100 * result["srv_cpu_share"], 100 * result["clients_cpu"])
    return "%s %-9s %-11s rep %d  %s" % (count, scen, name, rep, shown)


def runs_on(scenario, name: str) -> bool:
    """Whether `scenario` is measured on server `name`: the sink speaks no
    TLS or websocket, takes no routes and asks for no logins; PURE is only
    for the scenarios marked `pure` (the others would show nothing new)."""
    if name == "sink":
        return not any(getattr(scenario, attr, False) for attr in ("tls", "routed", "ws", "pure"))
    return name != PURE or getattr(scenario, "pure", False)


def run_all(opts, commands: dict) -> dict:
    """Every scenario x repetition x server, interleaved; {scen: {server: [results]}}."""
    results = {s: {n: [] for n in commands} for s in opts.scenarios}
    total = opts.reps * sum(runs_on(SCENARIOS[s], n) for s in opts.scenarios for n in commands)
    done = 0
    for scen in opts.scenarios:
        scenario = SCENARIOS[scen]
        for rep in range(1, opts.reps + 1):
            for name, argv in commands.items():
                if not runs_on(scenario, name):
                    continue
                result = run_one(scenario, name, argv, opts)
                results[scen][name].append(result)
                done += 1
                count = "[%*d/%d]" % (len(str(total)), done, total)
                print(progress_line(count, scen, name, rep, result, scenario),
                      file=sys.stderr, flush=True)
    return results


def median_of(runs: list, key: str):
    """Median of one metric over repetitions; None if any repetition failed."""
    if not runs or any("error" in r for r in runs):
        return None
    return statistics.median(r[key] for r in runs)


def fmt_value(value, label: str) -> str:
    """A metric for the table: msgs/s as 1.23M, others with sensible decimals."""
    if value is None:
        return "FAIL"
    if label in ("msgs/s", "req/s", "subs/s", "logins/s"):
        if value >= 1e6:
            return "%.2fM" % (value / 1e6)
        return "%.0fk" % (value / 1e3) if value >= 1e4 else "%.0f" % value
    if label in ("KiB/conn", "srv us/msg"):
        return "%.2f" % value
    return "%.1f" % value


def ratio_text(mine, theirs) -> str:
    """gnatsd/go as '0.42', or '-' when either is missing."""
    if mine is None or theirs is None or theirs == 0:
        return "-"
    return "%.2f" % (mine / theirs)


def target_text(scen: str, medians: dict) -> str:
    """The scenario's target and whether gnatsd.py meets it."""
    mine = medians.get("gnatsd")
    if getattr(SCENARIOS[scen], "pure", False):
        pure = medians.get(PURE)
        verdict = "" if pure is None else (" ok" if pure >= LOGIN_PURE_TARGET else " MISS")
        return "%s>=%d/s%s" % (PURE, LOGIN_PURE_TARGET, verdict)
    if scen in TARGETS:
        go = medians.get("go2.9")
        verdict = "" if mine is None or not go else (
            " ok" if mine / go >= TARGETS[scen] else " MISS")
        return ">=%.2fx%s" % (TARGETS[scen], verdict)
    if scen == "idle10k":
        verdict = "" if mine is None else (" ok" if mine <= IDLE_TARGET_KIB else " MISS")
        return "<=%.0f KiB%s" % (IDLE_TARGET_KIB, verdict)
    return ""


def table_rows(results: dict, names: list) -> list:
    """Rows of the median table: scenario, metric, one value per server,
    ratios against each Go server, target."""
    gos = [n for n in names if n.startswith("go")] if "gnatsd" in names else []
    rows = [["scenario", "metric"] + names + ["gnatsd/%s" % g for g in gos] + ["target"]]
    previous = None
    for scen, by_server in results.items():
        scenario = SCENARIOS[scen]
        if not getattr(scenario, "loadgen", False) and getattr(
                SCENARIOS.get(previous), "loadgen", False):
            rows.append(BEST_CASE_NOTE)
        previous = scen
        for key, label, _ in scenario.metrics:
            medians = {n: median_of(by_server[n], key) for n in names}
            row = [scen if key == scenario.metrics[0][0] else "", label]
            row += [fmt_value(medians[n], label) if by_server[n] else "-" for n in names]
            row += [ratio_text(medians["gnatsd"], medians[g]) for g in gos]
            row.append(target_text(scen, medians) if key == scenario.primary else "")
            rows.append(row)
    return rows


def format_table(rows: list, text_columns: int = 2, text_last: bool = True) -> str:
    """Text columns (the first `text_columns`, and the last if `text_last`)
    left-aligned, numbers right-aligned, a rule under the heading. A row
    that is a string is a note, printed as it is."""
    widths = [max(len(row[i]) for row in rows if not isinstance(row, str))
              for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        cells = [c.ljust(w) if i < text_columns or (text_last and i == len(row) - 1)
                 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def header(opts, commands: dict) -> str:
    """Machine, interpreters, servers and run shape: the table's context."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["gnatsd.py benchmark, %s" % stamp,
             "machine : %s, %d cores, %.1f GiB RAM, %s %s" % (
                 cpu_model(), os.cpu_count() or 0, mem_total_gib(), platform.system(),
                 platform.release()),
             "bench   : Python %s (%s)" % (platform.python_version(), sys.executable)]
    lines.append("commit  : %s" % git_commit())
    for name, argv in commands.items():
        lines.append("%-8s: %s" % (name, describe_server(name, argv)))
    lines.append("loadgen : %s" % opts.loadgen_note)
    if any(getattr(SCENARIOS[s], "pure", False) for s in opts.scenarios):
        import nacl
        lines.append("logins  : %d client processes (this Python), signing with PyNaCl %s" % (
            LOGIN_CLIENTS, nacl.__version__))
    lines.append("run     : %d reps x %.1f s per measurement, servers interleaved, medians; "
                 "payload sizes: see the notes under the table" % (opts.reps, opts.duration))
    lines.append("load    : %.2f (1-min load average before the run%s)" % (
        opts.load_before, "; other work was running, numbers are noisy"
        if opts.load_before > BUSY_LOAD else ""))
    return "\n".join(lines)


LEGEND = """\
Realistic rows (tests/loadgen.c; subject and payload size drawn per message:
64 subjects real.<k>, 16..256-byte payloads, subscribers on real.>, unless
named): real_pub 4 publishers, no subscribers; real_pubsub 1 pub, 1 sub;
real_fanout8 8 subs; real_queue4 a queue group of 4; real_10k/real_100k
10,000/100,000 subjects; real_big 1..64 KiB payloads; real_reply a distinct
reply subject per message; real_headers an HPUB with a 38-byte header block
(a Msg-Id of its own) per message; real_reqrep sequential requests, a reply inbox
each; same_line 1 subject, 128 bytes every message vs varied_line 1 subject,
64..192 bytes. real_route/real_route_10k: real_pubsub across a route (two
nodes, publisher on node 1, subscriber on node 2; srv us/msg sums both
nodes' CPU); real_leaf: the same across a leaf connection (publisher on the
leaf, subscriber on its hub). real_ws is real_pubsub with both clients on the websocket
port (ws://, no TLS or compression; each write one binary frame, masked
with the zero key). The older rows: 16-byte payloads unless named.
msgs/s counts deliveries summed over subscribers (publishes for pub and
real_pub; one delivery per publish for queue groups and subs100k). MB/s is
payload bytes. srv us/msg is the server's CPU time (user+system, all
threads) per message so counted, over the timed window.
Latency and CPU rows: lower is better, so a ratio above 1 means gnatsd.py
is slower or costlier. Targets are gnatsd/go2.9 ratios; idle10k's is
gnatsd.py's own KiB/conn."""

LOGIN_LEGEND = """\
Logins (login_nkey, login_jwt): %d client processes, a user each, log in
over and over: connect, sign INFO's nonce (PyNaCl), CONNECT + PING, PONG,
close. login_nkey: nkey users in an authorization block; login_jwt:
operator mode, a user JWT each (gnatsd.py verifies a JWT once and
remembers it; Go verifies it at every login). srv us/login is the server's
CPU time per login. %s is gnatsd.py under `python %s` (no
site-packages, so no `cryptography` package: plain-Python Ed25519); the
target is its logins/s (issue 17: pure Python >= %d verifications/s).""" % (
    LOGIN_CLIENTS, PURE, PURE_FLAG, LOGIN_PURE_TARGET)


def git_commit() -> str:
    """The checked-out commit (short hash), noting uncommitted changes to
    gnatsd.py; '?' outside a git checkout."""
    head = command_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    if not re.fullmatch(r"[0-9a-f]{4,40}", head):
        return "?"
    dirty = command_output(["git", "-C", ROOT, "status", "--porcelain", "--", "gnatsd.py"])
    return head + (" (gnatsd.py has uncommitted changes)" if dirty else "")


def ceilings_text(results: dict, scenarios: list, opts) -> str:
    """Generator ceilings per throughput scenario beside what the real servers
    in this run needed: the publisher against the sink vs the fastest publish
    rate seen; one subscriber process's checker vs the most deliveries one
    subscriber process took."""
    rows = [["scenario", "publisher: sink", "needed", "sub process: checker", "needed"]]
    for scen in scenarios:
        scenario = SCENARIOS[scen]
        if not isinstance(scenario, (Throughput, Realistic)):
            continue
        runs = results[scen]
        sink = median_of(runs.get("sink", []), "pub_msgs") if "sink" in runs else None
        real = [r for n, rs in runs.items() if n != "sink" for r in rs if "error" not in r]
        if isinstance(scenario, Realistic):
            procs = max(1, len(scenario.sub_procs()))
            check = scenario.ceiling(opts)
        else:
            procs = max(1, min(MAX_SUB_PROCS, scenario.subs))
            check = scenario.ceiling()
        needed_pub = max((r["pub_msgs"] for r in real), default=None)
        needed_sub = max((r["msgs"] / procs for r in real if r["delivered"]), default=None)
        rows.append([scen] + [fmt_value(v, "msgs/s") if v else "-"
                              for v in (sink, needed_pub, check, needed_sub)])
    return "Generator ceilings (msgs/s):\n" + format_table(rows, 1, False)


def write_results(path: str, text: str, failed: list) -> None:
    """The run's header, table and legend as a Markdown file (overwritten)."""
    doc = ["# gnatsd.py benchmark results", "",
           "Written by `make bench` (tests/bench.py --results); each run overwrites it.",
           "This run: `%s`." % " ".join(["tests/bench.py"] + sys.argv[1:]), "",
           "```", text, "```", ""]
    if failed:
        doc += ["Failed measurements:", ""] + ["* %s on %s: %s" % (
            scen, name, error.splitlines()[0]) for scen, name, error in failed] + [""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(doc))


def write_json(path: str, opts, commands: dict, results: dict, head: str) -> None:
    """Everything measured, for later comparison."""
    medians = {scen: {name: {key: median_of(runs, key) for key, _, _ in SCENARIOS[scen].metrics}
                      for name, runs in by_server.items()}
               for scen, by_server in results.items()}
    doc = {"header": head, "reps": opts.reps, "duration": opts.duration,
           "servers": {n: a for n, a in commands.items()}, "medians": medians,
           "runs": results}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)


# ============================================================================
# 10. Command line
# ============================================================================


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark gnatsd.py against the Go nats-server.",
        epilog="Scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--scenarios",
                        default=",".join(s for s in SCENARIOS if s not in OPTIONAL_SCENARIOS),
                        help="comma-separated scenarios (default: all but %s)" % ", ".join(
                            OPTIONAL_SCENARIOS))
    parser.add_argument("--servers", default="",
                        help="comma-separated: gnatsd, go2.9, go2.15, sink, %s "
                             "(default: gnatsd and every Go server found, and %s "
                             "for the login scenarios)" % (PURE, PURE))
    parser.add_argument("--sink", action="store_true",
                        help="same as --servers sink: measure the generator alone")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per throughput/latency measurement (default 2)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs gnatsd.py (default: this one)")
    parser.add_argument("--idle-conns", type=int, default=IDLE_CONNS,
                        help="connections for idle10k (default %d)" % IDLE_CONNS)
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    parser.add_argument("--results", metavar="PATH",
                        help="also write the header and table as Markdown (make bench: "
                             "tests/BENCH-RESULTS.md)")
    parser.add_argument("--self-test", action="store_true",
                        help="check that the delivery checker catches loss, "
                             "duplicates and reordering, then exit")
    opts = parser.parse_args(argv)
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    unknown = [s for s in opts.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error("unknown scenario(s): %s" % ", ".join(unknown))
    return opts


def choose_servers(opts) -> dict:
    """{name: argv} for the servers this run measures, in column order."""
    known = server_commands(opts.python)
    if opts.sink:
        wanted = ["sink"]
    elif opts.servers:
        wanted = [s for s in opts.servers.split(",") if s]
    else:
        wanted = [n for n in known if n != "sink" and (n != PURE or any(
            getattr(SCENARIOS[s], "pure", False) for s in opts.scenarios))]
        if not os.path.exists(GNATSD):
            print("note: %s not found; measuring the Go servers only" % GNATSD, file=sys.stderr)
            wanted = [n for n in wanted if n not in ("gnatsd", PURE)]
    missing = [n for n in wanted if n not in known
               or (n in ("gnatsd", PURE) and not os.path.exists(GNATSD))]
    if ("gnatsd" in wanted or PURE in wanted) and not shutil.which(opts.python):
        raise SystemExit("--python %s: no such interpreter" % opts.python)
    if missing:
        raise SystemExit("not available here: %s (known: %s)" % (
            ", ".join(missing), ", ".join(known)))
    if PURE in wanted and subprocess.run(
            known[PURE][:-1] + ["-c", "import cryptography"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0:
        raise SystemExit("%s: `%s %s` can import cryptography, so it would not measure "
                         "plain-Python Ed25519" % (PURE, opts.python, PURE_FLAG))
    return {n: known[n] for n in wanted}


def use_nacl(opts) -> None:
    """The login scenarios sign with PyNaCl: without it, drop them with a note."""
    wanted = [s for s in opts.scenarios if isinstance(SCENARIOS[s], Login)]
    if not wanted:
        return
    try:
        import nacl.signing  # noqa: F401
    except ImportError as e:
        opts.scenarios = [s for s in opts.scenarios if s not in wanted]
        print("note: %s need PyNaCl (%s; `make dev` installs it into .venv): skipped" % (
            ", ".join(wanted), e), file=sys.stderr)


def use_loadgen(opts) -> None:
    """Build tests/loadgen.c if the chosen scenarios need it; without it,
    drop those scenarios with a note."""
    wanted = [s for s in opts.scenarios if getattr(SCENARIOS[s], "loadgen", False)]
    opts.loadgen, why = build_loadgen() if wanted else (None, "")
    if opts.loadgen:
        opts.loadgen_note = "%s (%s)" % (os.path.relpath(opts.loadgen, ROOT), " ".join(
            command_output([find_compiler() or "cc", "--version"]).splitlines()[:1]) or "cc")
    elif wanted:
        opts.scenarios = [s for s in opts.scenarios if s not in wanted]
        opts.loadgen_note = "not built: %s; skipped %s" % (why.splitlines()[0], ", ".join(wanted))
        print("note: the realistic scenarios need tests/loadgen.c compiled, and %s.\n"
              "note: skipping %s; the others still run." % (why, ", ".join(wanted)),
              file=sys.stderr)
    else:
        opts.loadgen_note = "not needed by these scenarios"


def fit_idle_conns(opts) -> None:
    """Raise the fd limit for idle10k; use fewer connections if it cannot."""
    limit = raise_fd_limit(opts.idle_conns + 1000)
    SCENARIOS["idle10k"].conns = min(opts.idle_conns, limit - 1000)
    if SCENARIOS["idle10k"].conns < opts.idle_conns:
        print("note: RLIMIT_NOFILE %d allows only %d idle connections" % (
            limit, SCENARIOS["idle10k"].conns), file=sys.stderr)


def report(opts, commands: dict, results: dict, head: str) -> int:
    """Print the table (and ceilings), write JSON and Markdown; 1 if
    anything failed."""
    parts = [head, format_table(table_rows(results, list(commands))), LEGEND]
    if any(getattr(SCENARIOS[s], "pure", False) for s in results):
        parts.append(LOGIN_LEGEND)
    if "sink" in commands:
        parts.append(ceilings_text(results, opts.scenarios, opts))
    text = "\n\n".join(parts)
    print(text)
    failed = [(scen, name, r["error"]) for scen, by in results.items()
              for name, runs in by.items() for r in runs if "error" in r]
    if opts.json:
        write_json(opts.json, opts, commands, results, head)
    if opts.results:
        write_results(opts.results, text, failed)
    for scen, name, error in failed:
        print("FAILED: %s on %s: %s" % (scen, name, error.splitlines()[0]), file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.self_test:
        failures = self_test()
        loadgen, why = build_loadgen()
        if loadgen:
            failures += loadgen_self_test(loadgen)
        else:
            print("note: tests/loadgen.c not checked: %s" % why.splitlines()[0])
        return 1 if failures else 0
    use_nacl(opts)
    commands = choose_servers(opts)
    use_loadgen(opts)
    fit_idle_conns(opts)
    opts.load_before = load_average()
    if opts.load_before > BUSY_LOAD:
        print("warning: load average %.2f: something else is running; results will be "
              "noisy" % opts.load_before, file=sys.stderr)
    head = header(opts, commands)
    print(head, file=sys.stderr, flush=True)
    return report(opts, commands, run_all(opts, commands), head)


if __name__ == "__main__":
    sys.exit(main())
