# The two commands a newcomer needs:  `make dev`  and  `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: dev demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/cliplog dev $(ARGS)

demo: $(STAMP)
	$(VENV)/bin/cliplog dev --demo $(ARGS)

test: $(STAMP)
	scripts/test $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python -m bench.eventlog_bench $(ARGS)
	$(VENV)/bin/python -m bench.pipeline_bench $(ARGS)
	$(VENV)/bin/python -m bench.metrics_bench $(ARGS)
	$(VENV)/bin/python -m bench.dispatch_bench $(ARGS)
	$(VENV)/bin/python -m bench.storage_client_bench $(ARGS)
	$(VENV)/bin/python -m bench.storage_bench $(ARGS)

clean:
	rm -rf $(VENV) .cliplog .pytest_cache
