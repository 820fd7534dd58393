# lbctl — build, test, demo, benchmarks. Run as root (sudo make ...): the
# tests load XDP programs and make network namespaces.

CARGO ?= cargo
# Debian packages the build and the tests need.
APT_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2 \
	ethtool conntrack nftables util-linux kmod

.PHONY: all deps build vmlinux lint test demo bench clean

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(CARGO) build --release

vmlinux: deps
	scripts/gen-vmlinux.sh

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Ends with a quick run of the benchmark, so it keeps working (its figures
# are not for quoting; about 15 s).
test: deps lint
	$(CARGO) test --release -- --test-threads=2
	$(CARGO) run --release --bin lbctl-bench -- --quick

# Per-packet cost of the data path (docs/BENCHMARKS.md); several minutes.
bench: deps
	$(CARGO) run --release --bin lbctl-bench

clean:
	$(CARGO) clean
