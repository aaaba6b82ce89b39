#!/usr/bin/env python3
"""`make footprint`: how quickly gnatsd.py is ready and how much memory it
holds when idle, under every CPython 3.8-3.13 found (pyenv, or pythonX.Y on
PATH), with the Go nats-server beside it.

For each Python: the script start (`python3 gnatsd.py`, which restarts
itself as an import of the module) and the module start
(`python3 -m gnatsd`), both with cached bytecode (written first, as a
first start or an install does), with the default configuration and with
TLS and monitoring configured.  "ready" is the time from exec to the
"Server is ready" line; "idle RSS" is read after a client's PING/PONG.
Each figure is the median of --runs starts.  Also per idle connection:
the RSS a thousand connected clients add, divided by a thousand.

Prints a Markdown table (the README's "On a small device" quotes it).
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GNATSD = os.path.join(ROOT, "gnatsd.py")
CERTS = os.path.join(ROOT, "tests", "certs")
# TLS loaded and offered (allow_non_tls, so the plain probe client still
# connects), and the HTTP monitor listening.
TLS_MONITOR_CONF = """
tls { cert_file: "%s/server-cert.pem", key_file: "%s/server-key.pem" }
allow_non_tls: true
http_port: -1
""" % (CERTS, CERTS)


def pythons() -> list:
    found = {}
    roots = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for minor in range(8, 14):
        candidates = [p for p in roots if re.search(r"/3\.%d\.\d+/" % minor, p)]
        candidates.append(shutil.which("python3.%d" % minor) or "")
        for path in candidates:
            if path and os.path.exists(path):
                found["3.%d" % minor] = path
                break
    return sorted(found.items(), key=lambda kv: int(kv[0].split(".")[1]))


def go_binaries() -> list:
    out = []
    for path in ("/usr/sbin/nats-server", os.path.join(ROOT, ".venv", "bin", "nats-server")):
        if os.path.exists(path):
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"v(\d+\.\d+)", version)
            out.append(("Go " + (m.group(1) if m else "?"), path))
    return out


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start(argv: list, cwd: str | None = None, env: dict | None = None):
    """(process, port, seconds to "Server is ready")."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)
    port = None
    deadline = began + 30
    for line in proc.stderr:
        m = re.search(rb"Listening for client connections on \S+:(\d+)", line)
        if m:
            port = int(m.group(1))
        if b"Server is ready" in line:
            ready = time.monotonic() - began
            break
        if time.monotonic() > deadline:
            break
    else:
        raise RuntimeError("%s did not start" % argv)
    return proc, port, ready


def ping(port: int, count: int = 1) -> list:
    """`count` connected clients, each after a PING/PONG round trip."""
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        got = b""
        while b"PONG" not in got:
            got += s.recv(4096)
        conns.append(s)
    return conns


def measure(argv: list, cwd=None, env=None, conns: int = 0) -> tuple:
    proc, port, ready = start(argv, cwd, env)
    try:
        one = ping(port)
        idle = rss_kb(proc.pid)
        per_conn = None
        if conns:
            many = ping(port, conns)
            per_conn = (rss_kb(proc.pid) - idle) * 1024 / conns
            for s in many:
                s.close()
        for s in one:
            s.close()
    finally:
        proc.terminate()
        proc.stderr.close()
        proc.wait()
    return ready, idle / 1024, per_conn


def median_of(runs: int, *args, **kw) -> tuple:
    results = [measure(*args, **kw) for _ in range(runs)]
    ready = statistics.median(r[0] for r in results)
    idle = statistics.median(r[1] for r in results)
    per = [r[2] for r in results if r[2] is not None]
    return ready, idle, (statistics.median(per) if per else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--conns", type=int, default=1000,
                        help="idle clients for the per-connection figure (0: skip)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="footprint-")
    shutil.copy(GNATSD, os.path.join(work, "gnatsd.py"))
    conf = os.path.join(work, "tls-monitor.conf")
    with open(conf, "w") as f:
        f.write(TLS_MONITOR_CONF)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    base = ["-a", "127.0.0.1", "-p", "-1"]
    print("# make footprint: %s, %s, %d CPUs, %s UTC\n" % (
        platform.node(), platform.platform(), os.cpu_count() or 0,
        time.strftime("%Y-%m-%d %H:%M", time.gmtime())))
    print("| server | start | config | ready | idle RSS | per idle conn |")
    print("|---|---|---|---|---|---|")

    def row(*fields):
        server, start_name, conf_name, ready, idle, per = fields
        print("| %s | `%s` | %s | %.3f s | %.1f MB | %s |" % (
            server, start_name, conf_name, ready, idle,
            "%.2f KiB" % (per / 1024) if per is not None else ""), flush=True)
    for version, python in pythons():
        subprocess.run([python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1])",
                        os.path.join(work, "gnatsd.py")], check=True, env=env)
        for start_name, argv in (("python3 gnatsd.py", [python, "gnatsd.py"]),
                                 ("python3 -m gnatsd", [python, "-m", "gnatsd"])):
            for conf_name, extra in (("default", []), ("TLS + monitor", ["-c", conf])):
                conns = args.conns if (start_name.endswith("-m gnatsd") and conf_name == "default") \
                    else 0
                row("CPython " + version, start_name, conf_name,
                    *median_of(args.runs, argv + base + extra, cwd=work, env=env, conns=conns))
    for name, path in go_binaries():
        row(name, "binary", "default",
            *median_of(args.runs, [path] + base, env=env, conns=args.conns))
        row(name, "binary", "TLS + monitor",
            *median_of(args.runs, [path] + base + ["-c", conf], env=env))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
