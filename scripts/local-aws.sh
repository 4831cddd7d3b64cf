#!/usr/bin/env bash
# The local AWS stack: kinesis-mock (Kinesis) and DynamoDB Local, on loopback.
#
#   scripts/local-aws.sh up       install if needed, start both, wait until they answer
#   scripts/local-aws.sh down     stop the processes `up` started (by their recorded PIDs)
#   scripts/local-aws.sh status   say what is running; exit 0 only if both are up
#   scripts/local-aws.sh env      print the exports a client needs:  eval "$(scripts/local-aws.sh env)"
#
# Both emulators come from npm at pinned versions and live in .local-aws/ (git-ignored):
# kinesis-local (kinesis-mock compiled to JavaScript) and the DynamoDB Local jar that ships
# inside amplify-dynamodb-simulator. Running `up` twice or `down` with nothing running is
# harmless.
#
# Settings (environment):
#   LOCAL_AWS_KINESIS_PORT      kinesis-mock plain HTTP port   (default 4568)
#   LOCAL_AWS_KINESIS_TLS_PORT  kinesis-mock HTTPS port        (default 4567)
#   LOCAL_AWS_DYNAMODB_PORT     DynamoDB Local port            (default 8000)
#   LOCAL_AWS_DIR               install and state folder       (default <repo>/.local-aws)
#   LOCAL_AWS_START_TIMEOUT     seconds to wait for each to answer (default 60)
set -euo pipefail

KINESIS_LOCAL_VERSION=0.6.2
DYNAMODB_SIMULATOR_VERSION=2.9.30

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${LOCAL_AWS_DIR:-$ROOT/.local-aws}
RUN=$DIR/run
KINESIS_PORT=${LOCAL_AWS_KINESIS_PORT:-4568}
KINESIS_TLS_PORT=${LOCAL_AWS_KINESIS_TLS_PORT:-4567}
DYNAMODB_PORT=${LOCAL_AWS_DYNAMODB_PORT:-8000}
START_TIMEOUT=${LOCAL_AWS_START_TIMEOUT:-60}

KINESIS_HOME=$DIR/kinesis-local-$KINESIS_LOCAL_VERSION
DYNAMODB_HOME=$DIR/dynamodb-local-$DYNAMODB_SIMULATOR_VERSION

say() { echo "local-aws: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

apt_install() {
  say "installing Debian packages: $*"
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
  command -v curl >/dev/null || apt_install curl
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v npm >/dev/null || apt_install nodejs npm
}

# npm_unpack PACKAGE@VERSION DEST: fetch the package tarball from the npm registry and unpack
# it into DEST, all or nothing (a half-finished install is never mistaken for a finished one).
npm_unpack() {
  local spec=$1 dest=$2 tmp
  tmp=$(mktemp -d "$DIR/.install.XXXXXX")
  say "installing $spec into ${dest#"$ROOT"/}"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null 2>npm.log) || {
    cat "$tmp/npm.log" >&2; rm -rf "$tmp"; die "npm pack $spec failed"
  }
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  rm -rf "$dest"
  mv "$tmp/package" "$dest"
  rm -rf "$tmp"
}

install() {
  mkdir -p "$DIR" "$RUN"
  [ -f "$KINESIS_HOME/main.js" ] || npm_unpack "kinesis-local@$KINESIS_LOCAL_VERSION" "$KINESIS_HOME"
  [ -f "$DYNAMODB_HOME/emulator/DynamoDBLocal.jar" ] ||
    npm_unpack "amplify-dynamodb-simulator@$DYNAMODB_SIMULATOR_VERSION" "$DYNAMODB_HOME"
}

# running NAME: print the recorded PID of NAME if that process is alive and is still the
# emulator we started (a recycled PID belongs to someone else and is left alone).
running() {
  local name=$1 pidfile=$RUN/$1.pid pid marker
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  case $name in
    kinesis) marker=$KINESIS_HOME/main.js ;;
    dynamodb) marker=DynamoDBLocal.jar ;;
  esac
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$marker"; then
    echo "$pid"
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

answers() {
  case $1 in
    kinesis) curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$KINESIS_PORT/healthcheck" ;;
    # DynamoDB Local answers an unsigned request with HTTP 400 and a JSON error: it is up.
    dynamodb) curl -sS -o /dev/null --max-time 2 "http://127.0.0.1:$DYNAMODB_PORT/" ;;
  esac
} 2>/dev/null

start_kinesis() {
  (
    cd "$RUN"
    export KINESIS_MOCK_CERT_PATH=$KINESIS_HOME/server.json
    export KINESIS_MOCK_PLAIN_PORT=$KINESIS_PORT KINESIS_MOCK_TLS_PORT=$KINESIS_TLS_PORT
    # Stream operations complete in a blink so tests do not wait on them.
    for op in CREATE_STREAM DELETE_STREAM REGISTER_STREAM_CONSUMER DEREGISTER_STREAM_CONSUMER \
      MERGE_SHARDS SPLIT_SHARD UPDATE_SHARD_COUNT UPDATE_STREAM_MODE \
      START_STREAM_ENCRYPTION STOP_STREAM_ENCRYPTION; do
      export "${op}_DURATION=100ms"
    done
    # Tests run in parallel, each on its own streams: lift the account-wide limits.
    export SHARD_LIMIT=100000 ON_DEMAND_STREAM_COUNT_LIMIT=1000
    export LOG_LEVEL=WARN AWS_REGION=us-east-1
    exec setsid node "$KINESIS_HOME/main.js" </dev/null >"$RUN/kinesis.log" 2>&1
  ) &
  echo $! >"$RUN/kinesis.pid"
}

start_dynamodb() {
  (
    cd "$DYNAMODB_HOME/emulator"
    exec setsid java -Djava.library.path=./DynamoDBLocal_lib -Xmx1g -jar DynamoDBLocal.jar \
      -inMemory -sharedDb -disableTelemetry -port "$DYNAMODB_PORT" \
      </dev/null >"$RUN/dynamodb.log" 2>&1
  ) &
  echo $! >"$RUN/dynamodb.pid"
}

# up_one NAME PORT: start NAME unless it already runs, then wait (bounded) until it answers.
up_one() {
  local name=$1 port=$2 pid deadline
  if pid=$(running "$name"); then
    say "$name already running (pid $pid, port $port)"
    return 0
  fi
  port_busy "$port" && die "port $port is taken by another process; set LOCAL_AWS_${name^^}_PORT to a free one"
  "start_$name"
  pid=$(cat "$RUN/$name.pid")
  deadline=$((SECONDS + START_TIMEOUT))
  until answers "$name"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      say "$name did not answer on port $port within ${START_TIMEOUT}s; last lines of $RUN/$name.log:"
      tail -n 30 "$RUN/$name.log" >&2 || true
      stop_one "$name"
      exit 1
    fi
    sleep 0.2
  done
  say "$name up (pid $pid, http://127.0.0.1:$port)"
}

stop_one() {
  local name=$1 pid i
  if ! pid=$(running "$name"); then
    say "$name not running"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
  say "$name stopped (pid $pid)"
}

print_env() {
  cat <<EOF
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$KINESIS_PORT
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DYNAMODB_PORT
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=kcllocalaccesskey
export AWS_SECRET_ACCESS_KEY=kcllocalsecretkey
EOF
}

case ${1:-} in
  up)
    ensure_tools
    install
    up_one kinesis "$KINESIS_PORT"
    up_one dynamodb "$DYNAMODB_PORT"
    ;;
  down)
    mkdir -p "$RUN"
    stop_one kinesis
    stop_one dynamodb
    ;;
  status)
    mkdir -p "$RUN"
    ok=0
    for name in kinesis dynamodb; do
      if pid=$(running "$name") && answers "$name"; then say "$name running (pid $pid)"; else
        say "$name not running"; ok=1
      fi
    done
    exit $ok
    ;;
  env) print_env ;;
  *)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
