# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)  # quick modes (any machine); full runs need a GPU, see each script's docstring
	mkdir -p runs/bench
	$(PY) experiments/bench_certify.py --quick --out runs/bench/bench_certify.json
	$(PY) experiments/bench_train.py --quick --out runs/bench/bench_train.json
	$(PY) experiments/bench_attack.py --quick --out runs/bench/bench_attack.json

clean:
	rm -rf $(VENV) runs
