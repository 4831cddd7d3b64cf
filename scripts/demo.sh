#!/usr/bin/env bash
# The demo, on the local AWS stack: a stream with records flowing, three
# replicas of the key-counter worker and three of the recorder, a shard
# split, one worker stopped gracefully and one killed, then a summary of
# what was produced, processed, lost and duplicated. Everything it starts is
# stopped at the end (by PID), and the stack is stopped if the demo started
# it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PRODUCED=${DEMO_RECORDS:-12000}
RATE=${DEMO_RATE:-200}
work=$(mktemp -d /tmp/kcl-demo.XXXXXX)
declare -A pid=()
started_stack=0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }

cleanup() {
  for name in "${!pid[@]}"; do kill -TERM "${pid[$name]}" 2>/dev/null || true; done
  for name in "${!pid[@]}"; do
    for _ in $(seq 50); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pid[$name]}" 2>/dev/null || true
  done
  if [ "$started_stack" = 1 ]; then scripts/local-aws.sh down >/dev/null || true; fi
  echo "demo: logs and recorder output are in $work" >&2
}
trap cleanup EXIT

say "Building the example workers"
cargo build --quiet --locked -p kcl-examples --bins
bin=target/debug

say "Starting the local AWS stack (kinesis-mock and DynamoDB Local)"
if scripts/local-aws.sh status >/dev/null 2>&1; then
  note "already running; using it"
else
  started_stack=1
  scripts/local-aws.sh up
fi
eval "$(scripts/local-aws.sh env)"

stream=demo-orders-$$
counter_app=demo-key-counter-$$
recorder_app=demo-recorder-$$
# Short times so that the demo fits in a few minutes.
common=(--stream-name "$stream" --failover-time-ms 5000 --assignment-interval-ms 2000
  --shard-sync-interval-ms 5000 --lease-cleanup-delay-ms 5000)

say "Producing $PRODUCED records ($RATE/s over 32 keys) to a new 4-shard stream, $stream"
"$bin/producer" --stream "$stream" --create-shards 4 --keys 32 --rate "$RATE" \
  --count "$PRODUCED" >"$work/producer.log" 2>&1 &
pid[producer]=$!
for _ in $(seq 300); do grep -q "producing" "$work/producer.log" && break; sleep 0.1; done

start_counter() {
  "$bin/key-counter" "${common[@]}" --application-name "$counter_app" --worker-id "counter-$1" \
    --metrics-addr "127.0.0.1:$((9100 + $1))" --report-every-ms 10000 2>"$work/counter-$1.log" &
  pid[counter-$1]=$!
}
start_recorder() {
  "$bin/recorder" "${common[@]}" --application-name "$recorder_app" --worker-id "recorder-$1" \
    --output "$work/recorder-$1.jsonl" 2>"$work/recorder-$1.log" &
  pid[recorder-$1]=$!
}

say "Starting three key-counter replicas (metrics on 127.0.0.1:9101-9103) and three recorders"
for n in 1 2 3; do start_counter "$n"; start_recorder "$n"; done

# What an operator looks at: who holds which lease, and per worker the
# leases held, records processed and the lag (from /metrics).
status() {
  note "lease table of $counter_app:"
  "$bin/kcl-admin" status --application-name "$counter_app" | sed 's/^/     /'
  for n in 1 2 3; do
    if [ -z "${pid[counter-$n]:-}" ]; then note "counter-$n: stopped"; continue; fi
    metrics=$(curl -sf "http://127.0.0.1:$((9100 + n))/metrics" || true)
    held=$(awk '/^kcl_leases_held/ {print $NF}' <<<"$metrics")
    processed=$(awk '/^kcl_records_processed_total/ {s += $NF} END {print s + 0}' <<<"$metrics")
    lag=$(awk '/^kcl_millis_behind_latest/ {if ($NF > m) m = $NF} END {print m + 0}' <<<"$metrics")
    note "counter-$n: leases held ${held:-0}, records processed $processed, lag ${lag} ms"
  done
}

sleep 10
say "Status after 10 s"
status

say "Splitting a shard: its children wait until it is read to its end"
"$bin/kcl-admin" split-shard --stream-name "$stream" | sed 's/^/   /'
sleep 10
status

say "Stopping counter-1 and recorder-1 gracefully (SIGTERM): they hand their shards over"
started=$(date +%s%N)
kill -TERM "${pid[counter-1]}" "${pid[recorder-1]}"
wait "${pid[counter-1]}" && counter_exit=0 || counter_exit=$?
wait "${pid[recorder-1]}" && recorder_exit=0 || recorder_exit=$?
unset 'pid[counter-1]' 'pid[recorder-1]'
took_ms=$((($(date +%s%N) - started) / 1000000))
note "exited with $counter_exit and $recorder_exit after ${took_ms} ms"
sleep 3
status

say "Killing counter-2 and recorder-2 (SIGKILL): their shards move after the 5 s failover time"
kill -KILL "${pid[counter-2]}" "${pid[recorder-2]}"
wait "${pid[counter-2]}" 2>/dev/null || true
wait "${pid[recorder-2]}" 2>/dev/null || true
unset 'pid[counter-2]' 'pid[recorder-2]'
sleep 10
status

say "Waiting for the producer to finish and the recorders to catch up"
wait "${pid[producer]}"
unset 'pid[producer]'
for _ in $(seq 120); do
  "$bin/kcl-admin" verify --produced "$PRODUCED" "$work"/recorder-*.jsonl >/dev/null 2>&1 && break
  sleep 1
done
status

say "Stopping the remaining workers"
for name in counter-3 recorder-3; do kill -TERM "${pid[$name]}"; done
for name in counter-3 recorder-3; do wait "${pid[$name]}" || true; unset "pid[$name]"; done

say "Summary (from the recorders' output)"
"$bin/kcl-admin" verify --produced "$PRODUCED" "$work"/recorder-*.jsonl | sed 's/^/   /'
