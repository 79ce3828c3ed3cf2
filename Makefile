# sigtrace: `make demo` and `make test` do everything on a fresh Debian 12 machine, installs included.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-bpfcc python3-venv linux-headers-amd64 runc nginx-light php-fpm strace wrk iproute2 procps bpfcc-tools

.PHONY: setup test demo clean bench

# Idempotent: apt only when a package is missing; the venv sees Debian's bcc through
# --system-site-packages (bcc is not on PyPI), pip installs the rest by name.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -ra tests

# Benchmarks (root, ~15 min on 2 cores; BENCH_* variables in bench/__main__.py): writes
# docs/benchmarks.md and docs/benchmarks.json. bpfcc-tools provides tcpstates, the baseline;
# py-spy (PyPI) profiles the report.
bench: setup
	test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy
	$(PY) -m bench

demo: setup
	.venv/bin/sigtrace lab --demo

clean:
	rm -rf $(VENV) build *.egg-info
