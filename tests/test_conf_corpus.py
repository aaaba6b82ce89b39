"""A corpus of small config files, checked with `-t -c FILE` against Go.

Each file in tests/conf_corpus/ opens with Go's answer to `nats-server -t
-c FILE`, written down from nats-server 2.15 on its first line:

    # go: valid
    # go: bad_duration_unit.conf:4:4: error parsing ping_interval: time: ...
    # go: Parse error on line 6: 'Unexpected EOF processing map.'
    # go: server_name_with_space.conf:3:1: server name ... || go2.9: valid

(the "nats-server: " prefix, the corpus directory and the sha256 dropped;
`|| go2.9:` gives 2.9's answer where it differs, and `|| gnatsd: LINE:COL
why` the position gnatsd.py gives on purpose where it differs from Go's).  Run against a Go server
the test checks that exact message, so the comments stay true; run against
gnatsd.py it checks the exit status, and for a broken file that the one-line
error names the file and line Go names (the included file, for an error
inside one), and the column where Go gives one.  gnatsd.py follows the
newest Go.

Go's error positions come in three shapes: `FILE:LINE:COL: msg` for the
options (and `config is invalid (FILE:LINE:COL)` for a key left without a
value at the end), `Parse error on line N: 'msg'` (no file, no column) for
the lexer and parser, and none at all for a few checks (a missing include,
a bad subject, an integer out of range); for the last gnatsd.py must still
name the file.  Go counts columns from 0 on a file's first line and from 1 on the
others; gnatsd.py counts from 1 everywhere (test_go_counts_columns_from_0_
on_the_first_line).  The first line here is always the comment, so no corpus
error sits on it.

test_cli.py checks snippets for the exit status alone and test_conf.py the
parser in-process; this corpus adds the positions, and the cases where Go's
answer is surprising: a whole file in `{ }` (JSON style) is fine, so is a
stray `}` at the end, an included file does not see the includer's
variables, and `-t` does not check no_auth_user.
"""
from __future__ import annotations

import os
import re

import pytest

from test_cli import one_line, run_kind

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf_corpus")
NAMES = sorted(n for n in os.listdir(CORPUS) if n.endswith(".conf"))

HEADER_RE = re.compile(r"^# go: (?P<go>.*?)(?: \|\| go2\.9: (?P<go29>.*?))?"
                       r"(?: \|\| gnatsd: (?P<ours>\d+:\d+) .*)?$")

# Where Go puts an error (see the module docstring).
GO_AT_RE = re.compile(r"^(?:config is invalid \()?(?P<file>[\w./-]+\.conf):(?P<line>\d+):"
                      r"(?P<col>\d+)(?:: |\)$)")
GO_LINE_RE = re.compile(r"^(?:error parsing include file '(?P<inc>[^']+)', )?"
                        r"(?:Parse error on line (?P<line>\d+): |variable reference for "
                        r"'[^']+' on line (?P<vline>\d+) can not be found)")

# Where gnatsd.py puts it: file:line or file:line:col.
OUR_AT_RE = re.compile(r"^nats-server: (?P<file>.+?\.conf):(?P<line>\d+)(?::(?P<col>\d+))?: ")


def header(name: str) -> re.Match:
    with open(os.path.join(CORPUS, name), encoding="utf-8", newline="") as f:
        m = HEADER_RE.match(f.readline().rstrip("\r\n"))
    assert m, "%s: the first line must be '# go: ...'" % name
    return m


def recorded(name: str, kind: str) -> str:
    """Go's answer for `name` as its first line records it, for `kind`."""
    m = header(name)
    return m.group("go29") if kind == "go2.9" and m.group("go29") else m.group("go")


def go_answer(stderr: str) -> str:
    """Go's -t output as the first lines record it."""
    line = one_line(stderr)
    line = re.sub(r" \(sha256:[0-9a-f]+\)$", "", line)
    assert line.startswith("nats-server: "), line
    line = line[len("nats-server: "):].replace(CORPUS + os.sep, "")
    if re.fullmatch(r"configuration file \S+\.conf is valid", line):
        return "valid"
    return line


def where_go_says(name: str, message: str):
    """(file, line, column or None) of Go's error, or None if it gives none."""
    m = GO_AT_RE.match(message)
    if m:
        line, col = int(m.group("line")), int(m.group("col"))
        if line == 1:
            col += 1  # Go counts from 0 on the first line only
        return os.path.join(CORPUS, m.group("file")), line, col or None
    m = GO_LINE_RE.match(message)
    if m:
        path = os.path.join(CORPUS, m.group("inc") or name)
        return path, int(m.group("line") or m.group("vline")), None
    return None


BROKEN = [n for n in NAMES if recorded(n, "go2.15") != "valid"]


def test_the_corpus_has_valid_and_broken_files():
    assert len(BROKEN) >= 25 and len(NAMES) - len(BROKEN) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_check_config_exit_status_agrees_with_go(kind, name):
    path = os.path.join(CORPUS, name)
    expected = recorded(name, kind)
    r = run_kind(kind, "-t", "-c", path)
    assert "Traceback" not in r.stderr
    if kind != "gnatsd":
        # The oracle: the first line still says what this Go server says.
        assert go_answer(r.stderr) == expected
    assert r.returncode == (0 if expected == "valid" else 1), r.stderr
    if expected == "valid":
        assert r.stderr.startswith("nats-server: configuration file %s is valid" % path)


@pytest.mark.parametrize("name", BROKEN)
def test_error_names_the_file_and_line_go_names(name):
    path = os.path.join(CORPUS, name)
    r = run_kind("gnatsd", "-t", "-c", path)
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    where = where_go_says(name, recorded(name, "gnatsd"))
    ours = header(name).group("ours")
    if ours:
        # A deliberate difference, recorded with its reason: gnatsd.py
        # points at the cause (the opening quote, the key without a value)
        # where Go names the end of the file or the next token.
        line_no, col = (int(x) for x in ours.split(":"))
        where = (path, line_no, col)
    if where is None:
        assert CORPUS + os.sep in line, "Go gives no position; ours must name the file"
        return
    m = OUR_AT_RE.match(line)
    assert m, "no file:line in %r" % line
    file, lineno, col = where
    ours = (os.path.normpath(m.group("file")), int(m.group("line")))
    assert ours == (file, lineno), "Go: %s, ours: %s" % (recorded(name, "gnatsd"), line)
    if col is not None:
        assert m.group("col") is not None and int(m.group("col")) == col, (
            "Go: %s, ours: %s" % (recorded(name, "gnatsd"), line))


def test_go_counts_columns_from_0_on_the_first_line(kind, tmp_path):
    # The same bad value at the same column, on line 1 and on line 2: Go's
    # lexer counts columns from the newline before, so line 1's start at 0
    # (and gnatsd.py says what Go says).
    first = tmp_path / "first.conf"
    first.write_text('   port: "4222"\n')
    second = tmp_path / "second.conf"
    second.write_text('\n   port: "4222"\n')
    r = run_kind(kind, "-t", "-c", str(first))
    assert one_line(r.stderr).startswith("nats-server: %s:1:3: " % first)
    r = run_kind(kind, "-t", "-c", str(second))
    assert one_line(r.stderr).startswith("nats-server: %s:2:4: " % second)
