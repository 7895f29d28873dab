# Two entry points: `make audit` runs the demo audit, `make test` runs the tests.
# Both create .venv from the pinned requirements when it is missing or stale.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: audit test lint dry-run clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

audit: $(STAMP)
	$(VENV)/bin/snakemake --cores $${CORES:-2}

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -n 2 --dist load

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n

clean:
	rm -rf results reports logs benchmarks/rules .snakemake
