# Set-up and the two everyday commands: `make demo` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test data setup clean

$(STAMP): pyproject.toml scripts/setup-venv.sh scripts/peers.txt
	scripts/setup-venv.sh
	touch $(STAMP)

setup: $(STAMP)

data:
	@scripts/install-data.sh

demo: $(STAMP) data
	$(VENV)/bin/mlwarden assess --output assessment

test: $(STAMP) data
	$(VENV)/bin/python -m pytest

clean:
	rm -rf assessment .pytest_cache
