"""TLS for clients and the monitoring port, against Go.

A TLS server sends its INFO in plain text with `tls_required` (and
`tls_verify`), then the client upgrades; with `handshake_first` the client
starts TLS at once and INFO follows inside it (`"auto"` or a duration: a
plain INFO after all when no ClientHello comes in time).  Mutual TLS checks
the client's certificate against `ca_file`; a failed or stalled handshake
closes only its own connection.  Transcripts run against gnatsd.py and the
Go servers (`kind`/`start`; 2.9 predates handshake_first and min_version),
with raw sockets (the `ssl` module) and with nats-py (`tls=` contexts,
`tls_handshake_first=True`).  Where Go versions word a log line
differently, 2.15's words are ours.  Certificates
are tests/certs/ (`make certs`): a CA, a server certificate for localhost
and 127.0.0.1, a client certificate (alice), one for the wrong host, and a
self-signed client certificate no CA vouches for.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import (GNATSD, GO_SERVERS, ROOT, SERVER_PYTHON, RawConn, import_gnatsd,
                      start_gnatsd, write_conf)

CERTS = os.path.join(ROOT, "tests", "certs")
CONNECT = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
PING = b"PING\r\n"

HTTPS_MON_RE = re.compile(rb"Starting https monitor on (\S+):(\d+)")

# Go 2.9 predates handshake_first and min_version.
MODERN = ["gnatsd", "go2.15"]


def cert(name: str) -> str:
    return os.path.join(CERTS, name)


# The --tls flags: a server certificate, and optionally client verification.
SERVER_TLS = ("--tls", "--tlscert", cert("server-cert.pem"), "--tlskey", cert("server-key.pem"))
VERIFY_TLS = ("--tlsverify", "--tlscert", cert("server-cert.pem"), "--tlskey",
              cert("server-key.pem"), "--tlscacert", cert("ca.pem"))


def tls_conf(tmp_path, extra: str = "", server_cert: str = "server", top: str = "") -> str:
    """A config file with a tls block for `server_cert`, plus `extra` keys."""
    return write_conf(tmp_path, '%s\ntls {\n  cert_file: "%s"\n  key_file: "%s"\n%s\n}\n' % (
        top, cert(server_cert + "-cert.pem"), cert(server_cert + "-key.pem"), extra))


def client_context(client_cert: str = "", ca: bool = True, tls12: bool = False):
    """A client SSLContext trusting our CA, with a client certificate if named."""
    ctx = ssl.create_default_context(cafile=cert("ca.pem") if ca else None)
    if client_cert:
        ctx.load_cert_chain(cert(client_cert + "-cert.pem"), cert(client_cert + "-key.pem"))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def upgrade(srv, ctx=None, hostname: str = "localhost") -> RawConn:
    """Connect, read the plain INFO, then start TLS on the same socket."""
    c = RawConn(srv.host, srv.port)
    c.info = c.read_info()
    c.sock = (ctx or client_context()).wrap_socket(c.sock, server_hostname=hostname)
    return c


def tls_first(srv, ctx=None) -> RawConn:
    """Connect and start TLS at once; INFO then arrives inside it."""
    c = RawConn(srv.host, srv.port)
    c.sock = (ctx or client_context()).wrap_socket(c.sock, server_hostname="localhost")
    c.info = c.read_info()
    return c


def session_works(c: RawConn):
    c.send(CONNECT + b"SUB foo 1\r\nPUB foo 5\r\nhello\r\n" + PING)
    c.expect(rb"MSG foo 1 5\r\nhello\r\nPONG\r\n")


def refused(fn) -> str:
    """Run a TLS exchange that the server must refuse; return what the client
    saw.  With TLS 1.3 the client's handshake ends first, so the refusal may
    show only at the first read."""
    try:
        c = fn()
        c.send(CONNECT + PING)
        got = c.read_until_closed(3)
    except (ssl.SSLError, ConnectionError, AssertionError) as exc:
        return str(exc)
    assert b"PONG" not in got, "the server accepted the connection"
    return "closed: %r" % got


def wait_closed(c: RawConn, timeout: float = 5.0) -> float:
    """Seconds until the server closes `c` (it must send nothing)."""
    start = time.monotonic()
    data = b""
    c.sock.settimeout(timeout)
    try:
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    assert data == b"", data
    return time.monotonic() - start


# -- the upgrade after a plain INFO ------------------------------------------


def test_info_says_tls_required_and_the_client_upgrades(start):
    srv = start(*SERVER_TLS)
    c = upgrade(srv)
    assert c.info["tls_required"] is True
    assert "tls_verify" not in c.info
    session_works(c)


def test_info_says_tls_verify_when_client_certificates_are_checked(start):
    srv = start(*VERIFY_TLS)
    c = upgrade(srv, client_context("client"))
    assert c.info["tls_required"] is True and c.info["tls_verify"] is True
    session_works(c)


def test_a_plain_text_client_is_closed_without_a_word(start):
    # Go's handshake sees "first record does not look like a TLS handshake"
    # and closes without an alert or an -ERR.
    srv = start(*SERVER_TLS, "-D")
    c = RawConn(srv.host, srv.port)
    c.read_info()
    c.send(CONNECT + PING)
    assert wait_closed(c) < 2
    srv.wait_for_log(rb"TLS handshake error: tls: first record does not look like a TLS "
                     rb"handshake")


def test_tls_block_in_a_config_file(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, 'ca_file: "%s"\nverify: true' % cert("ca.pem")))
    c = upgrade(srv, client_context("client"))
    assert c.info["tls_verify"] is True
    session_works(c)


def test_tls_flags_replace_the_files_block(start, tmp_path):
    # The file asks for handshake_first and verify; the flags win wholesale.
    path = tls_conf(tmp_path, 'ca_file: "%s"\nverify: true' % cert("ca.pem"))
    srv = start("-c", path, *SERVER_TLS)
    c = upgrade(srv)
    assert "tls_verify" not in c.info
    session_works(c)


def test_tls_false_flag_turns_the_files_block_off(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path), "--tls=false")
    c = RawConn(srv.host, srv.port)
    assert "tls_required" not in c.read_info()
    c.send(CONNECT + PING)
    c.expect(rb".*PONG\r\n")


def test_many_large_messages_cross_tls_records_intact(start):
    # 4 KiB payloads, each numbered: records, reads and PUB lines all split
    # at every possible place, and nothing may be lost or reordered.
    srv = start(*SERVER_TLS)
    sub = upgrade(srv)
    sub.send(CONNECT + b"SUB big 1\r\n" + PING)
    sub.expect(rb"PONG\r\n")
    pub = upgrade(srv)
    payloads = [(b"%06d" % i) * 700 for i in range(1500)]
    pub.send(CONNECT + b"".join(b"PUB big %d\r\n%s\r\n" % (len(p), p) for p in payloads) + PING)
    pub.expect(rb"PONG\r\n", timeout=20)
    want = b"".join(b"MSG big 1 %d\r\n%s\r\n" % (len(p), p) for p in payloads)
    sub.expect_exact(want, timeout=20)


# -- handshake_first ---------------------------------------------------------


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_handshake_first_sends_info_only_inside_tls(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "handshake_first: true"))
    quiet = RawConn(srv.host, srv.port)
    assert quiet.read_all(0.5) == b""          # no plain INFO, ever
    c = tls_first(srv)
    assert c.info["tls_required"] is True
    session_works(c)


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_handshake_first_with_a_fallback_sends_a_plain_info_after_the_delay(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, 'handshake_first: "300ms"'))
    started = time.monotonic()
    c = RawConn(srv.host, srv.port)
    info = c.read_info()
    assert 0.25 < time.monotonic() - started < 2.0
    assert info["tls_required"] is True
    c.sock = client_context().wrap_socket(c.sock, server_hostname="localhost")
    session_works(c)
    # A client that starts TLS at once is served too.
    session_works(tls_first(srv))


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_handshake_first_auto_waits_a_moment(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, 'handshake_first: "auto"'))
    c = RawConn(srv.host, srv.port)
    assert c.read_info()["tls_required"] is True
    session_works(tls_first(srv))


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_handshake_first_without_fallback_logs_gos_warning(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "handshake_first: true"))
    srv.wait_for_log(rb'\[WRN\] Clients that are not using "TLS Handshake First" option will '
                     rb'fail to connect')


# -- mutual TLS ----------------------------------------------------------------


def test_mutual_tls_accepts_a_certificate_from_the_ca(start):
    srv = start(*VERIFY_TLS)
    session_works(upgrade(srv, client_context("client")))


def test_mutual_tls_refuses_a_client_without_certificate(start):
    srv = start(*VERIFY_TLS)
    refused(lambda: upgrade(srv, client_context()))
    srv.wait_for_log(rb"TLS handshake error: tls: client didn't provide a certificate")


def test_mutual_tls_refuses_a_certificate_from_another_ca(start):
    srv = start(*VERIFY_TLS)
    refused(lambda: upgrade(srv, client_context("rogue")))
    srv.wait_for_log(rb"TLS handshake error: tls: failed to verify (client )?certificate: x509: "
                     rb"certificate signed by unknown authority")


def test_the_client_sees_a_hostname_mismatch(start):
    args = ("--tls", "--tlscert", cert("wrong-cert.pem"), "--tlskey", cert("wrong-key.pem"))
    srv = start(*args)
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname mismatch|match"):
        upgrade(srv, client_context(), hostname="localhost")


# -- handshakes never block the loop ---------------------------------------------


def test_a_stalled_handshake_does_not_delay_a_second_client(start):
    srv = start(*SERVER_TLS)
    stalled = []
    for _ in range(3):
        s = RawConn(srv.host, srv.port)
        s.read_info()
        s.send(b"\x16\x03\x01\x02\x00\x01\x00\x01")  # the start of a ClientHello, then silence
        stalled.append(s)
    silent = RawConn(srv.host, srv.port)             # reads INFO and says nothing at all
    started = time.monotonic()
    session_works(upgrade(srv))
    assert time.monotonic() - started < 1.0
    for s in stalled + [silent]:
        s.close()


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_a_stalled_handshake_first_does_not_delay_a_second_client(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "handshake_first: true"))
    stalled = RawConn(srv.host, srv.port)
    stalled.send(b"\x16\x03\x01\x02\x00")
    started = time.monotonic()
    session_works(tls_first(srv))
    assert time.monotonic() - started < 1.0
    stalled.close()


def test_the_handshake_timeout_closes_a_stalled_client(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "timeout: 0.5"), "-D")
    c = RawConn(srv.host, srv.port)
    c.read_info()
    c.send(b"\x16\x03\x01")
    assert 0.3 < wait_closed(c) < 3.0
    srv.wait_for_log(rb"TLS handshake (timeout|error: .*i/o timeout)")


def test_the_handshake_timeout_defaults_to_two_seconds(start):
    srv = start(*SERVER_TLS)
    c = RawConn(srv.host, srv.port)
    c.read_info()
    assert 1.5 < wait_closed(c, 6.0) < 4.0


# -- monitoring over HTTPS -------------------------------------------------------


def https_get(srv, path: str, ctx=None) -> dict:
    m = srv.wait_for_log(HTTPS_MON_RE)
    url = "https://localhost:%d%s" % (int(m.group(2)), path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx or
                                                                     client_context()))
    with opener.open(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_https_monitoring_with_the_tls_certificate(start):
    srv = start(*SERVER_TLS, "-ms", "-1")
    varz = https_get(srv, "/varz")
    assert varz["tls_required"] is True
    assert varz["tls_timeout"] == 2
    assert varz["auth_timeout"] == 3   # Go: a second more than the handshake may take
    assert varz["https_port"] == -1 and varz["http_port"] == 0


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_https_monitoring_never_asks_the_browser_for_a_certificate(start, tmp_path):
    path = tls_conf(tmp_path, 'ca_file: "%s"\nverify: true\ntimeout: 3' % cert("ca.pem"),
                    top="https: -1")
    srv = start("-c", path)
    varz = https_get(srv, "/varz")
    assert varz["tls_verify"] is True and varz["tls_timeout"] == 3
    c = upgrade(srv, client_context("client"))
    c.send(CONNECT + PING)
    c.expect(rb"PONG\r\n")
    connz = https_get(srv, "/connz")
    conn = connz["connections"][0]
    assert conn["tls_version"] == "1.3"
    assert conn["tls_cipher_suite"].startswith("TLS_")


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_connz_marks_a_handshake_first_client(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "handshake_first: true", top="https: -1"))
    c = tls_first(srv)
    c.send(CONNECT + PING)
    c.expect(rb"PONG\r\n")
    conn = https_get(srv, "/connz")["connections"][0]
    assert conn["tls_first"] is True and conn["tls_version"] == "1.3"


def test_https_monitoring_without_tls_is_fatal(kind):
    r = run_kind(kind, "-a", "127.0.0.1", "-p", "-1", "-ms", "-1")
    assert r.returncode == 1
    assert "Can't start monitoring: TLS cert and key required for HTTPS" in r.stderr


# -- ciphers, curves, versions ---------------------------------------------------


def test_cipher_suites_map_go_names_to_openssl(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]"))
    c = upgrade(srv, client_context(tls12=True))
    assert c.sock.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
    session_works(c)
    other = client_context(tls12=True)
    other.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        upgrade(srv, other)


def test_curve_preferences_are_applied(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "curve_preferences: [CurveP384]"))
    session_works(upgrade(srv))


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_min_version_refuses_older_clients(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, 'min_version: "1.3"'))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        upgrade(srv, client_context(tls12=True))
    session_works(upgrade(srv))


# -- config and flag errors --------------------------------------------------------


def run(*args, timeout: float = 15.0) -> subprocess.CompletedProcess:
    return subprocess.run([SERVER_PYTHON, GNATSD, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_kind(kind: str, *args) -> subprocess.CompletedProcess:
    if kind == "gnatsd":
        return run(*args)
    return subprocess.run([GO_SERVERS[kind[2:]], *args], capture_output=True, text=True,
                          timeout=15, stdin=subprocess.DEVNULL)


def test_an_unknown_cipher_name_is_a_config_error_naming_it(kind, tmp_path):
    path = tls_conf(tmp_path, "cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_BOGUS]")
    r = run_kind(kind, "-t", "-c", path)
    assert r.returncode == 1
    assert re.search(r"server\.conf:\d+:\d+: unrecognized cipher TLS_BOGUS", r.stderr), r.stderr


# (tls block lines, what the error says) as Go 2.15 words it.
TLS_BLOCK_ERRORS = [
    ("curve_preferences: [BogusCurve]", "unrecognized curve preference BogusCurve"),
    ("cipher_suites: []", "error parsing tls config, 'cipher_suites' cannot be empty"),
    ('timeout: "bogus"', "error parsing tls config, 'timeout' time: invalid duration \"bogus\""),
    ('handshake_first: "bogus"', 'field "handshake_first"\'s value "bogus" is invalid'),
    ('min_version: "1.0"', "error parsing tls config: unsupported TLS version: TLS 1.0"),
    ('min_version: "1.4"', "error parsing tls config: unknown version: 1.4"),
    ("bogus: 1", 'error parsing tls config, unknown field "bogus"'),
    ('ca_file: "/nonexistent/ca.pem"', "open /nonexistent/ca.pem: no such file or directory"),
]


@pytest.mark.parametrize("kind", MODERN, indirect=True)
@pytest.mark.parametrize("line, message", TLS_BLOCK_ERRORS,
                         ids=[e[1][:40] for e in TLS_BLOCK_ERRORS])
def test_tls_block_errors_read_as_gos(kind, tmp_path, line, message):
    r = run_kind(kind, "-t", "-c", tls_conf(tmp_path, line))
    assert r.returncode == 1
    assert message in r.stderr, r.stderr


def test_a_missing_certificate_file_is_a_config_error(kind, tmp_path):
    path = write_conf(tmp_path, 'tls { cert_file: "/nonexistent.pem", key_file: "%s" }\n'
                      % cert("server-key.pem"))
    r = run_kind(kind, "-t", "-c", path)
    assert r.returncode == 1
    assert ("error parsing X509 certificate/key pair: open /nonexistent.pem: no such file or "
            "directory") in r.stderr


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(kind, tmp_path):
    path = write_conf(tmp_path, 'tls { cert_file: "%s", key_file: "%s" }\n'
                      % (cert("server-cert.pem"), cert("client-key.pem")))
    r = run_kind(kind, "-t", "-c", path)
    assert r.returncode == 1
    assert "tls: private key does not match public key" in r.stderr


def test_go_keys_gnatsd_cannot_honour_are_refused(tmp_path):
    r = run("-t", "-c", tls_conf(tmp_path, 'pinned_certs: ["abc"]'))
    assert r.returncode == 1
    assert "'pinned_certs' is not supported by gnatsd.py" in r.stderr


FLAG_ERRORS = [
    ((("--tls",)), "TLS Server certificate must be present and valid"),
    (("--tls", "--tlscert", cert("server-cert.pem")),
     "TLS Server private key must be present and valid"),
    (("--tlscacert", cert("ca.pem")), "TLS Server certificate must be present and valid"),
    (SERVER_TLS + ("--tlscacert", "/nonexistent/ca.pem"),
     "open /nonexistent/ca.pem: no such file or directory"),
]


@pytest.mark.parametrize("args, message", FLAG_ERRORS, ids=[e[1][:30] for e in FLAG_ERRORS])
def test_tls_flag_errors_read_as_gos(kind, args, message):
    r = run_kind(kind, "-a", "127.0.0.1", "-p", "-1", *args)
    assert r.returncode == 1
    assert "nats-server: %s" % message in r.stderr


def test_help_tls_lists_the_go_names_this_build_accepts():
    r = run("--help_tls")
    assert r.returncode == 0
    assert "tls {" in r.stdout and "verify_and_map: true" in r.stdout
    ciphers = r.stdout.split("Available cipher suites include:")[1].split("Available curve")[0]
    curves = r.stdout.split("Available curve preferences include:")[1]
    ours = set(ciphers.split())
    assert "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in ours and "TLS_AES_128_GCM_SHA256" in ours
    assert {"CurveP256", "CurveP384", "CurveP521", "X25519"} <= set(curves.split())
    go_names = set()
    for path in GO_SERVERS.values():
        go = subprocess.run([path, "--help_tls"], capture_output=True, text=True, timeout=15)
        go_names |= set(go.stdout.split("Available cipher suites include:")[1]
                        .split("Available curve")[0].split())
    if go_names:
        assert ours <= go_names, ours - go_names


# -- verify_and_map's candidate names (in-process) ------------------------------------


def test_peer_identities_are_the_certificates_names_in_gos_order():
    gnatsd = import_gnatsd()
    tls = gnatsd.TLSConfig(cert_file=cert("server-cert.pem"), key_file=cert("server-key.pem"),
                           ca_file=cert("ca.pem"), verify=True)
    server = gnatsd.Server(gnatsd.Options(host="127.0.0.1", port=-1, tls=tls)).start()
    try:
        c = upgrade(server, client_context("client"))
        c.send(CONNECT + PING)
        c.expect(rb"PONG\r\n")
        names = server.call_in_loop(
            lambda: [x.tls_peer_identities() for x in server.clients.values()])
        assert names == [["alice@example.com", "alice.example.com", "nats://alice.example.com",
                          "CN=alice,OU=tests,O=gnatsd.py,C=US"]]
        c.close()
    finally:
        server.shutdown()


def test_cert_identities_follow_gos_pkix_text():
    gnatsd = import_gnatsd()
    cert_identities = gnatsd.cert_identities
    subject = ((("domainComponent", "org"),), (("domainComponent", "example"),),
               (("countryName", "US"),), (("organizationalUnitName", "a"),),
               (("organizationalUnitName", "b, c"),), (("commonName", " bob"),))
    names = cert_identities({"subject": subject})
    # The certificate's own order first (Go matches it as a parsed DN), then
    # pkix.Name's text with the domain components, then without.
    assert names == ["CN=\\ bob,OU=b\\, c,OU=a,C=US,DC=example,DC=org",
                     "CN=\\ bob,OU=a+OU=b\\, c,C=US,DC=org,DC=example",
                     "CN=\\ bob,OU=a+OU=b\\, c,C=US"]
    # A DNS name alone is not enough for Go (no e-mail, URI or subject).
    assert cert_identities({"subjectAltName": (("DNS", "x.example"),)}) == []
    assert cert_identities({}) == []


# -- verify_and_map: the certificate names the user --------------------------------------
#
# Go 2.9 and 2.15 (both checked) with `tls { verify_and_map: true }` and a
# users list: the client's verified certificate names its user, tried in
# order e-mail SANs, DNS SANs, URI SANs, then the subject (a user named by a
# DN matches it in any RDN order, spacing or attribute case); the first name
# that is a user wins.  A password that user has must still come in CONNECT;
# a user name in CONNECT is ignored, with `[WRN] User "bob" found in connect
# proto, but user required from cert`.  At [DBG]: `Using email found in cert
# for auth ["alice@example.com"]` (`SAN ...`, `URI ...`, `Using
# DistinguishedNameMatch for auth [...]`), or, with no user found,
# `DistinguishedNameMatch could not be used for auth ["CN=alice,..."]` and
# `User in cert ["CN=alice,..."], not found`, then `[ERR] ... authentication
# error` (2.15: ` - User "x"` when CONNECT or the certificate named one;
# 2.9 says ` - User ""` with none).  no_auth_user does not apply.

ALICE_DN = "CN=alice,OU=tests,O=gnatsd.py,C=US"


def map_conf(tmp_path, users: str, top: str = "") -> str:
    """verify_and_map with `users` (the entries of a users list)."""
    return tls_conf(tmp_path, 'ca_file: "%s"\nverify_and_map: true' % cert("ca.pem"),
                    top="authorization { users = [ %s ] }\n%s" % (users, top))


def mapped_session(srv, connect: bytes = CONNECT) -> RawConn:
    c = upgrade(srv, client_context("client"))
    c.send(connect + PING)
    return c


@pytest.mark.parametrize("user, source", [
    ("alice@example.com", "email found in cert"),
    ("alice.example.com", "SAN found in cert"),
    ("nats://alice.example.com", "URI found in cert"),
    (ALICE_DN, "DistinguishedNameMatch"),
    ("C=US, O=gnatsd.py, OU=tests, CN=alice", "DistinguishedNameMatch"),
    ("cn=alice, ou=tests,o=gnatsd.py,c=US", "DistinguishedNameMatch"),
])
def test_verify_and_map_logs_in_as_the_user_the_certificate_names(start, kind, tmp_path, user,
                                                                 source):
    srv = start("-c", map_conf(tmp_path, '{user: "%s"}' % user), "-DV")
    c = mapped_session(srv)
    assert c.info["auth_required"] is True and c.info["tls_verify"] is True
    c.expect(rb"PONG\r\n")
    session_works(c)
    srv.wait_for_log(rb"\[DBG\] [^\n]* - cid:\d+ - Using %s for auth \[\"%s\"\]"
                     % (source.encode(), re.escape(user.encode())))
    if kind != "go2.9":
        srv.wait_for_log(rb'- "\$G/user:%s" - <<- \[SUB foo 1\]' % re.escape(user.encode()))


def test_verify_and_map_takes_the_first_name_in_gos_order(start, tmp_path):
    # Listed last, the DNS SAN still beats the URI SAN and the subject.
    users = '{user: "%s"}, {user: "nats://alice.example.com"}, {user: "alice.example.com"}' \
        % ALICE_DN
    srv = start("-c", map_conf(tmp_path, users), "-DV")
    mapped_session(srv).expect(rb"PONG\r\n")
    srv.wait_for_log(rb'Using SAN found in cert for auth \["alice.example.com"\]')


def test_verify_and_map_refuses_a_certificate_that_names_no_user(start, kind, tmp_path):
    # CONNECT's own credentials do not help: the certificate must name the user.
    srv = start("-c", map_conf(tmp_path, '{user: "bob", password: "x"}',
                               top="no_auth_user: bob"), "-D")
    c = mapped_session(srv)
    c.expect(rb"-ERR 'Authorization Violation'\r\n")
    refused(lambda: mapped_session(srv, b'CONNECT {"verbose":false,"user":"bob","pass":"x"}\r\n'))
    srv.wait_for_log(rb'DistinguishedNameMatch could not be used for auth \["%s"\]' % ALICE_DN.encode())
    srv.wait_for_log(rb'User in cert \["%s"\], not found' % ALICE_DN.encode())
    if kind != "go2.9":
        srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:\d+ - cid:\d+ - authentication error\n")
        srv.wait_for_log(rb'\[ERR\] 127\.0\.0\.1:\d+ - cid:\d+ - authentication error - User "bob"')


def test_verify_and_map_ignores_the_connect_user_but_checks_a_password(start, kind, tmp_path):
    srv = start("-c", map_conf(tmp_path, '{user: "alice@example.com", password: "pw"}, '
                                         '{user: "bob", password: "x"}'))
    mapped_session(srv, b'CONNECT {"verbose":false,"pass":"pw"}\r\n').expect(rb"PONG\r\n")
    ok = mapped_session(srv, b'CONNECT {"verbose":false,"user":"bob","pass":"pw"}\r\n')
    ok.expect(rb"PONG\r\n")
    srv.wait_for_log(rb'\[WRN\] User "bob" found in connect proto, but user required from cert')
    # Bob's password is not alice's, and no password is not either.
    for connect in (b'CONNECT {"verbose":false,"user":"bob","pass":"x"}\r\n', CONNECT):
        mapped_session(srv, connect).expect(rb"-ERR 'Authorization Violation'\r\n")
    srv.wait_for_log(rb'authentication error - User "alice@example.com"')


def test_verify_and_map_applies_the_users_permissions_and_account(start, kind, tmp_path):
    accounts = ('accounts { A { users = [ {user: "alice@example.com", permissions: '
                '{publish: "foo", subscribe: "foo"}} ] }, B { users = [ {user: "b", '
                'password: "b"} ] } }')
    path = tls_conf(tmp_path, 'ca_file: "%s"\nverify_and_map: true' % cert("ca.pem"),
                    top=accounts)
    srv = start("-c", path, "-DV")
    c = mapped_session(srv, CONNECT + b"SUB foo 1\r\nPUB foo 2\r\nok\r\nPUB bar 2\r\nno\r\n")
    c.expect(rb"MSG foo 1 2\r\nok\r\n-ERR 'Permissions Violation for Publish to "
             rb"\"bar\"'\r\nPONG\r\n")
    if kind != "go2.9":  # 2.9 does not name the account and user in its log prefix
        srv.wait_for_log(rb'- "A/user:alice@example.com" - <<- \[SUB foo 1\]')


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_verify_and_map_is_checked_again_on_reload(start, tmp_path):
    """The mapped identity survives a reload: new permissions apply to the
    live client; a reload that drops its user closes it without a word."""
    path = map_conf(tmp_path, '{user: "alice@example.com"}')
    srv = start("-c", path)
    c = mapped_session(srv, CONNECT + b"SUB foo 1\r\n")
    c.expect(rb"PONG\r\n")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('{user: "alice@example.com"}',
                             '{user: "alice@example.com", permissions: {publish: "bar"}}'))
    start_at = len(srv.log)
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(rb"Reloaded server configuration", start=start_at)
    c.send(b"PUB foo 2\r\nno\r\nPUB bar 2\r\nok\r\n" + PING)
    c.expect(rb"-ERR 'Permissions Violation for Publish to \"foo\"'\r\nPONG\r\n")
    with open(path, "w") as f:
        f.write(text.replace('{user: "alice@example.com"}', '{user: "bob", password: "x"}'))
    start_at = len(srv.log)
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(rb"Reloaded server configuration", start=start_at)
    assert c.read_until_closed(5) == b""   # "Client Closed", as for a user dropped from a list


def test_nats_py_with_a_client_certificate_mapped_to_a_user(start, tmp_path):
    srv = start("-c", map_conf(tmp_path, '{user: "alice@example.com", permissions: '
                                         '{publish: "greet", subscribe: "greet"}}'))
    run_async(nats_roundtrip(srv.url, tls=client_context("client")))


def test_nats_py_is_refused_when_the_certificate_names_no_user(start, tmp_path):
    srv = start("-c", map_conf(tmp_path, '{user: "bob", password: "x"}'))
    with pytest.raises(Exception, match="(?i)authorization"):
        run_async(nats_roundtrip(srv.url, tls=client_context("client"), user="bob",
                                 password="x"))


def test_authenticate_maps_the_first_certificate_name_naming_a_user():
    gnatsd = import_gnatsd()
    names = ["alice@example.com", "alice.example.com", "nats://alice.example.com", ALICE_DN]

    def auth(users, credentials=None, identities=names):
        opts = gnatsd.Options(users=[gnatsd.User(u, p, None) for u, p in users],
                              tls=gnatsd.TLSConfig(verify_and_map=True)).fill_defaults()
        found = gnatsd.authenticate(opts, credentials or {}, identities)
        return found and found[0]

    assert auth([("x", ""), (ALICE_DN, ""), ("alice.example.com", "")]) == "alice.example.com"
    assert auth([("O=gnatsd.py,CN=alice ,c=US, ou=tests", "")]) == \
        "O=gnatsd.py,CN=alice ,c=US, ou=tests"
    assert auth([("CN=alice,OU=tests,O=gnatsd.py", "")]) is None   # an RDN short
    assert auth([("alice@example.com", "pw")]) is None
    assert auth([("alice@example.com", "pw")], {"user": "bob", "pass": "pw"}) \
        == "alice@example.com"
    assert auth([("alice@example.com", "")], identities=()) is None
    # Without verify_and_map the certificate is no credential.
    opts = gnatsd.Options(users=[gnatsd.User("alice@example.com", "", None)]).fill_defaults()
    assert gnatsd.authenticate(opts, {}, names) is None


def test_tls_block_forms(tmp_path):
    gnatsd = import_gnatsd()

    def tls(line):
        return gnatsd.options_from_config(tls_conf(tmp_path, line)).tls

    assert (tls("handshake_first: true").handshake_first, tls("handshake_first: true").fallback) \
        == (True, 0.0)
    assert tls('handshake_first: "auto"').fallback == 0.05
    assert tls('first: "300ms"').fallback == pytest.approx(0.3)
    assert tls('handshake_first: "off"').handshake_first is False
    assert tls('timeout: "1500ms"').timeout == 1.5 and tls("timeout: 3").timeout == 3.0
    mapped = tls("verify_and_map: true")
    assert mapped.verify is True and mapped.verify_and_map is True
    opts = gnatsd.options_from_config(tls_conf(tmp_path)).fill_defaults()
    assert opts.auth_timeout == 3.0 and opts.tls == gnatsd.TLSConfig(
        cert_file=cert("server-cert.pem"), key_file=cert("server-key.pem"))


def test_cluster_tls_block_verifies_peers_both_ways(tmp_path):
    """Go forces RequireAndVerifyClientCert on routes, `verify` or not; the
    dialing side checks the peer and its host unless `insecure`."""
    gnatsd = import_gnatsd()

    def cluster_tls(extra="", warnings=()):
        path = write_conf(tmp_path, 'cluster {\n  listen: "127.0.0.1:-1"\n  tls {\n'
                          '    cert_file: "%s"\n    key_file: "%s"\n    ca_file: "%s"\n%s  }\n}\n'
                          % (cert("route-cert.pem"), cert("route-key.pem"), cert("ca.pem"), extra))
        opts = gnatsd.options_from_config(path)
        assert opts.tls is None and [w.split(": ", 1)[1] for w in opts.warnings] == list(warnings)
        return opts.cluster_tls

    tc = cluster_tls("    verify: false\n")
    assert tc.verify is True
    assert tc.server_context().verify_mode == ssl.CERT_REQUIRED
    client = tc.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname is True
    insecure = cluster_tls("    insecure: true\n").client_context()
    assert insecure.verify_mode == ssl.CERT_NONE and insecure.check_hostname is False
    # Go maps a route's certificate to the cluster user; here it is only verified.
    cluster_tls("    verify_and_map: true\n", ["route tls verify_and_map is not supported by "
                                               "gnatsd.py yet; ignored"])


# -- slow consumers and nats-py ---------------------------------------------------------


def test_a_tls_slow_consumer_is_closed_and_the_publisher_goes_on(tmp_path):
    srv = start_gnatsd("-c", tls_conf(tmp_path, top="max_pending: 256KB\nmax_payload: 64KB"))
    try:
        sub = upgrade(srv)
        sub.send(CONNECT + b"SUB slow 1\r\n" + PING)
        sub.expect(rb"PONG\r\n")
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pub = upgrade(srv)
        body = b"x" * 1024
        pub.send(CONNECT)
        for _ in range(100):  # 20 MB: more than the kernel's buffers hold
            pub.send(b"PUB slow 1024\r\n%s\r\n" % body * 200)
        pub.send(PING)
        pub.expect(rb"PONG\r\n", timeout=20)
        srv.wait_for_log(rb"Slow Consumer Detected", timeout=10)
    finally:
        srv.stop()


def test_a_tls_flood_reaches_a_fast_consumer_whole_and_cuts_a_slow_one(tmp_path):
    """16 MB from a TLS publisher that never pauses: the server stalls it
    while the slow consumer's pending bytes are high (plaintext may then sit
    decrypted inside OpenSSL until the stall ends), the fast consumer gets
    every byte in order, only the consumer that never reads is cut.  (Go
    2.15 is no oracle here: over TLS it holds this publisher past 60 s.)"""
    srv = start_gnatsd("-c", tls_conf(tmp_path, top="max_pending: 1MB"))
    slow = upgrade(srv)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send(CONNECT + b"SUB flood 1\r\n" + PING)
    slow.expect(rb"PONG\r\n")
    fast = upgrade(srv)
    fast.send(CONNECT + b"SUB flood 1\r\n" + PING)
    fast.expect(rb"PONG\r\n")
    payloads = [b"%08d" % i * 128 for i in range(16 * 1024)]
    want = b"".join(b"MSG flood 1 1024\r\n%s\r\n" % p for p in payloads)
    got = bytearray()

    def read_fast():
        fast.sock.settimeout(30)
        try:
            while len(got) < len(want):
                time.sleep(0.001)  # a consumer that keeps up, but not at once
                chunk = fast.sock.recv(1 << 16)
                if not chunk:
                    return
                got.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    pub = upgrade(srv)
    pub.sock.settimeout(60)
    pub.sock.sendall(CONNECT + b"".join(b"PUB flood 1024\r\n%s\r\n" % p for p in payloads)
                     + PING)
    pub.expect(rb"PONG\r\n", timeout=60)
    reader.join(60)
    drop = re.compile(rb"PING\r\n")  # an early server PING may sit between messages
    assert drop.sub(b"", bytes(got[:len(want) + 12]))[:len(want)] == want
    srv.wait_for_log(rb"Slow Consumer Detected", timeout=10)
    srv.stop()


nats = pytest.importorskip("nats")


def run_async(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def nats_roundtrip(url: str, **kw):
    nc = await nats.connect(servers=[url], connect_timeout=2, allow_reconnect=False,
                            max_reconnect_attempts=0, **kw)
    try:
        sub = await nc.subscribe("greet")
        await nc.publish("greet", b"hello over tls")
        msg = await sub.next_msg(timeout=3)
        assert msg.data == b"hello over tls"
        assert nc.connected_url.netloc
    finally:
        await nc.close()


def test_nats_py_over_tls(start):
    srv = start(*SERVER_TLS)
    run_async(nats_roundtrip(srv.url, tls=client_context()))


def test_nats_py_with_a_client_certificate(start):
    srv = start(*VERIFY_TLS)
    run_async(nats_roundtrip(srv.url, tls=client_context("client")))


def test_nats_py_is_refused_without_a_client_certificate(start):
    srv = start(*VERIFY_TLS)
    with pytest.raises(Exception):
        run_async(nats_roundtrip(srv.url, tls=client_context()))


@pytest.mark.parametrize("kind", MODERN, indirect=True)
def test_nats_py_tls_handshake_first(start, tmp_path):
    srv = start("-c", tls_conf(tmp_path, "handshake_first: true"))
    run_async(nats_roundtrip(srv.url, tls=client_context(), tls_handshake_first=True))


def test_nats_py_sees_the_hostname_mismatch(start):
    srv = start("--tls", "--tlscert", cert("wrong-cert.pem"), "--tlskey", cert("wrong-key.pem"))
    errors = []

    async def attempt():
        async def error_cb(e):
            errors.append(e)
        try:
            await nats_roundtrip(srv.url, tls=client_context(), error_cb=error_cb)
        except Exception as exc:
            errors.append(exc)

    run_async(attempt())
    text = " ".join("%r %s" % (e, getattr(e, "__cause__", "")) for e in errors)
    assert re.search(r"(?i)certificate verify failed|hostname|IP address mismatch", text), text


# -- allow_non_tls -------------------------------------------------------------------


def test_allow_non_tls_lets_each_client_choose_plain_or_tls(start, tmp_path):
    """`allow_non_tls: true`: INFO says `tls_available` (not tls_required);
    a client that starts TLS after it gets TLS, one that sends CONNECT in
    plain text stays plain (Go sniffs the first byte), and both talk."""
    srv = start("-c", tls_conf(tmp_path, top="allow_non_tls: true\n"))
    plain = RawConn(srv.host, srv.port)
    info = plain.read_info()
    assert info.get("tls_available") is True and "tls_required" not in info
    plain.send(CONNECT + b"SUB mixed 1\r\n" + PING)
    plain.expect(rb"PONG\r\n")
    secure = upgrade(srv)
    session_works(secure)
    secure.send(b"PUB mixed 2\r\nhi\r\n" + PING)
    secure.expect(rb"PONG\r\n")
    plain.expect(rb"MSG mixed 1 2\r\nhi\r\n")
    secure.close()
    plain.close()
