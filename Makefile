# Set-up and everyday commands. `make serve` and `make test` work on a fresh clone with only
# Python 3.11+ installed: the first run creates .venv and installs the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
ROOT ?= feature_store
HOST ?= 127.0.0.1
PORT ?= 8001
WORKERS ?= 1
DEMO_MARKER := $(ROOT)/registry/content/movie_genres.json

.PHONY: install demo serve test lint bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "sqlstore needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

$(DEMO_MARKER): $(INSTALLED)
	$(BIN)/sqlstore demo --root $(ROOT)

demo: $(INSTALLED)
	$(BIN)/sqlstore demo --root $(ROOT)

serve: $(DEMO_MARKER)
	$(BIN)/sqlstore serve --root $(ROOT) --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: $(INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff format --check sqlstore tests bench
	$(BIN)/ruff check sqlstore tests bench

bench: $(INSTALLED)
	$(BIN)/python bench/bench_serving.py

clean:
	rm -rf $(VENV) $(ROOT) .pytest_cache
