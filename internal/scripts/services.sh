#!/usr/bin/env bash
# `make services`: make PostgreSQL and RabbitMQ reachable with the
# credentials of .env (DATABASE_URL, AMQP_URL, RABBITMQ_MANAGEMENT_URL), in
# this order of preference:
#   1. the servers already listening on localhost;
#   2. Docker Compose (compose.yaml), where a Docker engine runs;
#   3. the distribution's packages (Debian, Ubuntu): start the installed
#      servers, or install them first (apt-get update, apt-get install), as
#      root or with sudo.
# Then, on a local PostgreSQL that refuses the login, create the role of
# DATABASE_URL (LOGIN CREATEDB, with its password) as the server's
# superuser; and on a local RabbitMQ, enable the management plugin, which
# the tests and the benchmark use to create vhosts. It says what it does
# before doing it, and does nothing that is already done: run it as often as
# you like. Servers elsewhere than localhost are only checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=defaults.sh
source internal/scripts/defaults.sh

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # name host port seconds
	for _ in $(seq 1 "$4"); do
		port_open "$2" "$3" && return 0
		sleep 1
	done
	die "$1 did not come up on $2:$3 within $4s"
}

is_local() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ] || [ "$1" = ::1 ]; }

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root for: $* (run as root, or install sudo)"
	fi
}

apt_updated=""
apt_install() {
	command -v apt-get >/dev/null 2>&1 || return 1
	if [ -z "$apt_updated" ]; then
		log "apt-get update (the package lists may be empty on a new machine)"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
		apt_updated=1
	fi
	log "installing $* with apt-get"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

compose_up() {
	log "starting $* with Docker Compose (waiting until healthy)"
	docker compose up -d --wait "$@"
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

start_postgres() {
	if docker_ok; then
		compose_up postgres
		return
	fi
	if ! command -v pg_ctlcluster >/dev/null 2>&1; then
		apt_install postgresql || die "cannot start PostgreSQL: no Docker engine, no apt-get; start one on $PG_HOST:$PG_PORT"
	fi
	if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
		log "creating a PostgreSQL cluster (pg_createcluster)"
		as_root pg_createcluster "$(basename "$(dirname "$(pg_bindir)")")" main
	fi
	for v in $(ls /etc/postgresql); do
		log "starting the distribution's PostgreSQL $v (pg_ctlcluster $v main start)"
		as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
	done
}

start_rabbitmq() {
	if docker_ok; then
		compose_up rabbitmq
		return
	fi
	if ! command -v rabbitmq-server >/dev/null 2>&1; then
		apt_install rabbitmq-server || die "cannot start RabbitMQ: no Docker engine, no apt-get; start one on $AMQP_HOST:$AMQP_PORT"
	fi
	if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
		log "starting the distribution's RabbitMQ (rabbitmq-server -detached)"
		as_root rabbitmq-server -detached >/dev/null 2>&1 || true
	fi
}

# The login of DATABASE_URL: 0 works, 3 refused, else unreachable or
# broken; the server's answer is left in $pg_error.
pg_error=""
pg_login() {
	local code=0
	go build -o bin/createdb ./internal/cmd/createdb
	pg_error=$(bin/createdb -check 2>&1) || code=$?
	return "$code"
}

# Creates (or repairs) the role of DATABASE_URL as the superuser of a local
# Debian cluster, over its Unix socket (peer authentication).
create_pg_role() {
	command -v psql >/dev/null 2>&1 && id postgres >/dev/null 2>&1 ||
		die "PostgreSQL refuses $PG_USER and this is not a local Debian cluster: create the role yourself, e.g.
  CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
or set DATABASE_URL to a role that can log in and create databases."
	log "creating the PostgreSQL role $PG_USER (LOGIN CREATEDB, password from .env) as the postgres superuser"
	# psql quotes the values itself (:'name'); format() quotes them again as
	# an identifier and a literal for the statement it builds.
	as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres \
		-v user="$PG_USER" -v password="$PG_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'password') \gexec
SQL
}

# PostgreSQL.
if ! port_open "$PG_HOST" "$PG_PORT"; then
	is_local "$PG_HOST" || die "PostgreSQL does not answer on $PG_HOST:$PG_PORT (DATABASE_URL)"
	start_postgres
	wait_port PostgreSQL "$PG_HOST" "$PG_PORT" 60
fi
code=0
pg_login || code=$?
if [ "$code" = 3 ] && is_local "$PG_HOST" && ! docker_ok; then
	log "PostgreSQL refuses $PG_USER: ${pg_error#createdb: }"
	create_pg_role
	pg_login || die "PostgreSQL still refuses $PG_USER after creating it: $pg_error"
elif [ "$code" = 3 ]; then
	die "PostgreSQL on $PG_HOST:$PG_PORT refuses $PG_USER: $pg_error
With Docker, a volume made by an older compose.yaml keeps its old users: docker compose down -v"
elif [ "$code" != 0 ]; then
	die "cannot log in to PostgreSQL: $pg_error"
fi

# RabbitMQ.
if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
	is_local "$AMQP_HOST" || die "RabbitMQ does not answer on $AMQP_HOST:$AMQP_PORT (AMQP_URL)"
	start_rabbitmq
	wait_port RabbitMQ "$AMQP_HOST" "$AMQP_PORT" 120
fi
# A port that answers is not always a broker that is ready.
if command -v rabbitmqctl >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
	timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
if ! port_open "$AMQP_HOST" "$MGMT_PORT"; then
	is_local "$AMQP_HOST" && command -v rabbitmq-plugins >/dev/null 2>&1 ||
		die "RabbitMQ's management API does not answer on port $MGMT_PORT (RABBITMQ_MANAGEMENT_URL); enable the rabbitmq_management plugin"
	log "enabling RabbitMQ's management plugin (rabbitmq-plugins enable rabbitmq_management)"
	as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
	wait_port "RabbitMQ's management API" "$AMQP_HOST" "$MGMT_PORT" 60
fi
log "PostgreSQL ($PG_HOST:$PG_PORT, role $PG_USER) and RabbitMQ ($AMQP_HOST:$AMQP_PORT, management :$MGMT_PORT) are up"

# Chromium (Debian's chromium package), which the suite drives headless to
# test the operator console.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
	apt_install --no-install-recommends chromium || log "could not install Chromium; the console's browser test will skip (fail under CI=true)"
fi

# promtool (Debian's prometheus package), which the suite uses to check the
# shipped alerting rules (deploy/prometheus). Installing the package must
# not leave a Prometheus server running or enabled on this machine: the
# package's start is refused while it installs (policy-rc.d), and its unit
# disabled where systemd runs.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
	guard=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		guard=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' | as_root tee "$guard" >/dev/null && as_root chmod 755 "$guard"
	fi
	apt_install --no-install-recommends prometheus || log "could not install promtool; the rules checks will skip (fail under CI=true)"
	[ -n "$guard" ] && as_root rm -f "$guard"
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
	fi
fi
