"""A second real client: the official Go client, nats.go (issue 13).

tests/natsgo/main.go runs one scenario against a server (pub/sub, queue
groups, request/reply with no_responders, headers, drain, user and token
auth, TLS, reconnect after a restart, a two-node cluster) and prints "ok".
It is built once per run, offline, from Debian's packages (`golang-go` and
`golang-github-nats-io-go-nats-dev`, which .ci/run installs) in GOPATH mode;
without them these tests skip.  Every scenario runs against gnatsd.py and
against the Go nats-server 2.15 with the same arguments: both must pass.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import ROOT, free_port, start_gnatsd, start_kind, write_conf

GOPATH = "/usr/share/gocode"
NATS_GO = os.path.join(GOPATH, "src", "github.com", "nats-io", "nats.go")
CERTS = os.path.join(ROOT, "tests", "certs")

pytestmark = [
    pytest.mark.skipif(shutil.which("go") is None or not os.path.isdir(NATS_GO),
                       reason="no Go toolchain or nats.go source (.ci/run installs Debian's "
                              "golang-go and golang-github-nats-io-go-nats-dev)"),
    pytest.mark.timeout(120),
]

KINDS = ["gnatsd", "go2.15"]


@pytest.fixture(scope="module")
def natsgo(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("natsgo")
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOCACHE=str(out / "cache"),
               CGO_ENABLED="0", GOFLAGS="")
    binary = str(out / "natsgo")
    r = subprocess.run(["go", "build", "-o", binary,
                        os.path.join(ROOT, "tests", "natsgo", "main.go")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return binary


def run(natsgo: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([natsgo, *args], capture_output=True, text=True, timeout=timeout)


def assert_ok(r):
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@pytest.mark.parametrize("scenario", ["pubsub", "queue", "request", "headers", "drain"])
@pytest.mark.parametrize("kind", KINDS)
def test_scenario(natsgo, kind, scenario):
    srv = start_kind(kind)
    try:
        assert_ok(run(natsgo, "-scenario", scenario, "-url", srv.url))
    finally:
        srv.stop()


@pytest.mark.parametrize("creds", [["--user", "u", "--pass", "p"], ["--auth", "s3cr3t"]],
                         ids=["user", "token"])
@pytest.mark.parametrize("kind", KINDS)
def test_auth(natsgo, kind, creds):
    srv = start_kind(kind, *creds)
    try:
        args = ["-user", "u", "-pass", "p"] if creds[0] == "--user" else ["-token", "s3cr3t"]
        assert_ok(run(natsgo, "-scenario", "auth", "-url", srv.url, *args))
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_tls(natsgo, kind):
    srv = start_kind(kind, "--tls", "--tlscert", os.path.join(CERTS, "server-cert.pem"),
                 "--tlskey", os.path.join(CERTS, "server-key.pem"))
    try:
        url = "tls://localhost:%d" % srv.port
        assert_ok(run(natsgo, "-scenario", "tls", "-url", url,
                      "-ca", os.path.join(CERTS, "ca.pem")))
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_reconnect_after_a_restart_on_the_same_port(natsgo, kind):
    port = free_port()
    srv = start_kind(kind, "-p", str(port)) if kind == "go2.15" else \
        start_gnatsd("-p", str(port), port=False)
    proc = subprocess.Popen([natsgo, "-scenario", "reconnect", "-url", srv.url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        srv.stop()
        again = start_kind(kind, "-p", str(port)) if kind == "go2.15" else \
            start_gnatsd("-p", str(port), port=False)
        try:
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0 and out.strip().endswith("ok"), out
        finally:
            again.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()


@pytest.mark.parametrize("kinds", [("gnatsd", "gnatsd"), ("gnatsd", "go2.15"),
                                   ("go2.15", "gnatsd")], ids=lambda k: "+".join(k))
def test_two_node_cluster(natsgo, tmp_path, kinds):
    route = free_port()
    first = start_kind(kinds[0], "--cluster", "nats://127.0.0.1:%d" % route,
                   "--cluster_name", "natsgo")
    second = start_kind(kinds[1], "--cluster", "nats://127.0.0.1:-1", "--cluster_name", "natsgo",
                    "--routes", "nats://127.0.0.1:%d" % route)
    try:
        assert_ok(run(natsgo, "-scenario", "cluster", "-url", first.url, "-url2", second.url))
    finally:
        first.stop()
        second.stop()
