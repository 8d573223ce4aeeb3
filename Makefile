# Slipway's entry points. `make` lists them.
.DEFAULT_GOAL := help
CARGO ?= cargo
# Binaries are run from here once built: a second `cargo run -p X` would unify features for X
# alone and rebuild part of the dependency graph (k8s-openapi among it) a second time.
BIN := $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: help setup test demo tour vm-test cluster generate lint bench images fuzz

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install what the build and tests need (Debian packages; idempotent)
	@scripts/setup.sh

test: setup ## Run every test (unit, integration, CLI end to end, D-Bus, QEMU scenarios)
	@scripts/test.sh

demo: setup ## The demo: a rolling OS update across QEMU nodes, live, with the dashboard (DEMO_ARGS="--nodes 5 --keep")
	$(CARGO) build --locked -p slipway-agent -p slipway-server -p slipway-operator -p slipway-vm-tests --bins
	$(BIN)/slipway-demo $(DEMO_ARGS)

tour: setup ## A tour of the trust core and the slipway CLI: keys, a 2-of-3 root, signing, a tampered payload refused
	@scripts/demo.sh

vm-test: setup ## Boot QEMU nodes (TCG): update, fallback, power loss mid-write, tampered payload, runtime image
	$(CARGO) build --locked -p slipway-agent -p slipway-server -p slipway-operator --bins
	$(CARGO) test --locked -p slipway-vm-tests -- --nocapture --test-threads=1

cluster: setup ## A real Kubernetes control plane with Slipway applied and the operator running, for kubectl (CLUSTER_ARGS="--nodes 5"; Ctrl-C stops it)
	$(CARGO) build --locked -p slipway-operator -p slipway-testkit --bins
	$(BIN)/slipway-cluster $(CLUSTER_ARGS)

images: setup ## Container images as OCI layouts in target/images, reproducible (REGISTRY=host:port also pushes them)
	@scripts/images.sh

generate: ## Regenerate checked-in files: manifests/crds from the Rust CRD types, the Helm chart's copy, docs/openapi.json
	$(CARGO) build -q --workspace --bins --locked
	$(BIN)/crdgen --out-dir manifests/crds
	cp manifests/crds/*.yaml manifests/helm/slipway/crds/
	$(BIN)/slipway-server --print-openapi > docs/openapi.json

lint: ## cargo fmt --check and clippy with warnings as errors (the workspace and fuzz/)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
	$(CARGO) build -q --workspace --bins --locked
	$(BIN)/crdgen --check --out-dir manifests/crds
	$(BIN)/crdgen --check --out-dir manifests/helm/slipway/crds

bench: ## Benchmarks: engine apply vs openssl/copy+fsync, update-server checks/s vs /healthz, 1M machines on SQLite and PostgreSQL (views, checks/s vs /healthz, views under checks), database size after a simulated year, operator plan (with and without gates) + 5k nodes, delta block sizes, delta vs full apply
	$(CARGO) bench --locked -p slipway-agent --bench apply -- 1024 4096
	$(CARGO) run --release --locked -p slipway-server --bin bench-checks
	$(CARGO) run --release --locked -p slipway-server --bin bench-views
	scripts/with-postgres.sh $(CARGO) run --release --locked -p slipway-server --bin bench-views -- --database {}
	$(CARGO) run --release --locked -p slipway-server --bin bench-retention
	$(CARGO) bench --locked -p slipway-operator --bench operator
	$(CARGO) bench --locked -p slipway-api --bench blockindex
	scripts/bench-images.sh
	$(CARGO) bench --locked -p slipway-agent --bench delta

fuzz: ## Fuzz every parser with cargo-fuzz (FUZZ_SECONDS=600 per target, FUZZ_TARGETS="grubenv gpt"); docs/fuzzing.md
	@scripts/fuzz.sh
