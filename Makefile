# The two set-up commands of the README:  `make app`  and  `make test`.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: app test deps sysdeps bench

deps:
	$(PYTHON) -m pip install -q -r requirements.txt

# Debian packages the tests need: a real PostgreSQL server and a real Chromium for Playwright.
sysdeps:
	@if ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql chromium fonts-dejavu-core >/dev/null; \
	fi

app: deps
	$(PYTHON) launch.py $(ARGS)

test: deps sysdeps
	$(PYTHON) -m pytest $(PYTEST_ARGS)

bench: deps
	mkdir -p bench/out
	$(PYTHON) -m bench.click_latency --json bench/out/click_latency.json
	$(PYTHON) -m bench.triage --json bench/out/triage.json
	$(PYTHON) -m bench.db --json bench/out/db.json
