#!/usr/bin/env bash
# Make PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) reachable,
# in this order of preference:
#   1. the ones already running on localhost;
#   2. Docker Compose (compose.yaml), where a Docker engine runs;
#   3. the distribution's packages: start the installed server, or install
#      it first with apt-get (Debian/Ubuntu, as root).
# Idempotent: run it as often as you like. Used by `make run` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
	for _ in $(seq 1 "$3"); do
		port_open "$2" && return 0
		sleep 1
	done
	log "$1 did not come up on 127.0.0.1:$2 within $3s"
	return 1
}

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

start_postgres() {
	if docker_ok; then
		log "starting PostgreSQL with Docker Compose"
		docker compose up -d postgres
		return
	fi
	if ! command -v pg_ctlcluster >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
		log "installing PostgreSQL from the distribution's packages"
		as_root apt-get install -y -q postgresql >/dev/null
	fi
	if command -v pg_ctlcluster >/dev/null 2>&1; then
		log "starting the distribution's PostgreSQL"
		for v in $(ls /etc/postgresql); do
			as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
		done
		return
	fi
	log "cannot start PostgreSQL: no Docker engine and no pg_ctlcluster; start one on 127.0.0.1:5432"
	return 1
}

start_rabbitmq() {
	if docker_ok; then
		log "starting RabbitMQ with Docker Compose"
		docker compose up -d rabbitmq
		return
	fi
	if ! command -v rabbitmq-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
		log "installing RabbitMQ from the distribution's packages"
		as_root apt-get install -y -q rabbitmq-server >/dev/null
	fi
	if command -v rabbitmq-server >/dev/null 2>&1; then
		log "starting the distribution's RabbitMQ"
		as_root rabbitmq-server -detached >/dev/null 2>&1 || true
		return
	fi
	log "cannot start RabbitMQ: no Docker engine and no rabbitmq-server; start one on 127.0.0.1:5672"
	return 1
}

if ! port_open 5432; then
	start_postgres
	wait_port PostgreSQL 5432 60
fi
if ! port_open 5672; then
	start_rabbitmq
	wait_port RabbitMQ 5672 120
fi
# A port that answers is not always a broker that is ready.
if command -v rabbitmqctl >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
	timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
log "PostgreSQL and RabbitMQ are up"
