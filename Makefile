# The two commands the README promises, on a fresh machine:
#   make tutorial   create .venv, then execute every notebook (executed copies land in outputs/)
#   make test       create .venv, then run ruff and the test suite (unit tests + every notebook + the book)
#   make book       render the executed notebooks, the guide and the glossary as a static site (build/book)
# The offline data mirror is read from $EP_DATA_DIR (default: ../shared/data, beside this repo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= outputs
export EP_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: tutorial test book lab clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,models,notebooks,test,docs]"
	touch $@

tutorial: $(BIN)/.installed
	mkdir -p $(OUT)
	for nb in notebooks/[0-9][0-9]_*.ipynb; do \
		$(BIN)/papermill --cwd notebooks $$nb $(OUT)/$$(basename $$nb) -p results_dir $(abspath $(OUT))/results || exit 1; \
	done
	@echo "executed notebooks and results are in $(OUT)/"

test: $(BIN)/.installed
	$(BIN)/ruff check ep tests notebooks benchmarks
	$(BIN)/python -m pytest --durations=15
	EP_BOOK_TEST=1 $(BIN)/python -m pytest -q tests/book   # the rendered book, from the notebooks just executed

book: $(BIN)/.installed
	@test -n "$$(ls $(OUT)/[0-9][0-9]_*.ipynb 2>/dev/null)" || $(MAKE) tutorial
	$(BIN)/python docs/build_book.py $(OUT) build/book

lab: $(BIN)/.installed
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) $(OUT)
