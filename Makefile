# lbctl — build, test, demo, benchmarks. Run as root (sudo make ...): the
# tests load XDP programs and make network namespaces.

# sudo resets PATH: fall back to the rustup install of the user we run as.
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
# Extra arguments for the demo, e.g. make demo DEMO_ARGS=--one-arm
DEMO_ARGS ?=
# Debian packages, one list per job (`make print-deps` shows them; each
# target installs only the missing ones). A production host needs only the
# build's (or none, from the .deb: `make deb`).
# BUILD_PACKAGES: what `make build` / `make install` compile with. clang
#   compiles bpf/*.bpf.c (build.rs, libbpf-cargo) and llvm goes with it;
#   libelf-dev, zlib1g-dev and pkg-config build the vendored libbpf, which the
#   binary then links (libelf1, zlib1g at run time). bpf/vmlinux.h is
#   committed: bpftool is needed only to regenerate it (`make vmlinux`).
BUILD_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config
# DEB_PACKAGES: what `make deb` adds. dpkg-dev: dpkg-shlibdeps computes the
#   package's Depends; binutils: strip.
DEB_PACKAGES := dpkg-dev binutils
# TEST_PACKAGES: the lab of `make test`, `bench`, `demo` and `fuzz`, never
#   needed on a balancer.
# iproute2, util-linux (nsenter, setpriv), kmod, ethtool: crates/lab builds
#   its namespaces, veths and tunnels with them. bpftool: lab fixtures and
#   tests read maps and programs with it. conntrack, nftables: tests and
#   benchmarks read conntrack and compare with nftables.
# strace: tests/crash.rs kills lbctl before each bpf() write (strace -e inject).
# iputils-ping: tests/pmtu.rs pings a VIP.
# bird2, frr: tests/bgp.rs runs BIRD and FRR in its namespaces with contrib/'s snippets.
# conntrackd, keepalived: tests/ecmp.rs replicates flows between balancers
#   and fails over with contrib/conntrackd/ and contrib/keepalived/.
# haproxy: the live benchmark's comparison.
# lintian: tests/package.rs checks the .deb has no lintian errors.
TEST_PACKAGES := bpftool iproute2 ethtool conntrack nftables util-linux kmod \
	haproxy strace iputils-ping bird2 frr conntrackd keepalived lintian $(DEB_PACKAGES)
# The kernel matrix's (qemu, busybox, ...): scripts/kernels/DEPS.
KERNEL_PACKAGES = $(shell cat scripts/kernels/DEPS)

# $(call apt_install,PACKAGES): install those of PACKAGES not yet installed.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

.PHONY: all cargo deps build-deps deb-deps test-deps kernel-deps print-deps deb build vmlinux lint test test-kernel test-kernels test-kernel-floor demo bench fuzz install clean

# make install [PREFIX=/usr/local] [DESTDIR=...]: the binary and the systemd unit.
PREFIX ?= /usr/local
DESTDIR ?=
SYSTEMD_UNIT_DIR ?= /etc/systemd/system

# Kernel series for test-kernel (one) and test-kernels (the matrix).
KERNEL ?= 6.1
KERNELS ?= 6.1 6.12
# Seconds per guest: each guest of the 6.1 leg under software emulation
# must stay within it (scripts/kernels/README.md has the figures).
export RUN_IN_KERNEL_TIMEOUT ?= 3600
# CI's 6.1 leg runs this many guests at once, the suites split between them
# by their measured times (scripts/kernels/shard.sh): one guest under TCG
# keeps one host core busy, and CI's machines have two.
FLOOR_SHARDS ?= 2
# tests/crash.rs in the 6.1 leg tries one kill point in this many (1: all;
# make test on the host always tries all). All of them took 1,061 s in one
# guest at 85d5a90, its guests 3,013 and 3,074 s of their hour: one in two
# keeps the leg well inside it.
FLOOR_CRASH_STRIDE ?= 2

all: build

cargo:
	@command -v $(CARGO) >/dev/null || { \
		echo "cargo not found: lbctl needs Rust 1.82 or newer (rustup); under sudo, try sudo env PATH=\"\$$PATH\" make ..."; \
		exit 1; }

# What building lbctl needs, and nothing else (make build, make install).
build-deps: cargo
	$(call apt_install,$(BUILD_PACKAGES))

# What make deb needs beyond the build.
deb-deps: build-deps
	$(call apt_install,$(DEB_PACKAGES))

# The build's and the lab's: make test, bench, demo, fuzz; and promtool
# (tests/service.rs checks a live scrape with it), unpacked from Debian's
# prometheus package under target/ rather than installed with the server.
PROMTOOL := target/tools/promtool
test-deps: build-deps
	$(call apt_install,$(TEST_PACKAGES))
	scripts/get-promtool.sh $(PROMTOOL)

# Everything but the kernel matrix (as before the split).
deps: test-deps

# qemu, busybox and friends for booting Debian kernels (scripts/kernels/).
kernel-deps: test-deps
	$(call apt_install,$(KERNEL_PACKAGES))

# Which target installs which Debian packages.
print-deps:
	@echo "build-deps (make build, install):  $(BUILD_PACKAGES)"
	@echo "deb-deps (make deb, + build-deps):  $(DEB_PACKAGES)"
	@echo "test-deps (make test, bench, demo, fuzz, + build-deps):  $(strip $(TEST_PACKAGES))"
	@echo "kernel-deps (make test-kernel*, + test-deps):  $(KERNEL_PACKAGES)"

build: build-deps
	$(CARGO) build --release

# target/debian/lbctl_VERSION_ARCH.deb from the release binary
# (scripts/make-deb.sh: binary, unit, example /etc/lbctl/lbctl.toml as a
# conffile, man pages, completions; Depends from dpkg-shlibdeps).
deb: build deb-deps
	LBCTL_BIN=$${CARGO_TARGET_DIR:-target}/release/lbctl scripts/make-deb.sh

# The suites inside Debian's kernel $(KERNEL), booted under qemu (KVM, or
# software emulation where KVM cannot run it), against the binaries built
# here: every suite scripts/kernels/suites marks `guest` (the others are
# named with their reason), or KERNEL_SUITES="packets fuzz ...".
test-kernel: kernel-deps
	scripts/kernels/run-in-kernel.sh $(KERNEL) scripts/kernels/guest-tests.sh $$(scripts/kernels/test-binaries.sh)

# The floor kernel on every CI run: the same suites in Debian's 6.1 but
# those `suites` marks `full` (named, with the reason), under KVM or, where
# KVM cannot boot it, software emulation. Fails if any suite fails in the
# guest or the guest cannot be booted.
test-kernel-floor: kernel-deps
	LBCTL_CRASH_STRIDE=$(FLOOR_CRASH_STRIDE) RUN_IN_KERNEL_ENV="$(RUN_IN_KERNEL_ENV) LBCTL_CRASH_STRIDE" \
	MATRIX_SERIES=6.1 MATRIX_ALLOW_TCG=1 MATRIX_SHARDS=$(FLOOR_SHARDS) scripts/kernels/matrix.sh scripts/kernels/guest-tests.sh $$(KERNEL_LEG=ci scripts/kernels/test-binaries.sh)

# The same in every supported kernel, with a result table. Skips, saying so,
# where KVM cannot run a Debian kernel (MATRIX_ALLOW_TCG=1 runs it anyway
# under software emulation).
test-kernels: kernel-deps
	MATRIX_SERIES="$(KERNELS)" scripts/kernels/matrix.sh scripts/kernels/guest-tests.sh $$(scripts/kernels/test-binaries.sh)

vmlinux: build-deps
	$(call apt_install,bpftool)
	scripts/gen-vmlinux.sh

lint: build-deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Ends with quick runs of both benchmarks, so they keep working (their
# figures are not for quoting; about 15 s each).
test: test-deps lint
	$(CARGO) test --release --workspace -- --test-threads=2
	$(CARGO) run --release -p lbctl-bench --bin lbctl-bench -- --quick
	$(CARGO) run --release -p lbctl-bench --bin lbctl-livebench -- --quick
	$(CARGO) run --release -p lbctl-bench --bin lbctl-applybench -- --quick

# docs/BENCHMARKS.md: the per-packet cost of the data path, then live
# forwarding and connection rates in the lab beside nftables and HAProxy.
# The fuzz test of `make test` (tests/fuzz.rs) with 10 million frames
# instead of 50,000; about 25 minutes here (docs/BENCHMARKS.md).
fuzz: test-deps
	FUZZ_FRAMES=10000000 $(CARGO) test --release --test fuzz -- --nocapture

# Tables on the terminal, JSON in target/bench/; about 15 minutes.
bench: test-deps
	$(CARGO) run --release -p lbctl-bench --bin lbctl-bench
	$(CARGO) run --release -p lbctl-bench --bin lbctl-livebench
	$(CARGO) run --release -p lbctl-bench --bin lbctl-applybench

# Builds, then balances real traffic through lbctl in a throwaway lab of
# network namespaces, checks everything it shows, and removes the lab.
demo: build test-deps
	$(CARGO) run --release --example demo -- $(DEMO_ARGS)

# The binary, its man pages and shell completions (generated by the binary
# itself, so they match it), contrib/lbctl.service with its ExecStart
# pointing at the installed binary, and the example /etc/lbctl/lbctl.toml
# if there is none. Builds with build-deps only: no lab package.
install: build
	install -D -m 0755 $${CARGO_TARGET_DIR:-target}/release/lbctl $(DESTDIR)$(PREFIX)/sbin/lbctl
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/local/sbin/lbctl|$(PREFIX)/sbin/lbctl|g' contrib/lbctl.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/lbctl.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/lbctl.service
	@# The commented example the unit reads, never over an operator's file.
	[ -e $(DESTDIR)/etc/lbctl/lbctl.toml ] || install -D -m 0644 contrib/lbctl.toml $(DESTDIR)/etc/lbctl/lbctl.toml
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	$(DESTDIR)$(PREFIX)/sbin/lbctl manpage --dir $(DESTDIR)$(PREFIX)/share/man/man8
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(DESTDIR)$(PREFIX)/sbin/lbctl completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/lbctl
	$(DESTDIR)$(PREFIX)/sbin/lbctl completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_lbctl
	$(DESTDIR)$(PREFIX)/sbin/lbctl completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/lbctl.fish

clean:
	$(CARGO) clean
