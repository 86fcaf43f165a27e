# Tunesmith: `make run` opens the app, `make test` runs the whole suite.
# Both create the virtual environment and install everything on first use, from the lock
# (requirements/lock.txt). Every target calls scripts/bootstrap.py, the same entry point that
# works without make (Windows: `py scripts/bootstrap.py run`).
#   make run TORCH="torch==2.13.0 --index-url <PyTorch CUDA index>"   picks the PyTorch build
#   make lock                                                          refreshes the lock
#   make bundle                        builds the desktop bundle dist/tunesmith/ (docs/packaging.md)
PYTHON ?= python3
export TORCH VENV

.PHONY: setup run demo test lint lock clean bundle

# bundle: dist/tunesmith/, the desktop bundle (docs/packaging.md)
setup run demo lint lock clean bundle:
	$(PYTHON) scripts/bootstrap.py $@

test:
	$(PYTHON) scripts/bootstrap.py test
