# Sourced by the scripts: exports each variable of the repository's .env
# that the environment does not set yet (expanded, so a SAGAFLOW_PG_PASSWORD
# set by the caller ends up in DATABASE_URL too), and splits the URLs into
# the hosts and ports the scripts check.
# shellcheck shell=bash

sagaflow_defaults() {
	local root line key value
	root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in '' | '#'*) continue ;; esac
		key=${line%%=*}
		value=${line#*=}
		if [ -z "${!key+x}" ]; then
			eval "export $key=\"$value\""
		fi
	done <"$root/.env"
	# postgres://user:password@host:port/db?params
	local re='^[a-z]+://([^:@/]*)(:([^@/]*))?@([^:/?]+)(:([0-9]+))?(/([^?]*))?'
	[[ $DATABASE_URL =~ $re ]] || { echo "DATABASE_URL: cannot read $DATABASE_URL" >&2; return 1; }
	PG_USER=${BASH_REMATCH[1]} PG_PASSWORD=${BASH_REMATCH[3]} PG_HOST=${BASH_REMATCH[4]}
	PG_PORT=${BASH_REMATCH[6]:-5432} PG_DATABASE=${BASH_REMATCH[8]}
	[[ $AMQP_URL =~ $re ]] || { echo "AMQP_URL: cannot read $AMQP_URL" >&2; return 1; }
	AMQP_HOST=${BASH_REMATCH[4]} AMQP_PORT=${BASH_REMATCH[6]:-5672}
	[[ $RABBITMQ_MANAGEMENT_URL =~ $re ]] || { echo "RABBITMQ_MANAGEMENT_URL: cannot read $RABBITMQ_MANAGEMENT_URL" >&2; return 1; }
	MGMT_PORT=${BASH_REMATCH[6]:-15672}
}
sagaflow_defaults

# rabbitmq_api METHOD PATH [JSON]: a call to RabbitMQ's management HTTP API
# (PATH below /api), with the credentials of RABBITMQ_MANAGEMENT_URL.
rabbitmq_api() {
	curl -fsS -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "${RABBITMQ_MANAGEMENT_URL%/}/api$2"
}
