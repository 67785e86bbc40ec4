#!/usr/bin/env bash
# `make run`: PostgreSQL and RabbitMQ up, database created, every service
# built and started in the foreground (Ctrl-C stops them all), a demo
# product stocked, and a curl to try printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=defaults.sh
source internal/scripts/defaults.sh
export HTTP_ADDR="${HTTP_ADDR:-:8080}"
export ADMIN_ADDR="${ADMIN_ADDR:-127.0.0.1:8081}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"
export LOG_LEVEL="${LOG_LEVEL:-info}"
export LOG_FORMAT="${LOG_FORMAT:-console}"
LOGS="${LOGS:-tmp/logs}"

internal/scripts/services.sh
make --no-print-directory build >/dev/null
bin/createdb

mkdir -p "$LOGS"
pids=()
stop() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

for svc in $(ls bin); do
	case "$svc" in orchestrator | inventory | payment | shipping | notification | audit) ;; *) continue ;; esac
	"bin/$svc" >>"$LOGS/$svc.log" 2>&1 &
	pids+=($!)
done

port="${HTTP_ADDR##*:}"
api="http://localhost:${port}"
admin="http://localhost:${ADMIN_ADDR##*:}"
for _ in $(seq 1 60); do
	if curl -fsS "$api/readyz" >/dev/null 2>&1; then break; fi
	for pid in "${pids[@]}"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "a service exited at start; its log in $LOGS says why:" >&2
			tail -n 5 "$LOGS"/*.log >&2
			exit 1
		fi
	done
	sleep 0.5
done
curl -fsS "$api/readyz" >/dev/null || { echo "the API did not become ready; see $LOGS" >&2; exit 1; }
curl -fsS -X PUT "$admin/admin/products/sku-demo" -H "Authorization: Bearer $ADMIN_TOKEN" \
	-H 'Content-Type: application/json' -d '{"name":"Demo Widget","price_cents":1999,"available":1000}' >/dev/null

cat <<MSG

sagaflow is running. API: $api   admin: $admin (admin token: $ADMIN_TOKEN)   logs: $LOGS/

Place an order (sku-demo is stocked with 1000):
  curl -s -X POST $api/orders -H 'Content-Type: application/json' \\
    -d '{"customer_id":"c-1","items":[{"sku":"sku-demo","quantity":2}],"payment_token":"tok_visa","shipping_address":{"line1":"1 Main St","city":"Springfield","country":"US"},"priority":"normal"}'
Then follow it:
  curl -s $api/orders/<order_id>

Ctrl-C stops every service.
MSG
wait -n "${pids[@]}" || true
echo "a service stopped; see $LOGS" >&2
