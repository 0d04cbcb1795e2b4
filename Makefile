# Set-up and checks. One virtual environment per host framework: their pins conflict
# (docs/development.md). `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENVS ?= .venvs
# CPU torch: keeps pip from pulling a multi-GB CUDA build of a newer torch on test machines.
CONSTRAINTS ?= tests/constraints-cpu.txt
PIP_FLAGS ?= -q -c $(CONSTRAINTS)

TRL_ENV := $(VENVS)/trl
AXOLOTL_ENV := $(VENVS)/axolotl

.PHONY: demo test test-trl test-axolotl lint bench env-trl env-axolotl clean

$(TRL_ENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(TRL_ENV)
	$(TRL_ENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	DS_BUILD_OPS=0 $(TRL_ENV)/bin/pip install $(PIP_FLAGS) -e ".[trl,dev,deepspeed]"
	touch $@

$(AXOLOTL_ENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(AXOLOTL_ENV)
	$(AXOLOTL_ENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(AXOLOTL_ENV)/bin/pip install $(PIP_FLAGS) -e ".[axolotl,dev]"
	touch $@

env-trl: $(TRL_ENV)/.installed
env-axolotl: $(AXOLOTL_ENV)/.installed

## The main job on the built-in default: a tiny model + the bundled synthetic CoT data, CPU, offline.
demo: env-trl
	$(TRL_ENV)/bin/scale-plugins demo

## The whole test suite, every host in its own environment.
test: test-trl

test-trl: env-trl
	$(TRL_ENV)/bin/python -m pytest tests --ignore=tests/axolotl --ignore=tests/llamafactory -q -p no:cacheprovider

test-axolotl: env-axolotl
	AXOLOTL_DO_NOT_TRACK=1 $(AXOLOTL_ENV)/bin/python -m pytest tests/axolotl -q -p no:cacheprovider

lint: env-trl
	$(TRL_ENV)/bin/ruff check scale_plugins tests
	$(TRL_ENV)/bin/ruff format --check scale_plugins tests

bench: env-trl
	$(TRL_ENV)/bin/scale-plugins bench

clean:
	rm -rf $(VENVS) .pytest_cache
