# Two commands for a fresh machine (see README):
#   make lessons   create .venv, install, execute every notebook in place (outputs and figures kept)
#   make test      create .venv, install, run the unit tests and every notebook under nbval
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
# idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning threads slow every other process
export OMP_WAIT_POLICY := PASSIVE

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install lessons test unit notebooks lab bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
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
	$(BIN)/python -m pytest -q tests

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
