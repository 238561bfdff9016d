# etcd-sd: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
ETCD35 := $(CURDIR)/.tools/etcd-3.5

# Benchmarks: each starts its own etcd on loopback; `bench` rewrites BENCHMARKS.md.
bench: deps
	$(CARGO) bench --bench bench

bench-quick: deps
	BENCH_QUICK=1 $(CARGO) bench --bench bench

.PHONY: bench bench-quick deps demo test test-rust test-etcd35 lint doc soak package clean

## Install what is missing (etcd 3.4 + 3.5, etcdctl, protoc, valgrind, ...).
deps:
	@scripts/install-deps.sh

## Run the demo against a private etcd on loopback.
demo: deps
	$(CARGO) run --quiet --release --example demo

## Run every check and test: formatting, lints, docs, unit, doc tests,
## integration (etcd 3.4 and 3.5), the C API and install.
test: deps lint doc test-rust test-etcd35 test-c
	@echo "make test: all passed"

lint:
	scripts/check-layout.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --features cli -- -D warnings
	$(CARGO) clippy --all-targets --features cli,metrics -- -D warnings

## Unit tests, doc tests and integration tests against etcd 3.4 (Debian).
test-rust:
	$(CARGO) test --all-targets --features cli
	$(CARGO) test --doc --features cli
	$(CARGO) test --features metrics --lib --test metrics

## The integration suites again, against etcd 3.5.
test-etcd35: deps
	ETCD_BIN=$(ETCD35)/etcd ETCDCTL_BIN=$(ETCD35)/etcdctl $(CARGO) test --tests --features cli

## The API docs, with every rustdoc warning (e.g. a broken intra-doc link) an error.
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features cli,metrics

## What `cargo package` would ship, and a dry run of `cargo publish` (which
## builds the packaged crate). Needs crates.io; not part of `make test`.
package:
	$(CARGO) package --list
	$(CARGO) publish --dry-run

## Soak (not part of `make test`): 1,000 registrars and 50 instancers on one
## client, churn and etcd restarts for SOAK_SECS (default 120) seconds.
soak: deps
	$(CARGO) run --release --example soak

clean:
	$(CARGO) clean

# ---------------------------------------------------------------------------
# The C API: header, C/C++ tests, install.

.PHONY: header test-c install uninstall install-check

PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
## Which build `make install` takes: release (default) or debug.
PROFILE ?= release
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
# What the static library needs besides itself (rustc --print native-static-libs).
LIBS_PRIVATE := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)

## Regenerate include/etcd_sd.h from src/ffi/ (commit the result).
header:
	ETCD_SD_WRITE_HEADER=1 $(CARGO) build --lib

## The C API tests: the C suite as C11 and C++17, the C++ wrapper, the
## examples, the C suite under valgrind, then install/pkg-config/CMake.
test-c: deps
	$(CARGO) test --test c_api
	$(CARGO) test --test c_api -- --ignored --nocapture
	$(MAKE) --no-print-directory install-check

## Install the headers, the shared library (soname libetcd_sd.so.$(SOMAJOR)),
## the static library and etcd_sd.pc under $(DESTDIR)$(PREFIX).
install:
	$(CARGO) build --lib $(PROFILE_FLAG)
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 include/etcd_sd.h bindings/cpp/etcd_sd.hpp $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(TARGET_DIR)/$(PROFILE)/libetcd_sd.so $(DESTDIR)$(LIBDIR)/libetcd_sd.so.$(VERSION)
	ln -sf libetcd_sd.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libetcd_sd.so.$(SOMAJOR)
	ln -sf libetcd_sd.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libetcd_sd.so
	install -m 644 $(TARGET_DIR)/$(PROFILE)/libetcd_sd.a $(DESTDIR)$(LIBDIR)/libetcd_sd.a
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|g' etcd_sd.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/etcd_sd.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/etcd_sd.pc

## Remove what `make install` put there (same PREFIX and DESTDIR).
uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/etcd_sd.h $(DESTDIR)$(INCLUDEDIR)/etcd_sd.hpp
	rm -f $(DESTDIR)$(LIBDIR)/libetcd_sd.so $(DESTDIR)$(LIBDIR)/libetcd_sd.so.$(SOMAJOR)
	rm -f $(DESTDIR)$(LIBDIR)/libetcd_sd.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libetcd_sd.a
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/etcd_sd.pc

## Install into a temporary DESTDIR, build the examples there with plain
## cc/c++ and pkg-config (shared and static) and with CMake, run them,
## uninstall, and check that nothing is left.
install-check:
	@set -euo pipefail; \
	stage=$$(mktemp -d); trap 'rm -rf "$$stage"' EXIT; \
	root="$$stage/root"; build="$$stage/build"; mkdir -p "$$build"; \
	$(MAKE) --no-print-directory install DESTDIR="$$root" PREFIX=/usr/local PROFILE=debug; \
	export PKG_CONFIG_PATH="$$root/usr/local/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$$root"; \
	export LD_LIBRARY_PATH="$$root/usr/local/lib"; \
	test "$$(pkg-config --modversion etcd_sd)" = "$(VERSION)"; \
	readelf -d "$$root/usr/local/lib/libetcd_sd.so" | grep -q 'SONAME.*libetcd_sd.so.$(SOMAJOR)'; \
	for ex in registrar watcher_callback watcher_poll; do \
	  cc -std=c11 -Wall -Wextra -Werror examples/c/$$ex.c $$(pkg-config --cflags --libs etcd_sd) -o "$$build/$$ex"; \
	done; \
	c++ -std=c++17 -Wall -Wextra -Werror examples/cpp/service.cpp $$(pkg-config --cflags --libs etcd_sd) -lpthread -o "$$build/service"; \
	cc -std=c11 -Wall -Wextra -Werror examples/cmake/hello.c $$(pkg-config --cflags etcd_sd) \
	  "$$root/usr/local/lib/libetcd_sd.a" $$(pkg-config --static --libs-only-l etcd_sd | sed 's/-letcd_sd//') -o "$$build/hello_static"; \
	"$$build/hello_static" | grep -q "etcd-sd $(VERSION)"; \
	readelf -d "$$build/registrar" | grep -q 'NEEDED.*libetcd_sd.so.$(SOMAJOR)'; \
	cmake -S examples/cmake -B "$$build/cmake" >/dev/null; \
	cmake --build "$$build/cmake" >/dev/null; \
	"$$build/cmake/etcd_sd_hello" | grep -q "etcd-sd $(VERSION)"; \
	"$$build/cmake/etcd_sd_hello_cpp" | grep -q "etcd-sd $(VERSION)"; \
	$(MAKE) --no-print-directory uninstall DESTDIR="$$root" PREFIX=/usr/local; \
	left=$$(find "$$root" -type f -o -type l); \
	if [ -n "$$left" ]; then echo "uninstall left: $$left"; exit 1; fi; \
	echo "install-check: install, pkg-config (shared and static), CMake, uninstall: ok"
