# The two commands a new user needs:
#   make run          set up, generate the embedded default model, start the server, stream audio
#   make test         set up (incl. the Debian packages the tests use) and run lint, types, tests
# And one more for the deployment artefacts (needs root for apt and dockerd):
#   make test-deploy  build the three images, bring up the CPU compose stack, stream through it
# Install checks (CI runs both; each makes its own throwaway venvs outside .venv):
#   make test-lowest  unit tests against the lowest dependency versions pyproject.toml allows
#   make test-wheel   build the wheel, install it outside the checkout, stand-ins, engine, stream
.PHONY: run test test-deploy test-lowest test-wheel lint typecheck proto setup

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

test-lowest:
	scripts/ci-lowest.sh

test-wheel:
	scripts/ci-wheel.sh
