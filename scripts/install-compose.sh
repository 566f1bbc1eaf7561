#!/usr/bin/env bash
# Installs the `docker compose` CLI plugin when missing, built from its Go module (the Go module
# proxy is reachable here; Docker's download site is not). Only `docker compose config` is used:
# it validates the compose files without a Docker engine.
set -euo pipefail
VERSION=v2.40.3
if docker compose version >/dev/null 2>&1; then exit 0; fi
command -v go >/dev/null || { echo "install Go to build the docker compose plugin" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$(cd "$work" && go mod download -json "github.com/docker/compose/v2@$VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$dir" "$work/src" && chmod -R u+w "$work/src"
echo "building docker compose $VERSION (a few minutes, once per machine)…" >&2
(cd "$work/src" && go build -trimpath -ldflags "-s -w" -o "$work/docker-compose" ./cmd)
mkdir -p "$HOME/.docker/cli-plugins"
install -m 0755 "$work/docker-compose" "$HOME/.docker/cli-plugins/docker-compose"
docker compose version
