# Two entry points: `make audit` runs the demo audit, `make test` runs the tests.
# Both create .venv from the pinned requirements when it is missing or stale.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: audit test lint dry-run check repair clean

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

# Snakemake does not rebuild a missing intermediate output whose results are present and newer ("Nothing to be
# done"): `make check` lists every expected output that is missing (exit 1 if any), `make repair` reruns the rules
# that write them (and, by their newer outputs, what depends on them). ARGS passes targets and options through, e.g.
# ARGS="--configfile my.yaml" or ARGS="reports/digits.html".
MISSING := $(VENV)/bin/snakemake --summary $(ARGS) 2>/dev/null | awk -F'\t' 'NR > 1 && $$5 == "missing"'

check: $(STAMP)
	@$(MISSING) | awk -F'\t' '{print "missing: " $$1 " (rule " $$3 ")"; n++} END {if (n) {print n " expected outputs are missing: make repair rebuilds them"; exit 1} print "every expected output is present"}'

repair: $(STAMP)
	@rules="$$($(MISSING) | awk -F'\t' '{print $$3}' | sort -u | tr '\n' ' ')"; \
	if [ -z "$$rules" ]; then echo "every expected output is present"; \
	else echo "rerunning: $$rules"; $(VENV)/bin/snakemake --cores $${CORES:-2} $(ARGS) --forcerun $$rules; fi

clean:
	rm -rf results reports logs benchmarks/rules .snakemake
