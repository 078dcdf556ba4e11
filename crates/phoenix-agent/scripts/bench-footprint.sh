#!/usr/bin/env bash
# The agent's footprint (docs/bench/agent.md): an idle agent (enrolled, heartbeating,
# long-polling, no pipeline input) and an agent fed the k8s profile at scale 1 (≈234k
# series per tick) running (a) the adaptive candidate alone, (b) baseline + adaptive in
# shadow mode. CPU is the process's user+system time over a window (/proc/PID/stat), RSS
# its VmRSS at the end; samples are engine batches × series per batch.
# Usage: crates/phoenix-agent/scripts/bench-footprint.sh   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN="${PHOENIX_BIN_DIR:-target/release}"
WINDOW="${WINDOW:-60}"
WARMUP="${WARMUP:-25}"
TICK="${TICK:-5s}"
WORK="$(mktemp -d)"
PORT="${PORT:-18590}"
API="http://127.0.0.1:${PORT}"
TOKEN="bench-enrollment-token-0123456789"
PIDS=()
# Agents are started inside command substitutions (subshells), so their pids go to a file.
trap 'for p in "${PIDS[@]}" $(cat "$WORK/agent.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
metric() { curl -fsS "http://$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
post() { curl -fsS -X POST -H 'content-type: application/json' -H "authorization: Bearer $ACCESS" "$@"; }
hz=$(getconf CLK_TCK)

PHOENIX_ENROLLMENT_TOKEN="$TOKEN" PHOENIX_ADMIN_PASSWORD="$TOKEN" \
  "$BIN/phoenix-api" --listen "127.0.0.1:${PORT}" \
  --data-dir "$WORK/api" >"$WORK/api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fsS "$API/ready" >/dev/null 2>&1 && break; sleep 0.1; done
# Tasks and experiments are an admin's (operator's) calls: log in as the first admin.
ACCESS="$(curl -fsS -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$TOKEN\"}" "$API/api/v1/auth/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"

start_agent() { # name, extra env...
  local name=$1; shift
  env PHOENIX_AGENT_API_URL="$API" PHOENIX_AGENT_HOST_ID="$name" \
    PHOENIX_AGENT_ENROLLMENT_TOKEN="$TOKEN" PHOENIX_AGENT_DATA_DIR="$WORK/$name" "$@" \
    "$BIN/phoenix-agent" agent >"$WORK/$name.log" 2>&1 &
  echo $! >>"$WORK/agent.pids"
  echo $!
}

measure() { # pid, seconds -> "cpu_seconds rss_mb"
  local before after
  before=$(cpu_ticks "$1"); sleep "$2"; after=$(cpu_ticks "$1")
  echo "$(echo "scale=3; ($after - $before) / $hz" | bc) $(rss_mb "$1")"
}

# --- idle ---
IDLE=$(start_agent bench-idle)
sleep 10
read -r idle_cpu idle_rss < <(measure "$IDLE" "$WINDOW")
echo "idle: cpu ${idle_cpu}s over ${WINDOW}s ($(echo "scale=3; 100 * $idle_cpu / $WINDOW" | bc) % of a core), rss ${idle_rss} MB"

# --- loaded ---
cat >"$WORK/pipeline.yaml" <<YAML
pipelines:
  main: {}
exporters:
  prometheus: {listen: "127.0.0.1:$((PORT + 1))"}
YAML
LOADED=$(start_agent bench-load PHOENIX_AGENT_PIPELINE_CONFIG="$WORK/pipeline.yaml" PHOENIX_AGENT_KPI_INTERVAL=10s)
M="127.0.0.1:$((PORT + 1))"
for _ in $(seq 1 100); do curl -fsS "http://$M/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
post "$API/api/v1/tasks" -d "{\"type\":\"loadsim\",\"host_id\":\"bench-load\",\"payload\":{\"profile\":\"k8s\",\"scale\":1,\"seed\":42,\"interval\":\"${TICK}\",\"churn_per_tick\":0.005}}" >/dev/null
until grep -q "load simulation started" "$WORK/bench-load.log"; do sleep 0.5; done
series=$(grep -o '"series":[0-9]*' "$WORK/bench-load.log" | head -1 | cut -d: -f2)
echo "load: k8s scale 1 = ${series} series per tick, one tick every ${TICK}"

phase() { # label
  sleep "$WARMUP"
  local b0 b1 cpu rss
  b0=$(metric "$M" phoenix_engine_batches_total)
  read -r cpu rss < <(measure "$LOADED" "$WINDOW")
  b1=$(metric "$M" phoenix_engine_batches_total)
  local samples=$(( (b1 - b0) * series ))
  echo "$1: batches $((b1 - b0)), samples ${samples}, cpu ${cpu}s over ${WINDOW}s, rss ${rss} MB, cpu per million samples $(echo "scale=3; $cpu * 1000000 / $samples" | bc)s"
}

phase "steady passthrough (main)"
post "$API/api/v1/tasks" -d '{"type":"deployment","host_id":"bench-load","payload":{"pipeline":"adaptive"}}' >/dev/null
phase "candidate alone (adaptive live)"
EXP=$(post "$API/api/v1/experiments" -d '{"name":"bench","baseline_pipeline":"baseline","candidate_pipeline":"adaptive","target_hosts":["bench-load"],"duration_seconds":3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
post "$API/api/v1/experiments/$EXP/start" >/dev/null
until grep -q "experiment started here" "$WORK/bench-load.log"; do sleep 0.5; done
phase "shadow (baseline + adaptive)"
