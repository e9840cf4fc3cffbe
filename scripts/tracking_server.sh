#!/usr/bin/env bash
# A real MLflow tracking server: PostgreSQL (Debian's postgresql package, its own cluster,
# listening on 127.0.0.1 only, password authentication) as the backend store and a folder as
# the artifact store, proxied by the server (clients need no access to it).
#
#   scripts/tracking_server.sh start    # then: export MLFLOW_TRACKING_URI=<printed URI>
#   scripts/tracking_server.sh stop
#
# Settings from the environment: VAELAB_SERVER_DIR (default .vaelab/server), VAELAB_SERVER_PORT
# (5000), VAELAB_PG_PORT (5433), VAELAB_PG_BIN (PostgreSQL's bin folder; default the newest
# installed), VAELAB_ARTIFACTS (default $VAELAB_SERVER_DIR/artifacts; an s3://bucket/path for a
# team, with AWS_* / MLFLOW_S3_ENDPOINT_URL in the environment), VAELAB_SERVER_HOST (127.0.0.1)
# and VAELAB_SERVER_AUTH (empty, or "basic" for MLflow's basic-auth app).
#
# Any host that does not resolve only to loopback addresses needs VAELAB_SERVER_AUTH=basic:
# the script refuses to serve a network without authentication. With it, the admin password
# (user "admin") and the Flask secret key are generated on first start and kept in
# $VAELAB_SERVER_DIR; everything the script creates there is private (umask 077). Clients set
# MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD. Only the Host headers of this server are
# accepted (--allowed-hosts). Put TLS in front (a reverse proxy) before sending passwords over a
# network. The database password is generated too and reaches MLflow through PGPASSWORD, never a
# command line or params.yaml.
set -euo pipefail

action=${1:?usage: $0 start|stop}
dir=$(realpath -m "${VAELAB_SERVER_DIR:-.vaelab/server}")
port=${VAELAB_SERVER_PORT:-5000}
host=${VAELAB_SERVER_HOST:-127.0.0.1}
auth=${VAELAB_SERVER_AUTH:-}
pg_port=${VAELAB_PG_PORT:-5433}

case "$auth" in
  "" | basic) ;;
  *) echo "VAELAB_SERVER_AUTH=$auth: use 'basic' (MLflow's basic-auth app) or leave it empty" >&2
     exit 1 ;;
esac
mlflow=$(command -v mlflow) || { echo "mlflow not on PATH: activate .venv" >&2; exit 1; }
python=$(dirname "$mlflow")/python
[ -x "$python" ] || python=python3

loopback() {  # whether every address host $1 resolves to is a loopback one (by address)
  "$python" - "$1" <<'PY'
import ipaddress, socket, sys
try:
    found = {info[4][0].split("%")[0] for info in socket.getaddrinfo(sys.argv[1], None)}
except (socket.gaierror, UnicodeError):
    sys.exit(1)
sys.exit(0 if found and all(ipaddress.ip_address(a).is_loopback for a in found) else 1)
PY
}

if [ "$action" = start ] && [ "$auth" != basic ] && ! loopback "$host"; then
  echo "refusing to serve $host:$port without authentication: it is not (or does not resolve" \
    "only to) a loopback address, and anyone who reaches it could read or delete runs. Set" \
    "VAELAB_SERVER_AUTH=basic (MLflow's basic-auth app, admin password generated into" \
    "$dir/admin-password), or serve 127.0.0.1" >&2
  exit 1
fi

pgbin=${VAELAB_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -n "$pgbin" ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }

secret() {  # a new random secret in file $1 (mode 600), unless it already holds one
  if [ ! -s "$1" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$1")
  fi
}

# initdb refuses to run as root: as root the cluster belongs to the postgres system user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start() {
  umask 077  # the folder, the password hashes (basic_auth.db), logs and secrets: owner only
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    # as root, the postgres system user must pass through (not list) the folder
    if [ "$(id -u)" = 0 ]; then chmod 711 "$dir"; fi
  fi
  artifacts=${VAELAB_ARTIFACTS:-$dir/artifacts}
  case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac
  cd "$dir"  # commands run as the postgres user start in a folder it can enter
  secret "$dir/pgpassword"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$dir"; then
    echo "the postgres system user cannot reach $dir (a parent folder is private):" \
      "set VAELAB_SERVER_DIR to a folder under a world-traversable path" >&2
    exit 1
  fi
  if [ ! -d "$dir/pgdata" ]; then
    mkdir -p "$dir/pgdata"
    cp "$dir/pgpassword" "$dir/pgdata.pw"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pgdata" "$dir/pgdata.pw"; fi
    if ! as_pg "$pgbin/initdb" -D "$dir/pgdata" -U mlflow --pwfile="$dir/pgdata.pw" \
      --auth=scram-sha-256 >"$dir/initdb.log" 2>&1; then
      rm -rf "$dir/pgdata" "$dir/pgdata.pw" "$dir/pgpassword"
      echo "initdb failed (see $dir/initdb.log); nothing of the cluster or its password is" \
        "left behind" >&2
      exit 1
    fi
    rm -f "$dir/pgdata.pw"
  fi
  if ! as_pg "$pgbin/pg_ctl" -D "$dir/pgdata" status >/dev/null 2>&1; then
    as_pg "$pgbin/pg_ctl" -D "$dir/pgdata" -w -l "$dir/pgdata/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir/pgdata" start >/dev/null
  fi
  export PGPASSWORD
  PGPASSWORD=$(cat "$dir/pgpassword")
  "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U mlflow -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1 ||
    "$pgbin/createdb" -h 127.0.0.1 -p "$pg_port" -U mlflow mlflow
  app=()
  if [ "$auth" = basic ]; then
    secret "$dir/admin-password"
    secret "$dir/secret-key"
    cat >"$dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$dir/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
    MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$dir/admin-password")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$dir/secret-key")
    export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
    app=(--app-name basic-auth)
  fi
  MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow@127.0.0.1:$pg_port/mlflow" \
    nohup "$mlflow" server --host "$host" --port "$port" --workers 2 "${app[@]}" \
      --allowed-hosts "$host:$port,$host,localhost:$port,127.0.0.1:$port" \
      --artifacts-destination "$artifacts" >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"
  for _ in $(seq 240); do
    if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 ||
       python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
         "http://127.0.0.1:$port/health" 2>/dev/null; then
      echo "http://$host:$port"
      return 0
    fi
    kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null || break
    sleep 0.5
  done
  echo "the MLflow server did not come up; see $dir/mlflow.log" >&2
  exit 1
}

stop() {
  cd "$dir" 2>/dev/null || return 0
  if [ -s "$dir/mlflow.pid" ]; then
    kill "$(cat "$dir/mlflow.pid")" 2>/dev/null || true
    rm -f "$dir/mlflow.pid"
  fi
  if [ -d "$dir/pgdata" ]; then
    as_pg "$pgbin/pg_ctl" -D "$dir/pgdata" -m fast stop >/dev/null 2>&1 || true
  fi
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
