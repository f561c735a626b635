# genq: the two README commands are `make demo` and `make test`.
# uv is installed on first use (a fresh machine has only python3 and pip).

UV := python3 -m uv
PYTEST_ARGS ?=
#: pytest-xdist processes: the e2e tests mostly wait on the processes they start
PYTEST_WORKERS ?= 3

.PHONY: demo test install uv services lint bench

demo: install  ## install, then run API + worker + Flower and a text and an image job
	$(UV) run genq dev

test: install services  ## install, start Redis/PostgreSQL if needed, run the whole suite
	$(UV) run pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

install: uv
	$(UV) sync --frozen --compile-bytecode

uv:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv

services:
	@bash .ci/services

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
