#!/usr/bin/env bash
# Three `flowcast serve` instances on one PostgreSQL ledger, against the
# built-in Studio simulator, from this repository's campaigns/ folder.
#
#   examples/three-instances.sh                 # starts PostgreSQL in Docker
#   FLOWCAST_DB=postgres://user@host/db examples/three-instances.sh
#
# Each instance gets its own copy of campaigns/ (as three machines would),
# its own API port (8081, 8082, 8083) and a name (one, two, three). Watch
# who leads with `curl -s localhost:8081/api/instances`, kill one with
# `kill -9 PID` (the PIDs are printed), and see the others carry on.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
flowcast=target/release/flowcast
work=$(mktemp -d)
pids=()
container=""
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -z "${FLOWCAST_DB:-}" ]; then
  container=flowcast-example-postgres
  docker run -d --rm --name "$container" -p 55432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16 >/dev/null
  export FLOWCAST_DB=postgres://postgres@127.0.0.1:55432/postgres
  until docker exec "$container" pg_isready -q; do sleep 0.5; done
fi
echo "ledger: ${FLOWCAST_DB%%\?*}"

"$flowcast" simulator --listen 127.0.0.1:4010 --lifetime 2s --rate-cap 20 &
pids+=($!)
export FLOWCAST_STUDIO_URL=http://127.0.0.1:4010 FLOWCAST_RATE=20
export TWILIO_ACCOUNT_SID=ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa TWILIO_AUTH_TOKEN=demo-token

for i in 1 2 3; do
  name=$(echo one two three | cut -d' ' -f"$i")
  mkdir -p "$work/$name"
  cp -r campaigns "$work/$name/campaigns"
  FLOWCAST_INSTANCE=$name FLOWCAST_LISTEN=127.0.0.1:808$i \
    "$flowcast" --campaigns "$work/$name/campaigns" --flows flows serve &
  pids+=($!)
  echo "instance $name: pid $!, http://127.0.0.1:808$i"
done
wait
