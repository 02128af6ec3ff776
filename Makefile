# The two commands a newcomer needs: `make run` and `make test`.
# Both set up everything themselves on a fresh Debian machine (python3, pip,
# node/npm and apt-get are all that is assumed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test setup system-deps protos stubs lint bench clean

# setuptools says, at every editable install, that folders named like a package may
# shadow it; ours live under service/, clients/ and protos/, so the note is noise to a
# newcomer (every other build warning still shows).
$(STAMP): export PYTHONWARNINGS := ignore:Editable installation.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# From Debian's packages: redis-server backs the shared rate limiter tests, jq the grpcurl
# kit; podman (with runc; catatonit for its pods' pause image) builds and runs the image
# and plays the manifests, mmdebstrap makes the image's local base, prometheus ships
# promtool for the alert rules. Each is COMMAND:PACKAGE; only missing ones are installed.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
SYSTEM_DEPS := redis-server:redis-server jq:jq podman:podman runc:runc catatonit:catatonit \
	mmdebstrap:mmdebstrap promtool:prometheus
system-deps:
	@missing=""; \
	for dep in $(SYSTEM_DEPS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian's packages"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

setup: $(STAMP) $(NODE_STAMP)

## Run the service on the embedded local KMS (moto), on 127.0.0.1:50051.
run: $(STAMP)
	$(VENV)/bin/kms-policy-service --local-kms --log-format text

## Run the whole test suite (unit, integration, grpcurl, node, buf, manifests).
test: setup system-deps
	$(PY) -m pytest

## Regenerate the committed Python stubs and the grpcurl protoset from protos/.
protos: $(STAMP)
	$(PY) protos/generate.py

## Generate TypeScript, Go and Java stubs into protos/gen (Go/Java need buf.build access).
stubs: setup
	cd protos && ../node_modules/.bin/buf generate

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd protos && ../node_modules/.bin/buf lint

bench: setup system-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
