# deid: two set-up commands, `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deid-installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1  # test peer; pins an old requests
	touch $@

install: $(STAMP)

# De-identify a short clip made from an image that ships with scikit-image (no shared data).
demo: $(STAMP)
	mkdir -p out
	$(BIN)/python -m deid.demo out/demo_input.mp4
	$(BIN)/deid run out/demo_input.mp4 -o out/demo.mp4 --contact-sheet out/demo.contact.png

# The whole suite: unit tests, real data, real MTCNN, end-to-end runs (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest

# The fast inner loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check deid workers tests bench
	$(BIN)/ruff format --check deid workers tests bench

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf out .pytest_cache .ruff_cache
