# The two commands of the README:  `make demo`  and  `make test`.
# Each creates .venv on first use (torch first, pinned: a looser spec pulls a multi-GB CUDA build here).
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
export TOKENIZERS_PARALLELISM ?= false
export PATH := $(CURDIR)/.ci/bin:$(PATH)

.PHONY: install demo test test-nbs test-py readme check-sync clean

$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

## Fine-tune the offline default model on the bundled textile set, evaluate, report.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/clip-workbench demo

## Every notebook (slow cells skipped) and the pytest suite.
test: install test-nbs test-py

test-nbs: install
	HF_HUB_OFFLINE=1 $(BIN)/nbdev_test --n_workers 2 --timing

test-py: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

## README.md from nbs/index.ipynb alone (uses .ci/bin/quarto when Quarto itself is absent).
readme: install
	rm -rf _readme && mkdir _readme && cp nbs/index.ipynb nbs/_quarto.yml nbs/nbdev.yml _readme/
	$(BIN)/nbdev_readme --path _readme; rc=$$?; rm -rf _readme; exit $$rc

## Fail when the notebooks and the package or README disagree.
check-sync: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(MAKE) --no-print-directory readme
	@drift=$$(git status --porcelain -- clip_workbench nbs README.md); \
	if [ -n "$$drift" ]; then echo "Out of sync with the notebooks (run nbdev_export, nbdev_clean, make readme and commit):"; echo "$$drift"; git --no-pager diff --stat; exit 1; fi

clean:
	rm -rf $(VENV) _proc _docs

## The docs site in _docs/, offline and without Quarto: nbdev_proc_nbs, then Sphinx + MyST-NB (saved outputs only).
## With Quarto installed, nbdev_docs still builds nbdev's standard site from nbs/_quarto.yml.
.PHONY: docs docs-deps docs-serve test-docs clean-docs
docs: install
	$(BIN)/python nbs/_sphinx/build_docs.py

## Debian's chromium for tests/test_docs.py (apt-get; CI runs as root). Never fatal: the test says what is missing.
docs-deps:
	@if [ -x /usr/bin/chromium ] || [ -n "$$CHROMIUM" ]; then exit 0; fi; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	echo "docs-deps: installing Debian's chromium for the docs browser test"; \
	($$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null) \
	  || echo "docs-deps: could not install chromium; tests/test_docs.py will fail until it is installed (or CHROMIUM=/path/to/chromium)"

## Serve the built site on http://127.0.0.1:8000 (Ctrl-C stops it).
docs-serve:
	@test -f _docs/index.html || $(MAKE) --no-print-directory docs
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory _docs 8000

## The site in headless Chromium: every page, the sidebar, links, images, search, screenshots (_docs_screenshots/).
test-docs: docs docs-deps
	$(BIN)/pytest tests/test_docs.py -q

# make test's pytest run includes tests/test_docs.py (which builds the site when absent): bring in Chromium first.
test-py: docs-deps

## Remove the docs build: nbdev's _proc/, the site, its intermediate notebooks and the test's screenshots.
clean-docs:
	rm -rf _proc _docs _docs_build _docs_screenshots
