# Developer entry points. `make model` prepares the default model; `make test` runs the tests.
CARGO ?= cargo
PREFIX ?= /usr/local
# `cross` reads Cross.toml by default; ours is cross.toml.
export CROSS_CONFIG ?= $(CURDIR)/cross.toml

TARGETS = aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl
DESTDIR ?=

.PHONY: model test-deps build test run bench lint clean-model dist deb install arm cross $(addprefix cross-,$(TARGETS))

model:
	models/prepare.sh

build:
	$(CARGO) build --release

# What the tests need besides Rust and Python (mosquitto, socat, systemd tools, cargo-deb).
test-deps:
	tools/test-deps.sh

test: model test-deps
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
	rm -rf models/minilm/model.onnx models/minilm/tokenizer.json models/minilm/.prepared

# Shipping build: LTO, one codegen unit, stripped, panic = abort (profile.dist).
dist:
	$(CARGO) build --profile dist

deb: model build
	cargo deb --no-build

# Hand install (what the .deb does): binary, units, config (kept if present), model.
install:
	install -Dm755 $${CARGO_TARGET_DIR:-target}/release/edgellm $(DESTDIR)$(PREFIX)/bin/edgellm
	install -Dm644 systemd/edgellm.service $(DESTDIR)/etc/systemd/system/edgellm.service
	install -Dm644 systemd/edgellm.socket $(DESTDIR)/etc/systemd/system/edgellm.socket
	install -Dm644 systemd/edgellm-http.socket $(DESTDIR)/etc/systemd/system/edgellm-http.socket
	install -Dm644 systemd/edgellm.sysusers $(DESTDIR)/etc/sysusers.d/edgellm.conf
	install -Dm644 systemd/edgellm.tmpfiles $(DESTDIR)/etc/tmpfiles.d/edgellm.conf
	test -e $(DESTDIR)/etc/edgellm/edgellm.toml || install -Dm640 config/edgellm.toml $(DESTDIR)/etc/edgellm/edgellm.toml
	install -d $(DESTDIR)/usr/share/edgellm/models/smollm2
	install -m644 models/smollm2/manifest.json models/smollm2/tokenizer.json models/smollm2/model.onnx $(DESTDIR)/usr/share/edgellm/models/smollm2/
	install -d $(DESTDIR)/usr/share/edgellm/models/minilm
	install -m644 models/minilm/manifest.json models/minilm/tokenizer.json models/minilm/model.onnx $(DESTDIR)/usr/share/edgellm/models/minilm/
	sed -i 's#/usr/bin/edgellm#$(PREFIX)/bin/edgellm#g' $(DESTDIR)/etc/systemd/system/edgellm.service

# ARM as CI checks it, without Docker: aarch64 and armv7 cross builds with Debian's Rust, the
# unit tests and the tiny model's golden tokens under QEMU, clippy, the real model's answer
# under QEMU, a .deb for arm64 and armhf (tools/arm.sh; `tools/arm.sh aarch64` for one).
arm: model
	tools/arm.sh

# ARM builds with `cross` (needs Docker or Podman): make cross-aarch64-unknown-linux-gnu
cross: $(addprefix cross-,$(TARGETS))
$(addprefix cross-,$(TARGETS)): cross-%:
	cross build --profile dist --target $*
