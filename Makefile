# Entry points for people and CI. Every target that runs code first runs the
# idempotent set-up (system packages + .venv), which takes about a second when
# nothing changed. Tests start their own Mosquitto, PostgreSQL and Xvfb.

VENV := .venv
BIN := $(VENV)/bin

.PHONY: all setup test lint format bench demo clean distclean

all: test

setup:
	@bash scripts/setup.sh

lint: setup
	@echo "== ruff check"
	@$(BIN)/ruff check --quiet .
	@echo "== ruff format --check"
	@$(BIN)/ruff format --check --quiet .
	@echo "== mypy"
	@$(BIN)/mypy

test: lint
	@echo "== pytest"
	@$(BIN)/pytest -q

format: setup
	@$(BIN)/ruff check --quiet --fix .
	@$(BIN)/ruff format --quiet .

bench: setup
	@$(BIN)/python -m bench

# The door story (scripts/demo.py), then the same shop with history: its broker and
# cloud service again, six weeks of simulated traffic through the kiosks' protocol
# (`o2o-bridge simulate`), and the dashboard served until Ctrl-C.
DEMO_WEEKS ?= 6

demo: setup
	@$(BIN)/python scripts/demo.py
	@cd demo-run || exit 1; \
	py=../$(BIN)/python; \
	port=$$($$py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	mosq=$$(command -v mosquitto || echo /usr/sbin/mosquitto); \
	$$mosq -c broker/mosquitto.conf >>broker/mosquitto.log 2>&1 & broker=$$!; \
	../$(BIN)/o2o-bridge run --config bridge.toml --http 127.0.0.1:$$port >>bridge.log 2>&1 & bridge=$$!; \
	trap 'kill $$bridge $$broker 2>/dev/null; wait' EXIT; \
	trap 'exit 0' INT TERM; \
	$$py -c 'import itertools, socket, sys, time; [time.sleep(0.2) for _ in itertools.islice(iter(lambda: socket.socket().connect_ex(("127.0.0.1", int(sys.argv[1]))), 0), 150)]' $$port; \
	echo; echo "$(DEMO_WEEKS) weeks of the same shop's door traffic, sent as its kiosk would:"; \
	../$(BIN)/o2o-bridge simulate --config bridge.toml --weeks $(DEMO_WEEKS) --seed 1 && \
	echo "Dashboard with history: http://127.0.0.1:$$port/  (token in demo-run/dashboard.token; Ctrl-C stops)" && \
	wait $$bridge

# Caches and build leftovers; keeps .venv (use distclean to drop it too).
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
