"""The README says what the code does (in-process).

* Every config key the README's "Keys read" list names is one the config
  reader takes (a key in CONFIG_KEYS or CONFIG_BLOCKS), and every key the
  reader takes is in the list (aliases included), so neither can drift.
* No block the README calls unimplemented is one the reader implements.
* Every config-file example in the README loads (the TLS ones with the test
  certificates of the same names), and each one it calls a cluster sets up
  a cluster.
* The README's first commands are the ones the brief promises.
"""
from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT, import_gnatsd

g = import_gnatsd()

README = os.path.join(ROOT, "README.md")
CERTS = os.path.join(ROOT, "tests", "certs")


@pytest.fixture(scope="module")
def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def paragraph(text: str, start: str) -> str:
    """The paragraph of `text` that begins with `start`."""
    at = text.index(start)
    end = text.find("\n\n", at)
    return text[at:end if end >= 0 else len(text)]


def code_blocks(text: str, tag: str = "") -> list:
    """The fenced blocks with this language tag ("" for none), in order."""
    blocks, current, current_tag = [], None, ""
    for line in text.splitlines(True):
        if line.startswith("```"):
            if current is None:
                current, current_tag = [], line[3:].strip()
            else:
                if current_tag == tag:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_keys_read_list_is_exactly_the_keys_the_reader_takes(readme):
    listed = set(re.findall(r"`([a-z_]+)`", paragraph(readme, "Keys read")))
    read = set(g.CONFIG_KEYS) | set(g.CONFIG_BLOCKS)
    assert listed - read == set(), "the README names keys the reader does not take"
    assert read - listed == set(), "the reader takes keys the README does not name"


def test_no_implemented_block_is_called_unimplemented(readme):
    said = set(re.findall(r"`([a-z_]+)`", paragraph(readme, "Errors name the file")))
    blocks = said - {"-t"}
    assert blocks, "the paragraph lists no blocks"
    assert blocks <= set(g.UNSUPPORTED_KEYS), blocks - set(g.UNSUPPORTED_KEYS)
    assert not blocks & (set(g.CONFIG_KEYS) | set(g.CONFIG_BLOCKS))


def test_every_config_example_loads(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(CERTS)              # server-cert.pem, ca.pem, route-cert.pem, ...
    monkeypatch.setenv("APP_PASSWORD", "example")
    # (Operator mode's example names an operator file and elided JWTs that
    # each deployment makes; test_operator.py loads real ones.)
    examples = [b for b in code_blocks(readme)
                if re.search(r"^\s*[a-z_]+\s*(?:[:=]|\{)", b, re.M) and "python3" not in b
                and "scenario" not in b and "resolver_preload" not in b]
    assert len(examples) >= 5, "fewer config examples than expected: %d" % len(examples)
    for k, text in enumerate(examples):
        path = tmp_path / ("example%d.conf" % k)
        path.write_text(text)
        opts = g.options_from_config(str(path))
        assert opts.warnings == [], (text, opts.warnings)
        if text.lstrip().startswith("cluster"):
            assert opts.cluster_port, text


def test_the_first_commands_run_the_server_and_the_tests(readme):
    first = code_blocks(readme, "sh")[0]
    assert first.splitlines()[0].startswith("python3 gnatsd.py")
    assert first.splitlines()[1].startswith("make test")
