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

# The door story, then the same shop with weeks of simulated history, left running until
# Ctrl-C: the dashboard (address printed) and, on a machine with a display, the kiosk's
# window playing the demo codes through a simulated camera (scripts/demo.py).
DEMO_WEEKS ?= 6

demo: setup
	@$(BIN)/python scripts/demo.py --weeks $(DEMO_WEEKS)

# Caches and build leftovers; keeps .venv (use distclean to drop it too).
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
