"""Coverage-guided fuzzing of the config lexer/parser with atheris (optional).

Not collected by pytest and not in tests/requirements.txt: atheris is a
compiled package that needs a matching CPython.  With it installed
(`.venv/bin/pip install atheris`):

    .venv/bin/python tests/fuzz/atheris_config.py -max_total_time=600

Seeds are a temporary copy of tests/conf_corpus.  The property is the one of
test_fuzz_config.py: `parse_config_text` and `options_from_config` raise
nothing but ConfigError, and a ConfigError names its line (except the
few errors about the file or the merged options as a whole).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from conftest import import_gnatsd  # noqa: E402

g = import_gnatsd()
# gnatsd is loaded from its path (not through the import hook that
# instrument_imports watches), so instrument the loaded code instead.
atheris.instrument_func(g.parse_config_text)
for _obj in list(vars(g).values()):
    if callable(_obj) and getattr(_obj, "__module__", None) == "gnatsd":
        for _fn in ([_obj] if not isinstance(_obj, type) else list(vars(_obj).values())):
            if hasattr(_fn, "__code__"):
                atheris.instrument_func(_fn)

from test_fuzz_config import check_text  # noqa: E402

TMP = tempfile.mkdtemp(prefix="atheris-config-")


def one_input(data: bytes):
    check_text(data.decode("utf-8", "replace"), TMP)


def main():
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        # libFuzzer writes new inputs into its corpus directory: seed a
        # temporary copy of tests/conf_corpus, never the real one.
        corpus = os.path.join(TMP, "corpus")
        shutil.copytree(os.path.join(os.path.dirname(HERE), "conf_corpus"), corpus)
        argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
