# Memberline — every developer and CI command. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
BIN := target/debug
PGURL ?= postgres://postgres@127.0.0.1:5432
DB_NAME ?= memberline
export MEMBERLINE__DATABASE__URL ?= $(PGURL)/$(DB_NAME)
# Development settings (deploy/config/local.toml, with its public secrets) for what the Makefile
# runs; a binary started without MEMBERLINE_ENV reads base.toml only.
export MEMBERLINE_ENV ?= local

# `make token USER=1 ROLE=user`: USER is also the shell's login name, so only a value given on
# the command line counts; otherwise user 1.
TOKEN_USER := $(if $(filter command line,$(origin USER)),$(USER),1)
ROLE ?= user

.PHONY: help run cluster chaos soak test sdk-check browser-test vendor bench lint fmt fuzz services build db migrate seed token openapi topology unit-test integration-test clean-test-data

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

run: services build db ## Start the whole system locally with a demo (Ctrl-C stops it)
	@deploy/run-local.sh

cluster: build ## Scaled out locally: 3-node RabbitMQ, PostgreSQL primary + sync replica behind a moving address, two gateways, a relay, two workers (Ctrl-C stops it)
	@deploy/run-cluster.sh

chaos: services ## Faults injected into the scaled-out system under load, with a table of figures (at most 20 min; target/chaos/report.md)
	$(CARGO) build --bins --features memberline-platform/failpoints --target-dir target/chaos
	target/chaos/debug/chaos

SOAK_MINUTES ?= 30
soak: services ## Mixed load with faults at random for SOAK_MINUTES (30): RSS drift, lane waits, retention keeping tables flat (target/chaos/soak.md)
	$(CARGO) build --bins --features memberline-platform/failpoints --target-dir target/chaos
	SOAK_MINUTES=$(SOAK_MINUTES) target/chaos/debug/chaos soak

test: services ## Check services, then run every test (what .ci/run calls)
	@command -v cargo-nextest >/dev/null || $(CARGO) install cargo-nextest --locked
	$(CARGO) build --bins  # the chaos and browser tests run the real binaries
	$(CARGO) nextest run --workspace --no-fail-fast
	tests/contract/run.sh
	tests/sdk/run.sh
	tests/browser/run.sh

sdk-check: ## The provider emulator driven by unmodified merchant SDKs from PyPI (wechatpayv3, Alipay's)
	tests/sdk/run.sh

browser-test: build ## Web pages in headless Chromium (installs chromium and playwright-core when missing)
	tests/browser/run.sh

vendor: ## Re-fetch the pages' pinned third-party scripts (Chart.js) from npm into gateway/src/http/pages/assets
	gateway/src/http/pages/vendor/refresh.sh

unit-test: ## Unit tests only (no services needed)
	$(CARGO) nextest run --workspace --lib --bins

integration-test: services build ## Integration suites only
	$(CARGO) nextest run -p memberline-tests

bench: services ## Floors and scenarios side by side: target/bench/report.md and plots (BENCHMARKS.md keeps the latest)
	$(CARGO) build --release --bins
	ulimit -n "$$(ulimit -Hn)"; target/release/bench  # 10,000 WebSockets need as many descriptors

lint: ## cargo fmt --check, clippy -D warnings, cargo deny (installed when missing)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	cargo deny check licenses bans sources
	@if cargo deny fetch db >/dev/null 2>&1; then cargo deny check advisories; \
	else echo "warning: advisories not checked: the RustSec database cannot be fetched from this machine (run 'make lint' where it can)"; fi

fmt: ## Format the code
	$(CARGO) fmt --all

# cargo-fuzz passes -Z flags (sanitizer, coverage) to rustc: RUSTC_BOOTSTRAP lets the stable
# toolchain take them. Each target starts from (and adds what it finds to) fuzz/corpus/<target>;
# a crash stops the run with its input in fuzz/artifacts/<target>/.
FUZZ_SECS ?= 60
fuzz: ## Run every fuzz target (fuzz/) for FUZZ_SECS seconds each (60; installs cargo-fuzz when missing)
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for target in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		echo "== $$target ($(FUZZ_SECS) s)"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target fuzz/corpus/$$target -- \
			-max_total_time=$(FUZZ_SECS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

services: ## Make sure PostgreSQL and RabbitMQ are up (start them when installed but stopped)
	@deploy/local-services.sh

build: ## Build every binary
	$(CARGO) build --bins

db: services ## Create the local database if missing, migrate and seed the demo
	@psql "$(PGURL)/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$(DB_NAME)'" | grep -q 1 \
		|| psql "$(PGURL)/postgres" -qc "CREATE DATABASE $(DB_NAME)"
	@$(MAKE) --no-print-directory migrate seed

migrate: build ## Apply database migrations
	$(BIN)/memberline migrate up

seed: build ## Seed the demo catalogue and users (idempotent)
	$(BIN)/memberline seed

token: ## Print a bearer token: make token USER=<id> ROLE=<user|merchant|admin>
	@$(CARGO) build -q --bin memberline
	@$(BIN)/memberline token --user $(TOKEN_USER) --role $(ROLE)

openapi: build ## Print the OpenAPI document
	@$(BIN)/memberline openapi

topology: build ## Regenerate deploy/rabbitmq/definitions.json from the code's topology
	@MEMBERLINE_CONFIG_DIR=/nonexistent $(BIN)/memberline topology > deploy/rabbitmq/definitions.json

clean-test-data: ## Drop leftover test databases (from killed test runs)
	@psql "$(PGURL)/postgres" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'ml_test_%'" \
		| while read -r db; do psql "$(PGURL)/postgres" -qc "DROP DATABASE IF EXISTS $$db WITH (FORCE)"; done
