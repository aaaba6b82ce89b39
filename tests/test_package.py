"""The Python package (issue 14): the wheel is the one file, and installed
into a fresh venv it gives the `gnatsd` command, `python -m gnatsd`, the
embedding API and the pytest fixtures; a copied file gives the fixtures
through `pytest_plugins`.

The wheel and sdist are built once per run from a copy of the checkout
(setuptools, without build isolation: no network), and installed with the
test venv's pip into a venv made without pip.  The fresh venv reaches the
test venv's packages (pytest, nats-py) through a .pth file, after its own.
"""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from conftest import GNATSD, ROOT, LISTEN_RE, READY_RE, ServerProcess, RawConn, t_ping_pong

pytestmark = pytest.mark.timeout(300)

VERSION = re.search(r'^__version__ = "([^"]+)"', open(GNATSD).read(), re.M).group(1)


def run(argv, timeout=120, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(wheel, sdist) built from a copy of the checkout's package files."""
    src = tmp_path_factory.mktemp("src")
    for name in ("gnatsd.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    out = tmp_path_factory.mktemp("dist")
    r = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
    assert r.returncode == 0, r.stdout + r.stderr
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist):
    """A fresh venv with the wheel installed; returns its bin directory."""
    home = tmp_path_factory.mktemp("venv")
    r = run([sys.executable, "-m", "venv", "--without-pip", str(home)])
    assert r.returncode == 0, r.stderr
    python = home / "bin" / "python"
    r = run([sys.executable, "-m", "pip", "--python", str(python), "install",
             "--disable-pip-version-check", "--no-index", "--no-deps", str(dist[0])])
    assert r.returncode == 0, r.stdout + r.stderr
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    ours = run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    with open(os.path.join(site.stdout.strip(), "test-venv.pth"), "w") as f:
        f.write(ours.stdout.strip() + "\n")
    return home / "bin"


def test_wheel_is_the_one_module_with_no_dependencies(dist):
    with zipfile.ZipFile(dist[0]) as whl:
        names = whl.namelist()
        info = "gnatsd_py-%s.dist-info/" % VERSION
        assert sorted(n for n in names if not n.startswith(info)) == ["gnatsd.py"]
        assert whl.read("gnatsd.py") == open(GNATSD, "rb").read()
        meta = email.parser.Parser().parsestr(whl.read(info + "METADATA").decode())
        entry_points = whl.read(info + "entry_points.txt").decode()
    assert meta["Name"] == "gnatsd-py" and meta["Version"] == VERSION
    assert meta.get_all("Requires-Dist") is None
    assert meta["Requires-Python"] == ">=3.8"
    assert re.search(r"(?m)^\[console_scripts\]\ngnatsd = gnatsd:main$", entry_points)
    assert re.search(r"(?m)^\[pytest11\]\ngnatsd = gnatsd$", entry_points)


def test_sdist_has_the_module_and_twine_passes_both(dist):
    import tarfile
    with tarfile.open(dist[1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"gnatsd.py", "pyproject.toml", "README.md", "PKG-INFO"} <= names
    r = run([sys.executable, "-m", "twine", "check", "--strict", str(dist[0]), str(dist[1])])
    assert r.returncode == 0, r.stdout + r.stderr


def test_console_command_serves(venv):
    srv = ServerProcess([str(venv / "gnatsd"), "-a", "127.0.0.1", "-p", "-1"], "gnatsd").start()
    try:
        conn = RawConn(srv.host, srv.port)
        conn.read_info()
        conn.send(b'CONNECT {"verbose":false}\r\n')
        t_ping_pong(conn)
        conn.close()
    finally:
        assert srv.stop() == 0


def test_python_m_gnatsd_prints_the_version(venv):
    r = run([str(venv / "python"), "-m", "gnatsd", "-v"], cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "nats-server: v2.10.0 (gnatsd.py %s)" % VERSION


def test_the_installed_module_is_the_one_imported(venv):
    r = run([str(venv / "python"), "-c", "import gnatsd; print(gnatsd.__file__)"], cwd="/")
    assert r.returncode == 0, r.stderr
    assert "site-packages" in r.stdout and ROOT not in r.stdout


def test_install_alias_runs_as_nats_server(venv, tmp_path):
    r = run([str(venv / "gnatsd"), "--install-alias", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    alias = tmp_path / "nats-server"
    assert r.stdout.strip() == str(alias)
    r = run([str(alias), "-v"], cwd="/")
    assert r.stdout.strip() == "nats-server: v2.10.0 (gnatsd.py %s)" % VERSION
    # Started by that name, the ports file has Go's name.
    srv = ServerProcess([str(alias), "-a", "127.0.0.1", "-p", "-1",
                         "--ports_file_dir", str(tmp_path)], "alias").start()
    try:
        ports = tmp_path / ("nats-server_%d.ports" % srv.pid)
        deadline = time.monotonic() + 5        # written just after "Server is ready"
        while not ports.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ports.exists(), os.listdir(tmp_path)
    finally:
        srv.stop()
    # A file it did not write is left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "nats-server").write_text("#!/bin/sh\necho go\n")
    r = run([str(venv / "gnatsd"), "--install-alias", str(other)])
    assert r.returncode == 1 and "not a gnatsd.py alias" in r.stderr
    assert (other / "nats-server").read_text() == "#!/bin/sh\necho go\n"


def test_run_cluster_from_the_installed_package(venv):
    script = textwrap.dedent("""
        import asyncio, gnatsd, nats

        async def main():
            with gnatsd.run_cluster(3) as cluster:
                assert [s.route_count() for s in cluster.servers] == [2, 2, 2]
                names = [s.server.server_name for s in cluster.servers]
                assert names == ["node1", "node2", "node3"], names
                sub = await nats.connect(cluster.servers[0].client_url)
                pub = await nats.connect(cluster.servers[2].client_url)
                s = await sub.subscribe("across")
                await sub.flush()
                for _ in range(100):     # until node3 has node1's interest
                    await pub.publish("across", b"x")
                    await pub.flush()
                    try:
                        msg = await s.next_msg(timeout=0.1)
                        break
                    except nats.errors.TimeoutError:
                        pass
                assert msg.data == b"x"
                await sub.close()
                await pub.close()
            print("ok")

        asyncio.run(main())
    """)
    r = run([str(venv / "python"), "-c", script], cwd="/", timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# A test module for a user's project: the fixtures, nothing else imported.
USER_TESTS = '''
import asyncio, socket
import nats
import pytest

seen = {}


def test_nats_server_fixture(nats_server):
    async def main():
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("hello")
        await nc.publish("hello", b"world")
        assert (await sub.next_msg(timeout=2)).data == b"world"
        await nc.close()
    asyncio.run(main())
    assert nats_server.host == "127.0.0.1" and nats_server.port > 0


def test_factory_passes_options(nats_server_factory):
    srv = nats_server_factory(max_payload=2048, server_name="custom")
    async def main():
        nc = await nats.connect(srv.url)
        assert nc.max_payload == 2048
        await nc.close()
    asyncio.run(main())


@pytest.mark.parametrize("nats_cluster", [2], indirect=True)
def test_cluster_fixture_size(nats_cluster):
    assert len(nats_cluster.servers) == 2
    assert all(s.route_count() == 1 for s in nats_cluster.servers)


def test_default_cluster(nats_cluster):
    assert len(nats_cluster.servers) == 3


def test_fails_with_servers_running(nats_server, nats_server_factory):
    seen["ports"] = [nats_server.port, nats_server_factory().port]
    assert False, "failing on purpose"


def test_servers_of_the_failed_test_are_gone():
    for port in seen["ports"]:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
'''


def user_pytest(python, where):
    return run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
                "-p", "no:randomly", "-q", str(where)], cwd=str(where), timeout=120)


def check_user_run(r):
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert re.search(r"1 failed, 5 passed", out), out
    assert "failing on purpose" in out
    assert re.search(r"FAILED \S*::test_fails_with_servers_running", out), out


def test_fixtures_from_the_installed_plugin(venv, tmp_path):
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    check_user_run(user_pytest(venv / "python", tmp_path))


def test_fixtures_from_a_copied_file(tmp_path):
    """Without installing: the file beside the tests, `pytest_plugins`."""
    shutil.copy(GNATSD, tmp_path / "gnatsd.py")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["gnatsd"]\n')
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    check_user_run(user_pytest(sys.executable, tmp_path))
