# Two entry points: `make demo` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv proto demo demo-relay host-deps test test-fast lint bench clean

venv: $(STAMP)

# The AgentService code generated from relay/agent/proto/agent.proto (not committed; importing
# relay.agent.proto also generates it when missing or stale).
proto: venv
	$(PY) -m relay.agent.proto

# Re-install whenever pyproject.toml changes, so `make test` always runs against what is declared.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,master]'
	touch $(STAMP)

# The whole loop on this machine (master_api/demo): the master deploys the relay through Ansible
# to two podman hosts (a core and an edge), a completion streams through them, a config change
# is applied hot under a running stream, then rolled back. It sets itself up: apt packages (as
# root), the venv with the ansible and demo extras, the hosts' image. DEMO_ARGS=--keep leaves
# the fleet running.
demo: host-deps venv-ansible molecule-image
	$(ANSIBLE_ENV) $(PY) -m master_api.demo $(DEMO_ARGS)

# The relay alone, in seconds: origin, core and edge as local processes, one streamed completion.
demo-relay: venv
	$(PY) -m relay.demo

# Debian packages the Ansible side needs here (podman hosts): installed when missing.
host-deps:
	@missing=""; for tool in podman runc debootstrap; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; apt-get update -qq && apt-get install -y -qq$$missing; fi

test: venv proto
	$(PY) -m pytest -q

test-fast: venv proto
	$(PY) -m pytest -q -m "not slow" -x

lint: venv proto
	$(PY) -m ruff check relay master_api tests bench
	$(PY) -m ruff format --check relay master_api tests bench
	$(PY) -m mypy
	$(MAKE) --no-print-directory audit

bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- Ansible (issue 7) ----------------------------------------------------------------------
# The Ansible side: the [ansible] extra, the molecule image (podman, runc, debootstrap from apt;
# .ci/run installs them), lint, sanity and the collection artifact. `make test` runs
# tests/ansible too once the extra is installed; test-ansible runs only those.
ANSIBLE_STAMP := $(VENV)/.installed-ansible
ANSIBLE_ENV   := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: venv-ansible molecule-image test-ansible lint-ansible sanity-ansible collection

venv-ansible: $(ANSIBLE_STAMP)

$(ANSIBLE_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,master,ansible,demo]'
	touch $@

molecule-image:
	bash molecule/image/build.sh

test-ansible: venv-ansible molecule-image
	$(ANSIBLE_ENV) AICDN_REQUIRE_MOLECULE=1 $(PY) -m pytest -q tests/ansible

lint-ansible: venv-ansible
	$(ANSIBLE_ENV) ansible-lint --offline --profile production

sanity-ansible: venv-ansible
	$(ANSIBLE_ENV) bash collections/sanity.sh

collection: venv-ansible
	$(ANSIBLE_ENV) bash collections/build.sh
# --- end Ansible ----------------------------------------------------------------------------

# --- Web console (issue 9) ------------------------------------------------------------------
# The Vue 3 console the master serves at /ui: built from web/ into web/dist (not committed)
# with the npm registry's packages pinned by web/package-lock.json. `make test` and `make demo`
# build it first; the browser tests (tests/ui) need the [ui] extra and Debian's chromium.
UI_STAMP := $(VENV)/.installed-ui
WEB_SOURCES := web/package.json web/package-lock.json web/index.html web/vite.config.js \
	$(shell find web/src -type f 2>/dev/null)

.PHONY: web venv-ui test-ui

web: web/dist/index.html

web/dist/index.html: $(WEB_SOURCES)
	cd web && npm ci --no-audit --no-fund && npm run build

venv-ui: $(UI_STAMP)

$(UI_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,master,ui]'
	touch $@

test-ui: venv-ui proto web
	$(PY) -m pytest -q tests/ui

test test-fast demo: web
# --- end Web console ------------------------------------------------------------------------
# --- Reliability (issue 10) -----------------------------------------------------------------
# make test runs tests/fuzz with a small derandomized budget; `make fuzz` runs the same tests
# with AICDN_FUZZ_SCALE times the examples, random seeds. `make soak` runs bench/soak.py
# (several minutes of streams, aborts and reloads; prints RSS/fd/gauge/task figures).
.PHONY: fuzz soak audit

FUZZ_SCALE ?= 50
SOAK_ARGS  ?= --duration 240

fuzz: venv proto
	AICDN_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

soak: venv proto
	$(PY) -m bench.soak $(SOAK_ARGS)

# pip-audit asks a vulnerability service about every installed distribution. Where none is
# reachable (an offline machine) it is skipped with a note; a vulnerability found fails.
audit: venv
	@out=$$($(PY) -m pip_audit --skip-editable --progress-spinner off 2>&1); rc=$$?; \
	if [ $$rc -ne 0 ] && echo "$$out" | grep -qE 'ConnectionError|NameResolution|Max retries|timed out'; then \
	  echo "$$out" | tail -1; \
	  echo "pip-audit: skipped, no vulnerability service reachable (offline)"; exit 0; \
	fi; echo "$$out"; exit $$rc
# --- end Reliability ------------------------------------------------------------------------
