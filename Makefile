# Slipway's entry points. `make` lists them.
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help setup test demo vm-test generate lint bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install what the build and tests need (Debian packages; idempotent)
	@scripts/setup.sh

test: setup ## Run every test (unit, integration, CLI end to end)
	@scripts/test.sh

demo: setup ## Run the demo (today: the signing tour; the QEMU fleet rollout comes with issue 9)
	@scripts/demo.sh

vm-test: setup ## Boot QEMU nodes through update and fallback (not built yet: issue 4)
	@echo "vm-test: no VM scenarios exist yet; they arrive with the vm-tests issue (4)."

generate: ## Regenerate checked-in files (CRDs arrive with the operator issue)
	@echo "generate: nothing is generated yet; crdgen arrives with the operator issue (6)."

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench: ## Benchmarks: update-server checks/s vs /healthz (engine apply and planner arrive with their issues)
	$(CARGO) run --release --locked -p slipway-server --bin bench-checks
	@echo "bench: engine (3) and operator (6) benchmarks arrive with their issues."
