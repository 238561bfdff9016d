#!/usr/bin/env bash
# The layout invariants of ARCHITECTURE.md ("Layout, checked by grep"), run by
# `make lint`. Each check prints the offending lines and fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0

check() { # check "what must hold" <lines that break it>
  local what=$1 found=$2
  if [ -n "$found" ]; then
    echo "layout: $what; found:"
    echo "$found" | sed 's/^/  /'
    status=1
  fi
}

# 1. The runtime (src/runtime/) sits below the handles: it never names them
#    (etcd-client's own `etcd_client::Client` aside) nor imports their modules.
check "nothing under src/runtime/ names Client, Registrar or Instancer" \
  "$(grep -rnwE 'Client|Registrar|Instancer' src/runtime | grep -v 'etcd_client::Client')"
check "nothing under src/runtime/ imports a handle module" \
  "$(grep -rnE 'crate::(client|registrar|instancer)\b' src/runtime)"

# 2. etcd-client is the runtime's business (and the error classifier's).
check "etcd_client is named only under src/runtime/ and in src/error.rs" \
  "$(grep -rn 'etcd_client' src --include='*.rs' | grep -vE '^src/(runtime/|error\.rs)')"

# 3. All unsafe code is under src/ffi/ (the crate root denies it).
check "the crate root denies unsafe code" \
  "$(grep -q '^#!\[deny(unsafe_code)\]' src/lib.rs || echo 'src/lib.rs: no #![deny(unsafe_code)]')"
check "unsafe code only under src/ffi/" \
  "$(grep -rnE 'unsafe *(\{|fn|impl|extern)|allow\(unsafe_code\)' src --include='*.rs' | grep -v '^src/ffi/')"

# 4. The only import circle between the handles is Client::register's sugar
#    over Registrar: instancer.rs and registrar.rs may use client.rs, and
#    client.rs only registrar.rs.
check "client.rs imports no handle but registrar.rs" \
  "$(grep -nE 'crate::instancer\b' src/client.rs)"
check "the dispatcher and the shared modules import no handle" \
  "$(grep -rnE 'crate::(client|registrar|instancer)\b' src/dispatch src/registration.rs src/options.rs src/error.rs src/instances.rs)"

if [ "$status" -eq 0 ]; then
  echo "layout: all checks hold"
fi
exit "$status"
