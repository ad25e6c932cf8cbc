# The two commands the README promises, on a fresh machine:
#   make tutorial   create .venv, then execute every notebook (executed copies land in outputs/); every failure is
#                   reported at the end, and the exit code is non-zero if any notebook failed
#   make test       create .venv, then run ruff and the test suite (unit tests + every notebook + the book)
#   make test-fast  ruff and the unit tests without notebooks, model loads, the browser or the online stand-in
#                   (the edit-test loop: about a minute)
#   make book       render the executed notebooks, the guide and the glossary as a static site (build/book)
#   make slides     the executed notebooks as reveal.js decks for the room (build/slides; SLIDES_LIBS=node_modules
#                   for a room without internet, see docs/build_slides.py)
#   make paper      every notebook at paper scale (GPU, internet, HF_TOKEN) -> outputs/paper_table.md
# Data: the offline mirror in $EP_DATA_DIR when it names a folder (default: ../shared/data, if it exists);
# otherwise every loader streams its upstream source.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= outputs
# pytest-xdist workers for make test, each on its share of the cores (each loads its own models: ~4 GB of RAM apiece)
TEST_WORKERS ?= 2
ifeq ($(origin EP_DATA_DIR), undefined)
ifneq ($(wildcard ../shared/data),)
export EP_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: tutorial test test-fast book slides lab lock clean paper

# the exact tested set (requirements-lock.txt), then this package on top of it without touching it
$(BIN)/.installed: pyproject.toml requirements-lock.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (transformers 5 requires it): make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

lock: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[cpu,models,sae,notebooks,test,docs]"
	{ sed -n '1,3p' requirements-lock.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^ep-tutorial'; } > requirements-lock.new
	mv requirements-lock.new requirements-lock.txt

tutorial: $(BIN)/.installed
	mkdir -p $(OUT)
	@failed=""; for nb in notebooks/[0-9][0-9]_*.ipynb; do \
		echo "== $$nb"; \
		$(BIN)/papermill --cwd notebooks $$nb $(OUT)/$$(basename $$nb) -p results_dir $(abspath $(OUT))/results \
			|| failed="$$failed $$(basename $$nb)"; \
	done; \
	echo "executed notebooks and results are in $(OUT)/"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed (each executed copy in $(OUT)/ shows its error)"; exit 1; fi

test: $(BIN)/.installed
	$(BIN)/ruff check ep tests notebooks benchmarks
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

test-fast: $(BIN)/.installed
	$(BIN)/ruff check ep tests notebooks benchmarks
	$(BIN)/python -m pytest -q -m "not notebook and not model and not slow and not online and not book"

book: $(BIN)/.installed
	@test -n "$$(ls $(OUT)/[0-9][0-9]_*.ipynb 2>/dev/null)" || $(MAKE) tutorial
	$(BIN)/python docs/build_book.py $(OUT) build/book

slides: $(BIN)/.installed
	@test -n "$$(ls $(OUT)/[0-9][0-9]_*.ipynb 2>/dev/null)" || $(MAKE) tutorial
	$(BIN)/python docs/build_slides.py $(OUT) build/slides $(if $(SLIDES_LIBS),--libs $(SLIDES_LIBS))

# every notebook at its paper-scale parameters (the paper: / paper scale: comments of its parameter cell), then
# $(OUT)/paper_table.md: the paper's headline claims against this run. Needs one GPU, internet (the Pile, the hub;
# the offline mirror is not used) and HF_TOKEN for the gated Gemma-2 models.
paper: $(BIN)/.installed
	env -u EP_DATA_DIR $(BIN)/python -m ep.show.paper_table --out $(OUT)/paper --table $(OUT)/paper_table.md

lab: $(BIN)/.installed
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) $(OUT)
