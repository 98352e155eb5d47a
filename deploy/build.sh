#!/bin/sh
# build.sh builds a subgate binary with the release flags. The container
# images run this same script, so the Dockerfile builds the same binary a
# human gets from it.
#
# usage: deploy/build.sh [output]        (run from the repository root)
#   output   path of the binary (default: bin/<name of PKG>)
# environment:
#   VERSION  version stamped into main.version (default: git describe, else "dev")
#   PKG      package to build (default: ./cmd/subgate; ./cmd/iotdasim for the simulator)
#   GOOS, GOARCH  cross-compile as usual
set -eu

PKG=${PKG:-./cmd/subgate}
OUT=${1:-bin/$(basename "$PKG")}
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi

# CGO_ENABLED=0: a static binary for distroless/static and any Linux.
# -trimpath: no local paths in the binary (reproducible builds).
# -buildvcs=false: the version comes from VERSION alone, also in a build
#   context without .git, so both ways of building agree.
# -s -w: no symbol table or DWARF; panics still print file:line.
CGO_ENABLED=0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=${VERSION}" \
	-o "$OUT" "$PKG"
