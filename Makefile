# The two commands a new user needs:
#   make run    set up, generate the embedded default model, start the stack, stream audio
#   make test   set up (incl. the system packages the tests use) and run lint, types, tests
.PHONY: run test lint typecheck proto setup

setup:
	scripts/setup.sh

run: setup
	.venv/bin/a2f-demo

lint: setup
	.venv/bin/ruff check .

typecheck: setup
	.venv/bin/mypy

proto: setup
	scripts/gen-proto.sh

test: setup
	scripts/install-system-deps.sh
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/pytest
