# Engine install, demo, tests and lint; README.md and .ci/run use these same targets.
#   make install   venv (if missing) + torch (unless one is importable) + inr-engine[test], editable
#   make demo      install, then complete the shipped sample:  inr-engine demo
#   make test      install, then:  python -m pytest -q Testing
#   make lint      install, then:  ruff check .
# Variables: PYTHON (interpreter that creates the venv), VENV (venv folder), TORCH (pip spec
# installed only when no torch is importable, so an existing CUDA build is kept).
# No `playwright install`: the web tests drive Debian's /usr/bin/chromium (apt-get install chromium).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.inr-engine-installed

.PHONY: install demo test lint

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled when pyproject.toml changes; `make install` always reinstalls.
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test]"
	@touch $@

install: | $(PY)
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/inr-engine demo

# pytest exits 5 when it collects no tests: that is a failure too (and make fails on any non-zero).
test: $(STAMP)
	@$(PY) -m pytest -q Testing; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; fi; \
	exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check .
