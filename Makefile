# GNU make. `make test` creates the virtualenv on first use, installs the package in
# (compat) editable mode so twistd sees twisted/plugins/, then lints and runs trial.

VENV := .venv
PY := $(VENV)/bin/python
# Directories to lint; those that do not exist (yet) are skipped.
LINT_DIRS := $(wildcard viworks tests twisted bench console)

.PHONY: all test lint tools run clean bench bench-full console-vendor

all: test

# Compat editable mode: a PEP 660 editable install hides twisted/plugins from twistd.
$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

# The real tools the verbs drive, for the tests that run them (command:package):
# htpasswd for the panel verbs, SoftEther and fwknopd for the VPN verbs, and
# systemd-journal-remote to build a real journal file for journalctl, and nginx to test
# agents behind a TLS-terminating proxy (tests/test_nginx.py).
TOOLS := htpasswd:apache2-utils vpncmd:softether-vpncmd vpnserver:softether-vpnserver \
	fwknopd:fwknop-server systemd-journal-remote:systemd-journal-remote nginx:nginx
tools:
	@missing=""; for t in $(TOOLS); do \
		command -v $${t%%:*} >/dev/null || [ -x /lib/systemd/$${t%%:*} ] || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_DIRS)

# Run both steps and fail if either failed, reporting both.
test: $(VENV)/.installed tools
	@status=0; \
	$(VENV)/bin/ruff check $(LINT_DIRS) || status=1; \
	$(PY) -m twisted.trial tests || status=1; \
	exit $$status

# Benchmarks (bench/, docs/benchmarks.md); not part of `make test`.
bench: $(VENV)/.installed
	$(PY) -m bench.run $(BENCH_ARGS)

bench-full: $(VENV)/.installed
	$(PY) -m bench.run --full $(BENCH_ARGS)

# The web console's libraries (viworks/console/static/vendor/, committed): refreshed from
# the npm registry at the versions console/package-lock.json pins. Needs npm; nothing
# of Node.js is needed to install or run viworks.
console-vendor:
	cd console && npm ci --ignore-scripts --no-audit --no-fund
	python3 console/vendor.py

run: $(VENV)/.installed tools
	$(VENV)/bin/viworks dev --dir .dev

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp* .dev .hypothesis .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f twisted/plugins/dropin.cache
