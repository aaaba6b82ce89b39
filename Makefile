# gnatsd.py: a NATS server in one stdlib-only Python file.
#
# Only `dev` installs anything, and only into .venv (test-only packages
# pinned in tests/requirements.txt); `test`, `unit` and friends depend on it.
# Nothing is installed globally.
#
#   make test          whole suite, incl. the smoke run on every CPython 3.8-3.13
#   make unit          in-process tests only (layout, sublist, framing, conf, options), ~12 s
#   make test-pythons  protocol smoke with the server under each CPython 3.8-3.13
#   make bench         BENCH (default tests/bench.py) with $(BENCH_ARGS); writes tests/BENCH-RESULTS.md
#   make fuzz          each fuzzer in tests/fuzz for FUZZ_SECONDS (default 60; `make test`: 3 s each)
#   make footprint     time to ready, idle RSS, memory per idle conn: every CPython, Go beside
#   make soak          tests/soak.py: 10k held conns, 50k churn, 60 s mixed traffic (SOAK_ARGS)
#   make redteam       tests/test_redteam.py one at a time: attacks, canary p99 within 10x of Go 2.15
#   make dist          wheel and sdist of gnatsd.py into dist/, checked with twine
#   make lint          byte-compile gnatsd.py on the oldest supported Python (3.8)
#   make run           run the server with conf/default.conf
#   make docker        build the image from Dockerfile
#   make certs         regenerate the test certificates in tests/certs (openssl)
#   make clean         caches; `make distclean` also removes .venv

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
REQS := tests/requirements.txt
STAMP := $(VENV)/.requirements.stamp
# Four workers: the suite mostly waits on server processes (11 min -> 3 min).
PYTEST_ARGS ?= -n 4
BENCH ?= tests/bench.py
BENCH_ARGS ?=
SOAK_ARGS ?=
IMAGE ?= gnatsd-py
PYENV_ROOT ?= $(HOME)/.pyenv

# The oldest supported Python: a pyenv 3.8.x, else python3.8 on PATH.
PYTHON38 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.8.*/bin/python3) \
                        $(shell command -v python3.8 2>/dev/null))

# In-process tests (gnatsd's server/*_test.go): no server process, a few
# seconds in all (test_parser.py runs its transcripts against live servers).
UNIT_TESTS = $(wildcard tests/test_layout.py tests/test_sublist.py \
                        tests/test_framing.py tests/test_conf.py tests/test_options.py \
                        tests/test_readme.py)

.DEFAULT_GOAL := help
.PHONY: help dev test unit test-pythons bench footprint soak fuzz redteam dist lint run docker certs clean distclean

help:
	@sed -n 's/^#   make /  make /p' Makefile

dev: $(STAMP)

# The venv itself; pytest 9 needs Python >= 3.10 for it.
$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "make: the test venv needs Python >= 3.10; try 'make PYTHON=python3.12 test'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the requirements file is newer than the stamp.
$(STAMP): $(REQS) | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -r $(REQS)
	@touch $@

# One pytest run covers everything, tests/test_pythons.py included.
test: dev
	$(VPY) -m pytest $(PYTEST_ARGS)

unit: dev
	@test -n "$(UNIT_TESTS)" || { echo "make: no in-process tests yet" >&2; exit 1; }
	$(VPY) -m pytest $(PYTEST_ARGS) $(UNIT_TESTS)

test-pythons: dev
	$(VPY) -m pytest $(PYTEST_ARGS) tests/test_pythons.py

# The table (and its header: date, commit, machine, servers, load) also goes
# to $(BENCH_RESULTS), which is committed; tests/loadgen.c is compiled into
# bench-results/ on the way (bench.py skips the realistic rows without cc).
BENCH_RESULTS ?= tests/BENCH-RESULTS.md
bench: dev
	$(VPY) $(BENCH) --results $(BENCH_RESULTS) $(BENCH_ARGS)

# The hypothesis fuzzers in tests/fuzz (client and route protocol, config,
# sublist, monitor queries), FUZZ_SECONDS each (whole seconds); a failure is
# printed when found and the run goes on; summary lines are appended to
# $(FUZZ_RECORD), which tests/fuzz/RECORD.md quotes.
FUZZ_SECONDS ?= 60
FUZZ_RECORD ?= tests/fuzz/last-run.txt
fuzz: dev
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_KEEP_GOING=1 FUZZ_RECORD=$(FUZZ_RECORD) \
	  $(VPY) -m pytest -s -p no:cacheprovider --timeout=$$(( $(FUZZ_SECONDS) * 2 + 120 )) \
	  $(PYTEST_ARGS) tests/fuzz

# tests/footprint.py: a Markdown table on stdout (the README quotes it).
footprint: dev
	$(VPY) tests/footprint.py $(FOOTPRINT_ARGS)

# Loopback only, bounded (each phase has a deadline; --timeout 900 s in all);
# writes tests/SOAK-RECORD.md, which is committed.
soak:
	$(PYTHON) tests/soak.py $(SOAK_ARGS)

# The attacks of tests/test_redteam.py (also in `make test`), serially so
# gnatsd.py and Go 2.15 see the same machine: each canary's p50/p99 is
# printed, and gnatsd.py's p99 must stay within 10x of Go's (REDTEAM_COMPARE).
redteam: dev
	REDTEAM_COMPARE=1 $(VPY) -m pytest -s -p no:xdist -p no:cacheprovider tests/test_redteam.py

# The package is the one file (pyproject.toml: a py-module, no dependencies);
# setuptools from the venv, so no network is needed.
dist: dev
	rm -rf dist
	$(VPY) -m build --no-isolation --outdir dist .
	$(VPY) -m twine check --strict dist/*
	rm -rf build gnatsd_py.egg-info

lint:
	@test -n "$(PYTHON38)" || { echo "make: Python 3.8 not found (pyenv or python3.8 on PATH)" >&2; exit 1; }
	$(PYTHON38) -W error -m py_compile gnatsd.py
	@echo "gnatsd.py compiles on $$($(PYTHON38) -V 2>&1)"

run:
	$(PYTHON) gnatsd.py -c conf/default.conf

docker:
	docker build -t $(IMAGE) .

# Test certificates (tests/test_tls.py), committed so tests need no openssl:
# a CA; a server certificate for localhost, 127.0.0.1 and ::1; a client
# certificate whose email, DNS and URI SANs and subject feed verify_and_map;
# a route certificate for localhost and 127.0.0.1 that is both server and
# client (a route is each to its peer, and Go checks the usage); a server
# certificate for the wrong host; and a self-signed certificate no CA
# vouches for.  RSA 2048, valid for 100 years.
CERTS := tests/certs
CERT_DAYS := 36500
OPENSSL ?= openssl

certs:
	@mkdir -p $(CERTS)
	cd $(CERTS) && rm -f *.pem *.srl *.csr *.ext && \
	$(OPENSSL) req -x509 -newkey rsa:2048 -nodes -days $(CERT_DAYS) -sha256 \
	  -subj "/O=gnatsd.py/CN=gnatsd.py test CA" -keyout ca-key.pem -out ca.pem && \
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' > server.ext && \
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth,clientAuth\n' > route.ext && \
	printf 'subjectAltName=DNS:wrong.example.com\nextendedKeyUsage=serverAuth\n' > wrong.ext && \
	printf 'subjectAltName=email:alice@example.com,DNS:alice.example.com,URI:nats://alice.example.com\nextendedKeyUsage=clientAuth\n' > client.ext && \
	for name in server:/O=gnatsd.py/CN=localhost route:/O=gnatsd.py/CN=route \
	            wrong:/O=gnatsd.py/CN=wrong.example.com \
	            client:/C=US/O=gnatsd.py/OU=tests/CN=alice; do \
	  base=$${name%%:*}; subj=$${name#*:}; \
	  $(OPENSSL) req -newkey rsa:2048 -nodes -subj "$$subj" -keyout $$base-key.pem -out $$base.csr && \
	  $(OPENSSL) x509 -req -in $$base.csr -CA ca.pem -CAkey ca-key.pem -set_serial "0x$$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
	    -days $(CERT_DAYS) -sha256 -extfile $$base.ext -out $$base-cert.pem || exit 1; \
	done && \
	$(OPENSSL) req -x509 -newkey rsa:2048 -nodes -days $(CERT_DAYS) -sha256 \
	  -subj "/O=rogue/CN=rogue" -keyout rogue-key.pem -out rogue-cert.pem && \
	rm -f *.csr *.ext *.srl && ls

clean:
	rm -rf .pytest_cache __pycache__ tests/__pycache__ tests/fuzz/__pycache__ bench-results \
	  .hypothesis dist build gnatsd_py.egg-info .cache

distclean: clean
	rm -rf $(VENV)
