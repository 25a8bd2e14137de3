# The two commands of the README. Both install everything they need into ./.venv first.
.PHONY: install dev demo test test-all lint

install:
	scripts/install.sh

dev:
	scripts/install.sh --dev

demo: install
	.venv/bin/qwen2-edge demo

test: dev
	.venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

test-all: dev
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: dev
	.venv/bin/ruff check qwen2_edge tests benchmarks scripts
