# GNU make. `make test` creates the virtualenv on first use, installs the package in
# (compat) editable mode so twistd sees twisted/plugins/, then lints (ruff, mypy) and
# runs trial under coverage. Tool settings live in pyproject.toml.

VENV := .venv
PY := $(VENV)/bin/python
# Directories to lint; those that do not exist (yet) are skipped.
LINT_DIRS := $(wildcard viworks tests twisted bench console)

.PHONY: all test lint mypy-pending tools run clean bench bench-full constraints console-vendor

all: test

# Compat editable mode: a PEP 660 editable install hides twisted/plugins from twistd.
# constraints.txt pins the runtime dependencies: the tests run on the set deployments get.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip -c constraints.txt
	$(PY) -m pip install -q -e '.[test]' -c constraints.txt --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

# The real tools the verbs drive, for the tests that run them (program:package):
# htpasswd for the panel verbs, SoftEther and fwknopd for the VPN verbs,
# systemd-journal-remote to build a real journal file for journalctl, nginx and its
# stream module to test agents behind a proxy (tests/test_nginx.py), and Chromium for
# the browser tests. .ci/install-tools installs only what is missing (as root), starts
# no service and leaves none enabled. `make run` does not need any of them: verbs whose
# tool is missing answer TOOL_NOT_FOUND, and `viworks dev` lists them.
TOOLS := htpasswd:apache2-utils vpncmd:softether-vpncmd vpnserver:softether-vpnserver \
	fwknopd:fwknop-server systemd-journal-remote:systemd-journal-remote nginx:nginx \
	/usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream chromium:chromium
tools:
	@.ci/install-tools $(TOOLS)

# Trial's workers: 2 (this machine's cores). TRIAL_ARGS adds to or narrows the run,
# e.g. `make test TRIAL_ARGS=tests.backend`.
TRIAL_JOBS ?= 2
TRIAL_ARGS ?= tests
# Every process coverage measures writes its data next to this one (parallel mode).
export COVERAGE_FILE := $(CURDIR)/.coverage

# ruff and mypy (settings in pyproject.toml), both run; fails if either finds something.
LINT = status=0; \
	$(VENV)/bin/ruff check $(LINT_DIRS) || status=1; \
	$(VENV)/bin/mypy || status=1

lint: $(VENV)/.installed
	@$(LINT); exit $$status

# What mypy still finds in the modules pyproject.toml lists as not yet clean.
mypy-pending: $(VENV)/.installed
	@$(PY) etc/mypy_pending.py

# Lint and tests both run, and the target fails if either failed; the line coverage of
# viworks/ (every process the tests start included) is printed last.
test: $(VENV)/.installed tools
	@$(LINT); \
	rm -f .coverage .coverage.*; \
	$(VENV)/bin/coverage run -m twisted.trial -j$(TRIAL_JOBS) $(TRIAL_ARGS) || status=1; \
	$(VENV)/bin/coverage combine -q \
		&& echo "line coverage of viworks/: $$($(VENV)/bin/coverage report --format=total)%" \
		|| status=1; \
	exit $$status

# Benchmarks (bench/, docs/benchmarks.md); not part of `make test`.
bench: $(VENV)/.installed
	$(PY) -m bench.run $(BENCH_ARGS)

bench-full: $(VENV)/.installed
	$(PY) -m bench.run --full $(BENCH_ARGS)

# Regenerate constraints.txt from the venv (after changing dependencies, or after
# upgrading the venv's packages and running the tests on them).
constraints: $(VENV)/.installed
	$(PY) etc/constraints.py > constraints.txt.new && mv constraints.txt.new constraints.txt

# The web console's libraries (viworks/console/static/vendor/, committed): refreshed from
# the npm registry at the versions console/package-lock.json pins. Needs npm; nothing
# of Node.js is needed to install or run viworks.
console-vendor:
	cd console && npm ci --ignore-scripts --no-audit --no-fund
	python3 console/vendor.py

# The local stack (no root, no system packages): see `viworks dev --help` for its ports.
run: $(VENV)/.installed
	$(VENV)/bin/viworks dev --dir .dev

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp* .dev .hypothesis .ruff_cache .mypy_cache \
		.coverage .coverage.* htmlcov
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
