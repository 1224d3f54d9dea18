# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it (torch==2.13.0 first: an unpinned torch pulls CUDA wheels).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Data root: $WAVEXPORT_DATA if set, else ../shared/data when it exists (this workplace), else the user cache,
# where missing files are downloaded.
export WAVEXPORT_DATA ?= $(firstword $(wildcard $(abspath ../shared/data)))
RUN    ?= runs/quickstart
# CPU threads for every command of the demo (e.g. make demo THREADS=1 on a shared machine); empty: each command's
# default, chosen from the model's work per step (docs/CLI.md#threads).
THREADS ?=
TH      = $(if $(THREADS),--threads $(THREADS))

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,plot]'
	touch $@

demo: install
	$(BIN)/wavexport train psmnist --preset quick --out $(RUN) $(TH) $$([ -f $(RUN)/checkpoint.pt ] && echo --resume)
	$(BIN)/wavexport eval $(RUN) $(TH)
	$(BIN)/wavexport export $(RUN) $(RUN)/model.onnx $(TH)
	$(BIN)/wavexport sample $(RUN)/model.onnx --index 0 | $(BIN)/wavexport run $(RUN)/model.onnx --stream --every 196 $(TH)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
