# lbctl — build, test, demo, benchmarks. Run as root (sudo make ...): the
# tests load XDP programs and make network namespaces.

# sudo resets PATH: fall back to the rustup install of the user we run as.
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
# Extra arguments for the demo, e.g. make demo DEMO_ARGS=--one-arm
DEMO_ARGS ?=
# Debian packages the build and the tests need.
APT_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2 \
	ethtool conntrack nftables util-linux kmod haproxy

.PHONY: all deps kernel-deps build vmlinux lint test test-kernel test-kernels demo bench install clean

# make install [PREFIX=/usr/local] [DESTDIR=...]: the binary and the systemd unit.
PREFIX ?= /usr/local
DESTDIR ?=
SYSTEMD_UNIT_DIR ?= /etc/systemd/system

# Kernel series for test-kernel (one) and test-kernels (the matrix).
KERNEL ?= 6.1
KERNELS ?= 6.1 6.12
# Per kernel: minutes under KVM, 11-13 under software emulation here.
export RUN_IN_KERNEL_TIMEOUT ?= 2700

all: build

deps:
	@command -v $(CARGO) >/dev/null || { \
		echo "cargo not found: lbctl needs Rust 1.82 or newer (rustup); under sudo, try sudo env PATH=\"\$$PATH\" make ..."; \
		exit 1; }
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(CARGO) build --release

# qemu, busybox and friends for booting Debian kernels (scripts/kernels/).
kernel-deps: deps
	@missing=$$(for p in $$(cat scripts/kernels/DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The packet, hashing, CLI and lab tests inside Debian's kernel $(KERNEL),
# booted under qemu (KVM, or software emulation where KVM cannot run it),
# against the binaries built here.
test-kernel: kernel-deps
	scripts/kernels/run-in-kernel.sh $(KERNEL) scripts/kernels/guest-tests.sh $$(scripts/kernels/test-binaries.sh)

# The same in every supported kernel, with a result table. Skips, saying so,
# where KVM cannot run a Debian kernel (MATRIX_ALLOW_TCG=1 runs it anyway
# under software emulation).
test-kernels: kernel-deps
	MATRIX_SERIES="$(KERNELS)" scripts/kernels/matrix.sh scripts/kernels/guest-tests.sh $$(scripts/kernels/test-binaries.sh)

vmlinux: deps
	scripts/gen-vmlinux.sh

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Ends with quick runs of both benchmarks, so they keep working (their
# figures are not for quoting; about 15 s each).
test: deps lint
	$(CARGO) test --release --workspace -- --test-threads=2
	$(CARGO) run --release -p lbctl-bench --bin lbctl-bench -- --quick
	$(CARGO) run --release -p lbctl-bench --bin lbctl-livebench -- --quick
	$(CARGO) run --release -p lbctl-bench --bin lbctl-applybench -- --quick

# docs/BENCHMARKS.md: the per-packet cost of the data path, then live
# forwarding and connection rates in the lab beside nftables and HAProxy.
# Tables on the terminal, JSON in target/bench/; about 15 minutes.
bench: deps
	$(CARGO) run --release -p lbctl-bench --bin lbctl-bench
	$(CARGO) run --release -p lbctl-bench --bin lbctl-livebench
	$(CARGO) run --release -p lbctl-bench --bin lbctl-applybench

# Builds, then balances real traffic through lbctl in a throwaway lab of
# network namespaces, checks everything it shows, and removes the lab.
demo: build
	$(CARGO) run --release --example demo -- $(DEMO_ARGS)

# The lbctl binary (built first) and contrib/lbctl.service, with its
# ExecStart pointing at the installed binary.
install: build
	install -D -m 0755 $${CARGO_TARGET_DIR:-target}/release/lbctl $(DESTDIR)$(PREFIX)/sbin/lbctl
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/local/sbin/lbctl|$(PREFIX)/sbin/lbctl|g' contrib/lbctl.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/lbctl.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/lbctl.service

clean:
	$(CARGO) clean
