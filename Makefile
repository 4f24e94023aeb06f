# Shortcuts for the two README commands (dev.py needs nothing but Python 3.11+).
.PHONY: run test lint
run:
	python3 dev.py run
test:
	python3 dev.py test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
