"""The command line and the config file as a user meets them, against Go.

Go's flag package accepts `-p 4222`, `--port 4222`, `-port=4222` and
`--port=4222` alike, booleans as `-T=false`, and later flags win; flags
override the config file.  Every flag gnatsd 0.7.2 had is accepted; those
whose feature has not landed stop the server with a one-line message naming
the flag, never silently.  `-t -c FILE` checks a file; a config error names
file:line:col and exits 1 without a traceback.  Where Go's answer is
observable (exit status, INFO fields, log lines) the same command runs
against nats-server 2.9 and 2.15 (`kind` / `any_server_with`) and must give
the same answer.  Known, deliberate differences: `-p 0` picks a free port
(Go: 4222), bad flags exit 2 (Go prints usage and exits 0), and -t does not
fail on Go's config warnings.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from conftest import (GNATSD, GO_SERVERS, ROOT, SERVER_PYTHON, RawConn, free_port,
                      go_server_path, start_gnatsd, start_go, t_expect_exact, write_conf)

DEFAULT_CONF = os.path.join(ROOT, "conf", "default.conf")


def _load_version() -> tuple:
    text = open(GNATSD, encoding="utf-8").read()
    ours = re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)
    go = re.search(r'^VERSION = "([^"]+)"', text, re.M).group(1)
    return ours, go


OUR_VERSION, GO_VERSION = _load_version()


def run(*args, timeout: float = 15.0, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run gnatsd.py with `args` to completion (for flags that exit at once)."""
    return subprocess.run([SERVER_PYTHON, GNATSD, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


def run_go(version: str, *args, timeout: float = 15.0) -> subprocess.CompletedProcess:
    if version not in GO_SERVERS:
        pytest.skip("Go nats-server %s is not installed" % version)
    return subprocess.run([GO_SERVERS[version], *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_kind(kind: str, *args) -> subprocess.CompletedProcess:
    return run(*args) if kind == "gnatsd" else run_go(kind[2:], *args)


@pytest.fixture
def start(kind):
    """start(*args): the `kind` server with exactly these args (no -a/-p added)."""
    started = []

    def make(*args, **kw):
        if kind == "gnatsd":
            srv = start_gnatsd(*args, addr=False, port=False, **kw)
        else:
            srv = start_go(*args, version=kind[2:], addr=False, port=False, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def info_of(srv) -> dict:
    c = RawConn(srv.host, srv.port)
    try:
        return c.read_info()
    finally:
        c.close()


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, "expected one line, got %r" % text
    return lines[0]


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- flag syntax ----------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["-p {}", "--port {}", "-port={}", "--port={}", "-port {}"])
def test_port_flag_spellings(start, spelling):
    port = free_port()
    srv = start("-a", "127.0.0.1", *spelling.format(port).split())
    assert srv.port == port


@pytest.mark.parametrize("spelling", ["-a", "--addr", "--net", "-addr", "-net"])
def test_addr_flag_spellings(start, spelling):
    srv = start(spelling, "127.0.0.1", "-p", "-1")
    assert srv.host == "127.0.0.1"


@pytest.mark.parametrize("spelling", ["-a=127.0.0.1", "--addr=127.0.0.1", "-net=127.0.0.1"])
def test_addr_flag_with_equals(start, spelling):
    assert start(spelling, "-p", "-1").host == "127.0.0.1"


def test_later_flags_win(start):
    port = free_port()
    srv = start("-a", "0.0.0.0", "-p", "-1", "-a", "127.0.0.1", "--port=%d" % port)
    assert (srv.host, srv.port) == ("127.0.0.1", port)


def test_dv_turns_on_debug_and_trace(start):
    srv = start("-a", "127.0.0.1", "-p", "-1", "-DV")
    c = RawConn(srv.host, srv.port)
    c.read_info()
    c.send(b'CONNECT {"verbose":false}\r\nPING\r\n')
    c.expect(rb".*PONG\r\n")
    srv.wait_for_log(rb"\[DBG\] 127\.0\.0\.1:\d+ - cid:\d+ - Client connection created")
    srv.wait_for_log(rb"\[TRC\] 127\.0\.0\.1:\d+ - cid:\d+ - <<- \[PING\]")
    c.close()


def test_logtime_false_drops_the_timestamp(start):
    srv = start("-a", "127.0.0.1", "-p", "-1", "-T=false")
    assert re.search(r"(?m)^\[\d+\] \[INF\] Starting nats-server$", srv.log_text())
    assert not re.search(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", srv.log_text())


def test_logtime_true_keeps_the_timestamp(start):
    srv = start("-a", "127.0.0.1", "-p", "-1", "--logtime=true")
    assert re.search(r"(?m)^\[\d+\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[INF\] Starting",
                     srv.log_text())


def test_flags_override_the_config_file(start, tmp_path):
    file_port, flag_port = free_port(), free_port()
    conf = write_conf(tmp_path, "listen: 127.0.0.1:%d\ndebug: false\n" % file_port)
    srv = start("-c", conf, "-p", str(flag_port), "-D")
    assert srv.port == flag_port
    RawConn(srv.host, srv.port).close()
    srv.wait_for_log(rb"\[DBG\] .*Client connection created")


def test_config_file_port_is_used_without_a_flag(start, tmp_path):
    port = free_port()
    srv = start("-a", "127.0.0.1", "-c", write_conf(tmp_path, "port: %d\n" % port))
    assert srv.port == port


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_listen_address(start):
    srv = start("-a", "::1", "-p", "-1")
    assert re.search(r"Listening for client connections on \[::1\]:\d+", srv.log_text())
    with socket.create_connection(("::1", srv.port), timeout=5) as s:
        assert s.recv(5) == b"INFO "


@pytest.mark.parametrize("port", ["-1", "0"])
def test_port_minus_one_and_zero_pick_a_free_port_and_log_it(port):
    # Go's -p 0 means 4222; gnatsd.py keeps it for "any port" (see the lead).
    srv = start_gnatsd("-p", port, port=False)
    try:
        assert srv.port not in (0, 4222)
        c = RawConn(srv.host, srv.port)
        assert c.read_info()["port"] == srv.port
        c.close()
    finally:
        srv.stop()


def test_port_out_of_range_is_a_fatal_listen_error(kind):
    r = run_kind(kind, "-a", "127.0.0.1", "-p", "99999")
    assert r.returncode == 1
    assert re.search(r'(?m)\[FTL\] Error listening on port: 127\.0\.0\.1:99999, '
                     r'"listen tcp: address 99999: invalid port"$', r.stderr)


def test_port_in_use_is_a_fatal_listen_error(kind):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_kind(kind, "-a", "127.0.0.1", "-p", str(port))
    assert r.returncode == 1
    # Go's words, which nats.py's test helper shows its user.
    assert re.search(r'(?m)\[FTL\] Error listening on port: 127\.0\.0\.1:%d, "listen tcp '
                     r'127\.0\.0\.1:%d: bind: address already in use"$' % (port, port), r.stderr)
    assert "Traceback" not in r.stderr


def test_server_name_flag_reaches_info(start):
    srv = start("-a", "127.0.0.1", "-p", "-1", "-n", "alpha")
    assert info_of(srv)["server_name"] == "alpha"


def test_server_name_with_spaces_is_refused():
    r = run("-a", "127.0.0.1", "-p", "-1", "--server_name", "a b")
    assert r.returncode == 1
    assert one_line(r.stderr) == "nats-server: server name cannot contain spaces"
    go = run_go("2.15", "-a", "127.0.0.1", "-p", "-1", "--server_name", "a b")
    assert go.stderr.strip() == "nats-server: server name cannot contain spaces"


# -- version and help -------------------------------------------------------------


@pytest.mark.parametrize("args", [["-v"], ["--version"], ["-version"], ["version"]])
def test_version_names_both_versions(args):
    r = run(*args)
    assert r.returncode == 0
    assert OUR_VERSION in r.stdout and GO_VERSION in r.stdout
    assert r.stdout.startswith("nats-server: v%s" % GO_VERSION)


def test_version_output_shape_matches_go(kind):
    r = run_kind(kind, "-v")
    assert r.returncode == 0
    assert re.match(r"nats-server: v\d+\.\d+\.\d+", r.stdout)


def go_usage_groups() -> list:
    path = go_server_path()
    if path is None:
        pytest.skip("Go nats-server is not installed")
    out = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=10).stdout
    return re.findall(r"(?m)^(\w[\w ]+ Options):$", out)


@pytest.mark.parametrize("flag", ["-h", "--help", "-help", "help"])
def test_help_exits_0_with_the_go_usage_groups(flag):
    r = run(flag)
    assert r.returncode == 0
    assert "Usage: gnatsd.py [options]" in r.stdout
    for group in go_usage_groups():
        assert "\n%s:\n" % group in r.stdout


# Every flag of gnatsd 0.7.2 (server/usage.go, gnatsd.go), as a usage line names it.
FLAGS_072 = ["-a", "-p", "-P", "-m", "-ms", "-c", "-l", "-T", "-s", "-r", "-D", "-V", "-DV",
             "--user", "--pass", "--auth", "--tls", "--tlscert", "--tlskey", "--tlsverify",
             "--tlscacert", "--routes", "--cluster_listen", "-h", "-v", "--help_tls", "-bs"]


def test_help_lists_every_072_flag():
    out = run("-h").stdout
    for flag in FLAGS_072:
        assert re.search(r"(?m)^ +(\S+, )*%s\b" % re.escape(flag), out), flag


# Every flag nats-server 2.15 defines (ConfigureOptions in server/opts.go:
# each fs.*Var), with a value, and what gnatsd.py makes of it: the Options
# attribute it sets, an action of main() ("action"), accepted and not used
# ("ignored", named in a startup line), or refused with one clear line
# ("refused": JetStream).  Go's flags must never be unknown here (issue 13).
GO_215_FLAGS = [
    (["-p", "4222"], "port"), (["-port", "4222"], "port"),
    (["-a", "h"], "host"), (["-addr", "h"], "host"), (["-net", "h"], "host"),
    (["-n", "x"], "server_name"), (["-name", "x"], "server_name"),
    (["-server_name", "x"], "server_name"),
    (["-D"], "debug"), (["-debug"], "debug"), (["-V"], "trace"), (["-trace"], "trace"),
    (["-VV"], "trace"), (["-DV"], "trace"), (["-DVV"], "trace"),
    (["-T=false"], "logtime"), (["-logtime=false"], "logtime"),
    (["--logtime_utc"], "logtime_utc"),
    (["-l", "f.log"], "log_file"), (["-log", "f.log"], "log_file"),
    (["--log_size_limit", "1000"], "log_size_limit"),
    (["-s"], "syslog"), (["-syslog"], "syslog"),
    (["-r", "udp://h:514"], "remote_syslog"), (["-remote_syslog", "udp://h:514"], "remote_syslog"),
    (["-P", "p.pid"], "pid_file"), (["-pid", "p.pid"], "pid_file"),
    (["--ports_file_dir", "/tmp"], "ports_file_dir"),
    (["-m", "8222"], "http_port"), (["-http_port", "8222"], "http_port"),
    (["-ms", "8222"], "https_port"), (["-https_port", "8222"], "https_port"),
    (["--client_advertise", "h:1"], "client_advertise"),
    (["--max_traced_msg_len", "10"], "max_traced_msg_len"),
    (["--user", "u"], "username"), (["--pass", "p"], "password"), (["--auth", "t"], "authorization"),
    (["--tls", "--tlscert", "CERT", "--tlskey", "KEY"], "tls"),
    (["--tlsverify", "--tlscert", "CERT", "--tlskey", "KEY", "--tlscacert", "CA"], "tls"),
    (["--routes", "nats://h:1"], "routes"), (["--cluster", "nats://h:6222"], "cluster_port"),
    (["--cluster_listen", "nats://h:6222"], "cluster_port"),
    (["--cluster_name", "c"], "cluster_name"), (["--cluster_advertise", "h:1"], "cluster_advertise"),
    (["--no_advertise"], "no_advertise"), (["--connect_retries", "3"], "connect_retries"),
    (["-c", "x.conf"], "action"), (["-config", "x.conf"], "action"), (["-t"], "action"),
    (["-h"], "action"), (["-help"], "action"), (["-v"], "action"), (["-version"], "action"),
    (["--help_tls"], "action"), (["-sl", "stop=1"], "action"), (["-signal", "stop=1"], "action"),
    (["-sd", "/tmp/js"], "ignored"), (["-store_dir", "/tmp/js"], "ignored"),
    (["--profile", "6060"], "ignored"),
    (["-js"], "refused"), (["-jetstream"], "refused"),
]


@pytest.mark.parametrize("argv, outcome", GO_215_FLAGS, ids=[" ".join(a) for a, _ in GO_215_FLAGS])
def test_every_flag_of_go_215_is_known(argv, outcome):
    from conftest import import_gnatsd
    g = import_gnatsd()
    certs = os.path.join(os.path.dirname(__file__), "certs")
    files = {"CERT": "server-cert.pem", "KEY": "server-key.pem", "CA": "ca.pem"}
    argv = [os.path.join(certs, files[a]) if a in files else a for a in argv]
    args = g.build_arg_parser().parse_args(g._normalize_argv(argv))   # exits on an unknown flag
    dest_given = [d for d, v in vars(args).items() if v is not None]
    assert dest_given, "%s set nothing" % argv
    if outcome == "action":
        return
    if outcome in ("ignored", "refused"):
        table = g._IGNORED_FLAGS if outcome == "ignored" else g._NOT_YET
        assert set(dest_given) & set(table), (dest_given, outcome)
        return
    assert getattr(g.options_from_flags(args), outcome) is not None


def test_the_flag_table_covers_go_215s_flags():
    """The table above against the source: every flag name opts.go's
    ConfigureOptions defines is in it (skipped without the Go source)."""
    opts_go = "/tmp/go/server/opts.go"
    if not os.path.exists(opts_go):
        pytest.skip("the Go source is not unpacked at /tmp/go; fetch nats-io/nats-server and unpack server/ there")
    names = set(re.findall(r'fs\.\w+Var\([^,]+, "([^"]+)"', open(opts_go).read()))
    covered = {a.lstrip("-").split("=")[0] for argv, _ in GO_215_FLAGS for a in argv
               if a.startswith("-")}
    assert names - covered == set()


# Flags whose feature has not landed: argv, and a word the message must hold.
NOT_LANDED = [
    (["-js"], "-js", "JetStream is not supported"),
    (["--jetstream"], "--jetstream", "JetStream is not supported"),
]


@pytest.mark.parametrize("argv, flag, word", NOT_LANDED, ids=[n[0][0] for n in NOT_LANDED])
def test_flags_whose_feature_has_not_landed_fail_with_one_clear_line(argv, flag, word):
    r = run("-a", "127.0.0.1", "-p", "-1", *argv, timeout=10)
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert re.search(r"(^|\W)%s(\W|$)" % re.escape(flag), line), line
    assert word.lower() in line.lower()
    assert "Traceback" not in r.stderr and "Listening" not in r.stderr


def test_a_false_boolean_for_a_missing_feature_is_fine():
    srv = start_gnatsd("-js=false", "--tls=false")
    srv.stop()


@pytest.mark.parametrize("argv", [["-P", "x.pid"], ["-T"], ["-D"], ["-V"], ["-DV"],
                                  ["--user", "u", "--pass", "p"], ["--auth", "tok"],
                                  ["-c", "x.conf"]])
def test_the_landed_072_flags_start_a_server(tmp_path, argv):
    # -l is in test_logging.py (its log goes to the file, not to our pipe).
    (tmp_path / "x.conf").write_text("debug: false\n")
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    srv = start_gnatsd(*argv)
    try:
        assert info_of(srv)["port"] == srv.port
    finally:
        srv.stop()


@pytest.mark.parametrize("argv, word", [
    (["--bogus"], "--bogus"), (["-x"], "-x"), (["-p"], "-p"), (["-p", "abc"], "abc"),
    (["-T=maybe"], "maybe"), (["extra"], "extra"),
])
def test_bad_command_lines_exit_non_zero_naming_the_problem(argv, word):
    r = run(*argv, timeout=10)
    assert r.returncode != 0
    assert word in r.stderr
    assert "Traceback" not in r.stderr


# -- authorization flags, against Go --------------------------------------------------


def test_user_and_pass_flags_require_them(start, raw_factory):
    srv = start("-a", "127.0.0.1", "-p", "-1", "--user", "derek", "--pass", "s3cr3t")
    assert info_of(srv)["auth_required"] is True
    good = raw_factory(srv, b'CONNECT {"verbose":false,"user":"derek","pass":"s3cr3t"}\r\n')
    good.send(b"PING\r\n")
    t_expect_exact(good, b"PONG\r\n")
    bad = raw_factory(srv, b'CONNECT {"verbose":false,"user":"derek","pass":"nope"}\r\n')
    t_expect_exact(bad, b"-ERR 'Authorization Violation'\r\n")


def test_auth_token_flag_requires_it(start, raw_factory):
    srv = start("-a", "127.0.0.1", "-p", "-1", "--auth", "t0k3n")
    good = raw_factory(srv, b'CONNECT {"verbose":false,"auth_token":"t0k3n"}\r\n')
    good.send(b"PING\r\n")
    t_expect_exact(good, b"PONG\r\n")
    bad = raw_factory(srv, b'CONNECT {"verbose":false,"auth_token":"x"}\r\n')
    t_expect_exact(bad, b"-ERR 'Authorization Violation'\r\n")


# -- the config file on the command line ------------------------------------------------


def test_default_conf_starts_with_monitor_and_cluster():
    # -m -1 and --cluster override the file's ports 8222 and 6222 (and its
    # 0.0.0.0), so parallel runs never clash.
    srv = start_gnatsd("-c", DEFAULT_CONF, "-m", "-1", "--cluster", "nats://127.0.0.1:-1")
    try:
        srv.wait_for_log(rb"\[INF\] Listening for route connections on 127\.0\.0\.1:\d+")
        log = srv.log_text()
        assert "Using configuration file: %s" % DEFAULT_CONF in log
        assert re.search(r"\[INF\] Starting http monitor on 127\.0\.0\.1:\d+", log)
        # No cluster name in the file: the one warning Go gives too.
        assert re.findall(r"\[WRN\] (.*)", log) == [
            "Cluster name was dynamically generated, consider setting one"]
    finally:
        srv.stop()


def test_check_config_accepts_a_good_file(kind):
    r = run_kind(kind, "-t", "-c", DEFAULT_CONF)
    assert r.returncode == 0
    assert r.stdout == ""
    assert r.stderr.startswith("nats-server: configuration file %s is valid" % DEFAULT_CONF)


def test_check_config_reports_a_bad_file_like_go(kind, tmp_path):
    conf = write_conf(tmp_path, "port: 4222\nfoo: 1\n")
    r = run_kind(kind, "-t", "-c", conf)
    assert r.returncode == 1
    assert one_line(r.stderr) == 'nats-server: %s:2:1: unknown field "foo"' % conf


def test_config_error_at_startup_exits_1_without_traceback(kind, tmp_path):
    conf = write_conf(tmp_path, "authorization {\n  user: a\n  bogus: 2\n}\n")
    r = run_kind(kind, "-a", "127.0.0.1", "-p", "-1", "-c", conf)
    assert r.returncode == 1
    assert one_line(r.stderr) == 'nats-server: %s:3:3: unknown field "bogus"' % conf


def test_missing_config_file_exits_1(kind, tmp_path):
    r = run_kind(kind, "-t", "-c", str(tmp_path / "absent.conf"))
    assert r.returncode == 1
    assert "absent.conf" in one_line(r.stderr)


def test_max_payload_above_max_pending_refuses_to_start(kind, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 100MB\n")
    r = run_kind(kind, "-a", "127.0.0.1", "-p", "-1", "-c", conf)
    assert r.returncode == 1
    assert r.stderr.strip() == ("nats-server: max_payload (104857600) cannot be higher "
                                "than max_pending (67108864)")


def test_large_max_payload_logs_gos_warning(start, tmp_path):
    conf = write_conf(tmp_path, "max_payload: 9MB\n")
    srv = start("-a", "127.0.0.1", "-p", "-1", "-c", conf)
    assert re.search(r"\[WRN\] Maximum payloads over 8\.00 MB are generally discouraged",
                     srv.log_text())
    assert info_of(srv)["max_payload"] == 9 * 1024 * 1024


# Snippets that nats-server 2.9 and 2.15 both accept (True) or refuse (False)
# with `-t`; gnatsd.py must agree.
CHECK_CASES = [
    ("port = 4222", True),
    ("port 4222", True),
    ("port: 4222; debug: true", True),
    ("# c\n// c\nport: 4222 // after", True),
    ("authorization { user: a, password: b }", True),
    ("authorization {\n  user = a\n  password = \"b c\"\n  timeout = 2\n}", True),
    ("authorization { token: abc, timeout: \"2s\" }", True),
    ("authorization {\n  u = derek\n  user = $u\n  password = x\n}", True),
    ("authorization { bogus: 1 }", False),
    ("max_payload: 1MB\nmax_control_line: 2KB\nmax_pending: 10MiB", True),
    ("max_payload: \"1MB\"", False),
    ("max_payload: 1.5", False),
    ("max_payload: 2147483648", False),
    ("max_control_line: 1T", False),
    ("max_pending: 1P", True),
    ("max_pending: 1X", False),
    ("ping_interval: \"2s\"\nwrite_deadline: \"100ms\"\nping_max: 3", True),
    ("ping_interval: \"bogus\"", False),
    ("write_deadline: \"5\"", False),
    ("ping_interval: 1.5", False),
    ("debug: yes\ntrace: off\nlogtime: TRUE", True),
    ("debug: \"true\"", False),
    ("server_name: nats://x:4222", True),
    ("server_name: \"a\\ub\"", False),
    ("listen: 127.0.0.1:4333", True),
    ("listen: \"[::1]:4333\"", True),
    ("pid_file: /tmp/x.pid\nlogfile: \"/tmp/x.log\"\nports_file_dir: /tmp", True),
    ("max_connections: 100\nmax_conn: 100", True),
    ("foo: 1", False),
    ("x = 1\ny = $x", False),
    ("p = 4333\nport = $p", True),
    ("port: $GNATSD_TEST_UNSET_VARIABLE", False),
    ("authorization {\n  user: a\n  password: b", False),
    ("s = \"unterminated", False),
    ("= 4222", False),
    ("debug: true false", False),
    ("include missing.conf", False),
    ("port: 4_222", False),
]


def case_id(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:32]


@pytest.mark.parametrize("text, valid", CHECK_CASES, ids=[case_id(t) for t, _ in CHECK_CASES])
def test_check_config_agrees_with_go(kind, tmp_path, text, valid):
    conf = write_conf(tmp_path, text + "\n")
    r = run_kind(kind, "-t", "-c", conf)
    assert r.returncode == (0 if valid else 1), r.stderr
    assert "Traceback" not in r.stderr


# Config snippets and the INFO fields they must produce, as Go's do.
INFO_CASES = [
    ("max_payload: 1K", {"max_payload": 1000}),
    ("max_payload: 1KB", {"max_payload": 1024}),
    ("max_payload: 2KiB", {"max_payload": 2048}),
    ("max_payload: 3MB", {"max_payload": 3 * 1024 * 1024}),
    ("max_payload = 2M", {"max_payload": 2000000}),
    ("MAX_PAYLOAD 4096", {"max_payload": 4096}),
    ("P = 5000\nmax_payload: $P", {"max_payload": 5000}),
    ("server_name: \"a\\tb\\x41\\\"q\\\\z\"", {"server_name": 'a\tbA"q\\z'}),
    ("server_name: 'a\\tb'", {"server_name": "a\\tb"}),
    ("server_name: a\\x41\\\\b", {"server_name": "aA\\b"}),
    ("server_name: nats://x:4222", {"server_name": "nats://x:4222"}),
    ("server_name: foo#1 # a comment", {"server_name": "foo#1"}),
    ("authorization { token: \"3secret\" }", {"auth_required": True}),
    ("authorization {\n  user: a\n  password: b\n}", {"auth_required": True}),
]


@pytest.mark.parametrize("text, fields", INFO_CASES, ids=[case_id(t) for t, _ in INFO_CASES])
def test_config_values_reach_info_as_in_go(any_server_with, tmp_path, text, fields):
    srv = any_server_with("-c", write_conf(tmp_path, text + "\n"))
    info = info_of(srv)
    assert {k: info.get(k) for k in fields} == fields


def test_include_and_variables_from_the_environment(any_server_with, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "limits.conf").write_text("max_payload: $GNATSD_TEST_MP\n")
    conf = write_conf(tmp_path, "include sub/limits.conf\n")
    monkeypatch.setenv("GNATSD_TEST_MP", "3KB")
    srv = any_server_with("-c", conf)
    assert info_of(srv)["max_payload"] == 3072


def test_listen_in_the_config_sets_host_and_port(start, tmp_path):
    port = free_port()
    srv = start("-c", write_conf(tmp_path, "listen: 127.0.0.1:%d\n" % port))
    assert (srv.host, srv.port) == ("127.0.0.1", port)


def test_bare_integer_duration_starts_with_a_warning(tmp_path):
    # Go prints the same warning and starts (only -t treats it as fatal).
    srv = start_gnatsd("-c", write_conf(tmp_path, "ping_interval: 60\n"))
    try:
        assert re.search(r'\[WRN\] .*:1: invalid use of field "ping_interval": ping_interval '
                         r'should be converted to a duration', srv.log_text())
    finally:
        srv.stop()


@pytest.mark.parametrize("text", ["port: 1\nbogus: 2\n", "port: 1\nfoo {\n"])
def test_config_field_error_bytes_match_go(tmp_path, text):
    """An error in a parsed file's values is a list to Go (a blank line
    after it); a syntax error is one line.  Test helpers show these bytes."""
    conf = write_conf(tmp_path, text)
    r = run("-c", conf)
    assert r.returncode == 1
    if text.startswith("port: 1\nbogus"):
        assert r.stderr == 'nats-server: %s:2:1: unknown field "bogus"\n\n' % conf
        go = run_go("2.15", "-c", conf)
        assert (go.returncode, go.stderr) == (1, r.stderr)
    else:
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("nats-server: ")
        go = run_go("2.15", "-c", conf)
        assert go.stderr.count("\n") == 1 and go.stderr.startswith("nats-server: ")


def test_config_error_in_included_file_names_it(tmp_path):
    (tmp_path / "inner.conf").write_text("port: 1\nbogus: 2\n")
    conf = write_conf(tmp_path, "include inner.conf\n")
    r = run("-t", "-c", conf)
    assert r.returncode == 1
    assert one_line(r.stderr) == 'nats-server: %s:2:1: unknown field "bogus"' % (
        tmp_path / "inner.conf")


@pytest.mark.parametrize("flag", [["--store_dir", "/tmp/js"], ["-sd", "/tmp/js"]])
def test_store_dir_without_jetstream_is_accepted_quietly(flag):
    """Go takes --store_dir without -js and says nothing (nats.py's cluster
    helper passes it): gnatsd.py starts, with a debug line and no warning."""
    from conftest import start_gnatsd
    for extra, seen in (("-D", True), (None, False)):
        srv = start_gnatsd(*flag, *([extra] if extra else []))
        try:
            srv.wait_for_log(rb"Server is ready")
            log = srv.log_text()
        finally:
            srv.stop()
        assert "[WRN]" not in log
        assert bool(re.search(r"\[DBG\] [^\n]*store_dir[^\n]*accepted and not used", log)) is seen


def test_profile_flag_is_accepted_with_a_warning():
    """Go serves pprof on --profile's port; gnatsd.py starts without it,
    naming the flag in a warning."""
    from conftest import start_gnatsd
    srv = start_gnatsd("--profile", "6060")
    try:
        srv.wait_for_log(rb"\[WRN\] [^\n]*profile[^\n]*accepted and not used")
    finally:
        srv.stop()
