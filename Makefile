# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# uv installs every environment: on CI's 2 cores it takes ~30-40 s where pip took ~150-200 s for the
# same pinned set (it downloads and unpacks in parallel, and compiles bytecode on every core).
UV := $(BIN)/uv
UV_INSTALL := $(UV) pip install -q --compile-bytecode
STAMP := $(VENV)/.installed-stamp
# The stock Triton client in its own environment: tritonclient pins protobuf < 7, the server needs 7.
TRITON := $(VENV)/tritonclient
TRITON_STAMP := $(TRITON)/.installed-stamp
GRPC_PORT ?= 50051
METRICS_PORT ?= 9464
# Test processes (pytest-xdist); a file's tests stay in one process, so its servers are started once.
# 2 on CI's 2 cores: 3 was no faster (829 against 826 s for 692 tests, 1,538 against 1,418 CPU-s).
TEST_JOBS ?= 2

BENCH_FIGURES := engine serve protocols frontend load localization micro

.PHONY: native-floor system-deps deploy-tools venv tritonclient kserve-client perf-analyzer serve test protos protos-check lint bench bench-quick \
	$(addprefix bench-,$(BENCH_FIGURES)) bench-gpu deploy-check soak clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt uv
	$(UV_INSTALL) --python $(BIN)/python -c constraints.txt -e '.[server,dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install camserve with the server and dev extras

serve: venv  ## serve the bundled demo model on gRPC :50051, metrics on :9464
	$(BIN)/camserve serve --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

# The test-only environments install side by side once .venv exists (their uv comes from it): mostly
# downloads and unpacking. On a fresh clone here the whole install took 89 s this way, 95 s one by one.
test: venv  ## the whole suite (what CI runs), on TEST_JOBS processes
	$(MAKE) --no-print-directory -j4 system-deps tritonclient kserve-client perf-analyzer
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

# Every package pinned in tests/oip/tritonclient.txt, installed without resolving (--no-deps) so the
# environment is the same everywhere; `uv pip check` proves the pins are complete. The tests in tests/oip
# run it and fail (never skip) without it.
$(TRITON_STAMP): tests/oip/tritonclient.txt $(STAMP)
	test -x $(TRITON)/bin/python || $(UV) venv -q --python $(PYTHON) $(TRITON)
	$(UV_INSTALL) --python $(TRITON)/bin/python --no-deps -r tests/oip/tritonclient.txt
	$(UV) pip check -q --python $(TRITON)/bin/python
	$(TRITON)/bin/python -c "import tritonclient.grpc"
	touch $(TRITON_STAMP)

tritonclient: $(TRITON_STAMP)  ## .venv/tritonclient: the stock tritonclient[grpc] the protocol tests drive

# KServe's Python SDK, every package pinned in tests/oip/kserve_client.txt, like tritonclient above but
# not compiled whole (~30 CPU-s): its first import compiles what the SDK loads (~6 CPU-s) and keeps it.
KSERVE := $(VENV)/kserve
$(KSERVE)/.installed-stamp: tests/oip/kserve_client.txt $(STAMP)
	test -x $(KSERVE)/bin/python || $(UV) venv -q --python $(PYTHON) $(KSERVE)
	$(UV) pip install -q --python $(KSERVE)/bin/python --no-deps -r tests/oip/kserve_client.txt
	$(UV) pip check -q --python $(KSERVE)/bin/python
	env -u PYTHONDONTWRITEBYTECODE $(KSERVE)/bin/python -c "import kserve, kserve.protocol.infer_type"
	touch $@

kserve-client: $(KSERVE)/.installed-stamp  ## .venv/kserve: KServe's Python SDK the protocol tests drive

# Triton's perf_analyzer (PyPI perf-analyzer, pinned in tests/oip/perf_analyzer.txt): a binary that needs
# glibc >= 2.38; on older systems the script runs it under Debian 13's C/C++ runtime (it says how).
PERF_ANALYZER := $(VENV)/perf-analyzer
$(PERF_ANALYZER)/.installed-stamp: tests/oip/perf_analyzer.txt tests/oip/perf_analyzer_env.sh $(STAMP)
	sh tests/oip/perf_analyzer_env.sh $(PERF_ANALYZER) $(PYTHON) $(UV)
	touch $@

perf-analyzer: $(PERF_ANALYZER)/.installed-stamp  ## .venv/perf-analyzer: the perf_analyzer the protocol tests drive

# What the suite needs beyond pyproject: Debian's prometheus (promtool, and the server the scrape test
# runs) and the deploy check's own tools. Missing and not installable is an error, never a skip.
system-deps: deploy-tools
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null 2>&1; }; } && \
	  { command -v promtool && command -v prometheus; } >/dev/null 2>&1; } || \
	  { echo "error: promtool or prometheus is missing and could not be installed: as root, apt-get install prometheus" >&2; \
	    exit 1; }

# kubectl (kustomize) and checkov, pinned in deploy/tools.txt, in their own environment (checkov's pins
# clash with the dev tools'); make deploy-check finds them there ($CAMSERVE_DEPLOY_TOOLS if set).
DEPLOY_TOOLS := $(or $(CAMSERVE_DEPLOY_TOOLS),$(VENV)/deploy-tools)
$(DEPLOY_TOOLS)/.installed-stamp: deploy/tools.txt $(STAMP)
	test -x $(DEPLOY_TOOLS)/bin/python || $(UV) venv -q --python $(PYTHON) $(DEPLOY_TOOLS)
	$(UV_INSTALL) --python $(DEPLOY_TOOLS)/bin/python -r deploy/tools.txt
	touch $@

deploy-tools: $(DEPLOY_TOOLS)/.installed-stamp  ## kubectl and checkov for make deploy-check

protos: venv  ## regenerate client/camserve_proto from protos/
	$(BIN)/python protos/generate.py

protos-check: venv
	$(BIN)/python protos/generate.py --check

lint: venv  ## ruff, and the import-layer contract in pyproject.toml (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every figure the README quotes, each by the command its section names (the table is bench/__main__.py;
# `python -m bench --list` prints it). A quiet machine: hours on 2 CPU cores.
bench: venv  ## re-make every README figure (bench/results/*.json)
	$(BIN)/python -m bench

# The same commands with tiny budgets and models: they must run and exit 0 (tests/bench runs this in
# make test); the figures mean nothing.
bench-quick: venv  ## every bench command, tiny (a check, about two minutes)
	$(BIN)/python -m bench --quick

$(addprefix bench-,$(BENCH_FIGURES)): bench-%: venv  ## one README figure: make bench-engine, bench-serve, ...
	$(BIN)/python -m bench $*

# The C++ gRPC server `python -m bench.frontend.floor --native` measures beside grpc.aio (a bench tool, not
# part of camserve): Debian's gRPC 1.51 and libjpeg-turbo, installed here when missing and run as root.
NATIVE_FLOOR := build/native-floor
NATIVE_DEBS := libgrpc++-dev libprotobuf-dev protobuf-compiler-grpc libturbojpeg0-dev pkg-config
native-floor: $(NATIVE_FLOOR)/floor  ## build the C++ gRPC floor server of bench/frontend/native

$(NATIVE_FLOOR)/floor: bench/frontend/native/floor.cc protos/camserve/v1/explain.proto
	@command -v grpc_cpp_plugin >/dev/null && pkg-config --exists grpc++ protobuf libturbojpeg || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends $(NATIVE_DEBS) >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq --no-install-recommends $(NATIVE_DEBS) >/dev/null 2>&1; }; }; } || \
	  { echo "error: the native floor needs, as root: apt-get install $(NATIVE_DEBS)" >&2; exit 1; }
	mkdir -p $(NATIVE_FLOOR)/gen
	protoc -Iprotos --cpp_out=$(NATIVE_FLOOR)/gen --grpc_out=$(NATIVE_FLOOR)/gen \
	  --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) protos/camserve/v1/explain.proto
	$(CXX) -O2 -std=c++17 -I$(NATIVE_FLOOR)/gen -o $@ bench/frontend/native/floor.cc \
	  $(NATIVE_FLOOR)/gen/camserve/v1/explain.pb.cc $(NATIVE_FLOOR)/gen/camserve/v1/explain.grpc.pb.cc \
	  $$(pkg-config --cflags --libs grpc++ protobuf libturbojpeg)

bench-gpu:  ## the GPU figures on a machine with a GPU and JAX (bench/gpu/README.md)
	bench/gpu/run.sh

# make deploy-check, offline: kubectl kustomize renders each overlay into $(DEPLOY_OUT); then each stock
# tool is a target of its own, run side by side (-k: every one reports, in its own words; -O: one report
# at a time), beside `python -m deploy.check` over the rendered overlays (what only Python can check).
# deploy/README.md says which tool owns which rule. The tests point the inputs below at broken copies
# (python -m deploy.check takes the rendered overlays; it reads deploy/'s own Dockerfiles).
DEPLOY_OUT := build/deploy
DEPLOY_K8S := deploy/k8s
DEPLOY_DOCKERFILES := deploy/docker/Dockerfile deploy/docker/Dockerfile.cpu
DEPLOY_ALERTS := deploy/prometheus/alerts.yaml
DEPLOY_YAML := deploy
DEPLOY_CHECKS := $(addprefix deploy-check-,checkov yamllint hadolint promtool python)
.PHONY: deploy-checks $(DEPLOY_CHECKS)
# $(call deploy-tool,NAME,INSTALL): NAME from the deploy tools, the venv or PATH; else stop, saying how.
deploy-tool = $(or $(shell PATH="$(DEPLOY_TOOLS)/bin:$(BIN):$$PATH" command -v $(1)),\
  $(error $(1) not found: run `$(2)`))

deploy-check: venv system-deps  ## render deploy/ with kustomize, then check it with every tool side by side
	@$(MAKE) --no-print-directory -k -j4 -Otarget deploy-checks

deploy-checks: $(DEPLOY_CHECKS)

$(DEPLOY_OUT)/%.yaml: $(wildcard $(DEPLOY_K8S)/*/*.yaml $(DEPLOY_K8S)/overlays/*/*.yaml)
	@mkdir -p $(@D)
	$(call deploy-tool,kubectl,make deploy-tools) kustomize \
	  $(DEPLOY_K8S)/$(if $(filter base,$*),base,overlays/$*) >$@.tmp && mv $@.tmp $@

# What is deployed: the overlays (the base's image is a placeholder they replace).
deploy-check-checkov: $(DEPLOY_OUT)/gpu.yaml $(DEPLOY_OUT)/cpu.yaml
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE $(call deploy-tool,checkov,make deploy-tools) \
	  --config-file deploy/checkov.yaml --compact --quiet $(addprefix -f ,$^ $(DEPLOY_DOCKERFILES))

deploy-check-yamllint:
	$(call deploy-tool,yamllint,make venv) -f parsable -c deploy/yamllint.yaml $(DEPLOY_YAML)

deploy-check-hadolint:
	$(call deploy-tool,hadolint,make venv) --no-color $(DEPLOY_DOCKERFILES)

deploy-check-promtool:
	$(call deploy-tool,promtool,make system-deps) check rules $(DEPLOY_ALERTS)
	$(call deploy-tool,promtool,make system-deps) test rules deploy/prometheus/alerts_test.yaml

deploy-check-python: $(addprefix $(DEPLOY_OUT)/,base.yaml gpu.yaml cpu.yaml)
	$(or $(wildcard $(BIN)/python),$(error $(BIN)/python not found: run `make venv`)) -m deploy.check $^

soak: venv  ## the long reliability run (not part of make test)
	CAMSERVE_SOAK=1 $(BIN)/python -m pytest tests/reliability -x

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
