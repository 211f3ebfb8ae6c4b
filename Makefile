# The two commands of the README: `make demo` (main job on defaults) and `make test` (test suite).
# Each creates the virtual environment it needs on first use, from the lock (constraints.txt): the exact
# versions the project is tested with. `make lock` refreshes the lock; `make test-latest` tries the newest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FACEPIPE_DATA ?= $(abspath ../shared/data)
export FACEPIPE_DATA
# Torch first and pinned: the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,openvino,hf
# Every extra that installs from PyPI alone (trt needs NVIDIA's index and a GPU: not locked here); the lock
# also pins $(INSIGHTFACE) itself, installed --no-deps as `make insightface` does.
LOCK_EXTRAS ?= dev,openvino,hf,onnxscript,insightface
LOCK ?= constraints.txt

# insightface (optional, the reference the parity tests compare with): its wheel requires opencv-python, a
# second cv2 that would clash with opencv-python-headless; so the extra `insightface` carries its real runtime
# dependencies and the wheel itself goes in with --no-deps, all from the lock. See README "insightface".
INSIGHTFACE ?= insightface==2.1

.PHONY: setup demo test test-all lock test-latest clean insightface

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip
	$(BIN)/python -m pip install -q -c $(LOCK) "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.installed

insightface: $(BIN)/.insightface

$(BIN)/.insightface: $(BIN)/.installed
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS),insightface]"
	$(BIN)/python -m pip install -q -c $(LOCK) --no-deps "$(INSIGHTFACE)"
	@# pip check names the one requirement left out on purpose (opencv-python); anything else fails the target
	@out=$$($(BIN)/python -m pip check 2>&1); \
	  bad=$$(echo "$$out" | grep -v -i -e '^insightface [0-9.]* requires opencv-python, which is not installed' \
	    -e '^No broken requirements'); \
	  if [ -n "$$bad" ]; then echo "pip check: $$bad"; exit 1; fi; echo "pip check: only opencv-python left out (intended)"
	$(BIN)/python -c "import importlib.metadata as m, cv2, insightface; \
	  from insightface.utils import face_align; from insightface.model_zoo import get_model; \
	  print('insightface', insightface.__version__, '| cv2', cv2.__version__, 'from', \
	  m.version('opencv-python-headless'), '(opencv-python-headless)')"
	touch $@

demo: setup
	$(BIN)/facepipe run -c pipeline.yaml

# the tests run with insightface installed (its parity checks are part of the suite; they skip without it)
test: $(BIN)/.insightface
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(BIN)/.insightface
	$(BIN)/python -m pytest -q

# Resolve everything afresh (no lock) in a scratch venv and write the exact versions to $(LOCK).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH)"
	.venv-lock/bin/python -m pip install -q ".[$(LOCK_EXTRAS)]"
	.venv-lock/bin/python -m pip install -q --no-deps "$(INSIGHTFACE)"
	{ echo "# The exact versions facepipe is tested with (pip constraints). Refresh: make lock"; \
	  echo "# Resolved $$(date -u +%Y-%m-%d) on $$(.venv-lock/bin/python -V), extras $(LOCK_EXTRAS)."; \
	  .venv-lock/bin/python -m pip --version | awk '{print "pip==" $$2}'; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i '^facepipe' | sed 's/+cpu$$//'; \
	} > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# Not gating: the newest versions PyPI resolves today, the default tests on them, and what moved vs the lock.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q "$(TORCH)"
	.venv-latest/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	.venv-latest/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' | sort > .venv-latest/freeze.txt
	@echo "versions that differ from $(LOCK) (< lock, > latest):"
	@grep '==' $(LOCK) | sort | diff - .venv-latest/freeze.txt | grep '^[<>]' || echo "  none"
	-.venv-latest/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .venv-lock .venv-latest runs .pytest_cache
