"""`-sl`/`--signal CMD[=PID|=PIDFILE]`: signal a running server, then exit 0.

Commands and signals as in Go's server/signal.go: stop (SIGKILL), quit
(SIGINT), term (SIGTERM), reopen (SIGUSR1), reload (SIGHUP), ldm (SIGUSR2).
Go finds the server with pgrep when no pid is given; gnatsd.py runs as
"python", so it asks for a pid or pid file instead.  Error texts follow Go's
("unknown signal", "invalid pid", "no such process"), exit status 1.  Only
servers these tests start are ever signalled.
"""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from conftest import ServerProcess, gnatsd_argv, start_gnatsd


def run(*args, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(gnatsd_argv(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag", ["--signal", "-sl"])
def test_quit_with_a_pid_interrupts_the_server(flag):
    srv = start_gnatsd()
    try:
        r = run(flag, "quit=%d" % srv.pid)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert srv.proc.wait(10) == 0
        srv.wait_for_log(rb"Server Exiting")
    finally:
        srv.kill()


def test_term_with_a_pid_file_terminates_the_server(tmp_path):
    pid_file = tmp_path / "gnatsd.pid"
    srv = start_gnatsd("-P", str(pid_file))
    try:
        r = run("--signal", "term=%s" % pid_file)
        assert r.returncode == 0, r.stderr
        srv.proc.wait(10)
        srv.wait_for_log(rb"Server Exiting")
    finally:
        srv.kill()


def test_stop_kills_the_server():
    srv = start_gnatsd()
    try:
        assert run("--signal", "stop=%d" % srv.pid).returncode == 0
        assert srv.proc.wait(10) == -signal.SIGKILL
    finally:
        srv.kill()


def test_reopen_reopens_the_log_file(tmp_path):
    log_path = tmp_path / "g.log"
    srv = ServerProcess(gnatsd_argv("-a", "127.0.0.1", "-p", "-1", "-l", str(log_path)),
                        "gnatsd").start(wait_ready=False)
    try:
        _wait_for_text(log_path, "Server is ready")
        assert run("--signal", "reopen=%d" % srv.pid).returncode == 0
        _wait_for_text(log_path, "File log re-opened")
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def _wait_for_text(path, text: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("no %r in %s" % (text, path))


@pytest.mark.parametrize("argv, message", [
    (["--signal", "bogus=1"], 'nats-server: unknown signal "bogus"'),
    (["--signal", "reload=/nonexistent/x.pid"], "nats-server: invalid pid: /nonexistent/x.pid"),
    (["--signal", "reload=abc"], "nats-server: invalid pid: abc"),
])
def test_bad_signal_commands_fail_with_gos_message(argv, message):
    r = run(*argv)
    assert r.returncode == 1
    assert r.stderr.strip() == message


def test_a_pid_that_is_not_running_is_no_such_process():
    # A pid that exited a moment ago: a child of ours, already reaped.
    child = subprocess.Popen(["true"])
    child.wait()
    r = run("--signal", "reload=%d" % child.pid)
    assert r.returncode == 1
    assert r.stderr.strip() == 'nats-server: signal "reload" %d: no such process' % child.pid


def test_without_a_pid_the_message_asks_for_one():
    r = run("--signal", "reload")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and "pid" in line and "reload=<pid>" in line
