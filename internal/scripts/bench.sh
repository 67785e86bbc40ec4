#!/usr/bin/env bash
# `make bench`: a fresh deployment (its own database and vhost, every
# service), the load generator with BENCH_ARGS (default: the standard
# scenario), the figures on stdout and as JSON in tmp/bench/.
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCH_ARGS="${BENCH_ARGS:--scenario steady -rate 500 -duration 60s}"
NAME=sagaflow_bench
PORT="${BENCH_PORT:-18080}"
# shellcheck source=defaults.sh
source internal/scripts/defaults.sh
export DATABASE_URL="postgres://${PG_USER}:${PG_PASSWORD}@${PG_HOST}:${PG_PORT}/${NAME}?sslmode=disable"
export ADMIN_TOKEN=bench-token LOG_LEVEL="${LOG_LEVEL:-warn}" HTTP_ADDR="127.0.0.1:${PORT}" ADMIN_ADDR="127.0.0.1:$((PORT + 1))"
LOGS=tmp/bench/logs
mkdir -p "$LOGS"
# One run at a time: a second one would drop the database under the first.
exec 9>tmp/bench/lock
flock -n 9 || { echo "bench: another make bench is running" >&2; exit 1; }

internal/scripts/services.sh
go build -o bin/createdb ./internal/cmd/createdb
bin/createdb -fresh
# A vhost of its own for each run, removed at the end: re-creating one of
# the same name at once can find its queues' processes still shutting down.
VHOST="${NAME}_$(date +%s)_$$"
rabbitmq_api PUT "/vhosts/$VHOST" >/dev/null
rabbitmq_api PUT "/permissions/$VHOST/$SAGAFLOW_AMQP_USER" '{"configure":".*","write":".*","read":".*"}' >/dev/null
export AMQP_URL="${AMQP_URL%/}/${VHOST}"
make --no-print-directory build >/dev/null

pids=()
stop() {
	trap - INT TERM EXIT
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
	rabbitmq_api DELETE "/vhosts/$VHOST" >/dev/null 2>&1 || true
}
trap stop INT TERM EXIT
port=19100
for svc in orchestrator inventory payment shipping notification audit; do
	port=$((port + 1))
	METRICS_ADDR="127.0.0.1:${port}" PPROF_ADDR="127.0.0.1:$((port + 100))" "bin/$svc" >"$LOGS/$svc.log" 2>&1 &
	pids+=($!)
done
for _ in $(seq 1 100); do
	curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null 2>&1 && break
	sleep 0.2
done
curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null || { echo "not ready; see $LOGS" >&2; exit 1; }

out="tmp/bench/$(date -u +%Y%m%dT%H%M%SZ).json"
echo "bench $BENCH_ARGS  (services' logs: $LOGS, report: $out)"
# shellcheck disable=SC2086
bin/bench -api "http://127.0.0.1:${PORT}" -admin "http://127.0.0.1:$((PORT + 1))" $BENCH_ARGS -json "$out"
