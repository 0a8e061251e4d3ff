# Two commands for a fresh machine (see README):
#   make lessons   create .venv, install, execute every notebook in place (outputs and figures kept)
#   make test      create .venv, install, run the unit tests and every notebook under nbval
PYTHON ?= python3
# Where torch comes from. Empty: PyPI, which on Linux x86 gives the CUDA build (several GB; what the GPU checks
# need). CPU-only machines: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (about 200 MB).
TORCH_INDEX ?=
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
# OMP_WAIT_POLICY is left at OpenMP's default (a waiting thread spins briefly, then sleeps). PASSIVE, set here
# until 2026-12-04, made every parallel operation wake a sleeping thread: on a quiet 2-core AMD EPYC a GRPO round
# took 1.7x as long, a training step 1.33x and an int8 decode step 3x (docs/benchmarks.md, "OpenMP's wait policy").

# the lessons in order, then the exercise solutions (each runs in seconds; they import no lesson artefacts)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)) $(sort $(wildcard notebooks/solutions/[0-9][0-9]_*.ipynb))

.PHONY: install lessons test unit unit-cpus notebooks lab bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned (an unpinned one could be a newer release); TORCH_INDEX picks the CPU build
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

lessons: install
	@mkdir -p artifacts/figures
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; start=$$(date +%s); \
		$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
		echo "   done in $$(( $$(date +%s) - start )) s"; \
	done
	$(BIN)/python -m doge_from_scratch.figures notebooks artifacts/figures

unit: install
	$(BIN)/ruff check doge_from_scratch tests notebooks/_src
	$(BIN)/ruff check $(NOTEBOOKS)
	$(BIN)/python -m pytest -q tests

# The unit tests under other ATen CPU kernels and thread counts (CI runs this after `make test`): float32
# rounding differs between AVX-512, AVX2 and plain C kernels, so a tolerance tuned to one machine fails here.
# ATEN_CPU_CAPABILITY names x86 kernels; elsewhere ATen ignores it and the thread counts still differ.
CPU_SETTINGS := default:1 avx2:2

unit-cpus: install
	@for setting in $(CPU_SETTINGS); do \
		cap=$${setting%%:*}; threads=$${setting##*:}; \
		echo "== unit tests with ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads"; \
		ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads DOGE_CHECKS_JSON=.ci/checks-$$cap-$${threads}threads.jsonl \
			$(BIN)/python -m pytest -q -p no:cacheprovider tests || exit 1; \
	done

notebooks: install
	$(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider $(NOTEBOOKS)

test: unit notebooks

lab: install
	$(BIN)/jupyter lab notebooks/

bench: install
	$(BIN)/python -m doge_from_scratch.bench decode
	$(BIN)/python -m doge_from_scratch.bench train
	$(BIN)/python -m doge_from_scratch.bench dma

clean:
	rm -rf $(VENV) artifacts .pytest_cache
