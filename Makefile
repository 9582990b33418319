# Developer entry points. `make model` prepares the default model; `make test` runs the tests.
CARGO ?= cargo
PREFIX ?= /usr/local
# `cross` reads Cross.toml by default; ours is cross.toml.
export CROSS_CONFIG ?= $(CURDIR)/cross.toml

.PHONY: model build test run bench lint clean-model

model:
	models/prepare.sh

build:
	$(CARGO) build --release

test: model
	$(CARGO) test --release

run: model
	$(CARGO) run --release -- generate "What is the capital of France?"

bench: model
	$(CARGO) run --release -- bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

clean-model:
	rm -rf models/smollm2/model.onnx models/smollm2/tokenizer.json models/smollm2/.prepared
