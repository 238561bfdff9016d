# etcd-sd: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
ETCD35 := $(CURDIR)/.tools/etcd-3.5

.PHONY: deps demo test test-rust test-etcd35 lint doc clean

## Install what is missing (etcd 3.4 + 3.5, etcdctl, protoc, valgrind, ...).
deps:
	@scripts/install-deps.sh

## Run the demo against a private etcd on loopback.
demo: deps
	$(CARGO) run --quiet --release --example demo

## Run every check and test: formatting, lints, unit, integration (etcd 3.4 and 3.5), docs.
test: deps lint test-rust test-etcd35
	@echo "make test: all passed"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## Unit tests, doc tests and integration tests against etcd 3.4 (Debian).
test-rust:
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## The integration suites again, against etcd 3.5.
test-etcd35: deps
	ETCD_BIN=$(ETCD35)/etcd ETCDCTL_BIN=$(ETCD35)/etcdctl $(CARGO) test --tests

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

clean:
	$(CARGO) clean
