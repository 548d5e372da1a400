# The two commands a new user needs:
#   make run          set up, generate the embedded default model, start the server, stream audio
#   make test         set up (incl. the Debian packages the tests use) and run lint, types, tests
# And one more for the deployment artefacts (needs root for apt and dockerd):
#   make test-deploy  build the three images, bring up the CPU compose stack, stream through it
.PHONY: run test test-deploy lint typecheck proto setup

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

test-deploy: setup
	scripts/ci-deploy.sh
