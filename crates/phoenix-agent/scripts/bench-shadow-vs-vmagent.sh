#!/usr/bin/env bash
# The price of A/B on the same input as vmagent (docs/bench/agent.md). One remote write load
# (the k8s profile from rw_loadgen, 200k series per tick by default) goes, in turn, to:
#   vmagent            drop `pod`, `instance` and `container`, forward (vmagent 1.79 from
#                      Debian has no stream aggregation: this is the nearest job it can do);
#   phoenix-candidate  the adaptive candidate alone (keep anomalies, errors and the top 20
#                      series per metric; fold the rest without pod/instance), forward;
#   phoenix-shadow     baseline (pass everything) and the same candidate side by side on
#                      every batch, both measured, only the candidate exported.
# Each run reports CPU seconds (utime + stime from /proc), CPU per million samples accepted
# and peak RSS (VmHWM), and the script prints the shadow/candidate and shadow/vmagent ratios.
#
#   crates/phoenix-agent/scripts/bench-shadow-vs-vmagent.sh [SERIES]      (default 200000)
#   ROUNDS=3 TICKS=3 CONCURRENCY=4 crates/phoenix-agent/scripts/bench-shadow-vs-vmagent.sh
#
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../../.."
N="${1:-200000}"
ROUNDS="${ROUNDS:-3}"
TICKS="${TICKS:-3}"
CONCURRENCY="${CONCURRENCY:-4}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# shellcheck source=bench-common.sh
source crates/phoenix-agent/scripts/bench-common.sh

cat > "$WORK/relabel.yaml" <<'YAML'
- action: labeldrop
  regex: pod|instance|container
YAML

phoenix_config() { # port, sink port, shadow (0|1)
  local candidate='
      - type: adaptive
        keep_top_k: 20
        without: [pod, instance]'
  {
    echo "receivers:"
    echo "  remote_write: {listen: \"127.0.0.1:$1\"}"
    echo "pipelines:"
    if [ "$3" = 1 ]; then
      echo "  baseline: {}"
    fi
    echo "  candidate:"
    echo "    processors:$candidate"
    if [ "$3" = 1 ]; then
      echo "shadow:"
      echo "  live: candidate"
    fi
    echo "exporters:"
    echo "  remote_write: {url: \"http://127.0.0.1:$2/api/v1/write\", queue_capacity_requests: 4096}"
  }
}

HZ=$(getconf CLK_TCK)
SINK_PORT=$(free_port)
"$LOADGEN" sink --listen "127.0.0.1:$SINK_PORT" > "$WORK/sink.log" 2>&1 & PIDS+=($!)
sleep 0.5
declare -A CPU=() PERM=() RSS=()
printf '| series/tick | agent | samples accepted | CPU s | CPU s per million samples | peak RSS MiB |\n|---:|---|---:|---:|---:|---:|\n' > "$WORK/table.md"
for NAME in vmagent phoenix-candidate phoenix-shadow; do
  PORT=$(free_port)
  case "$NAME" in
    vmagent)
      vmagent -httpListenAddr="127.0.0.1:$PORT" -remoteWrite.url="http://127.0.0.1:$SINK_PORT/api/v1/write" \
        -remoteWrite.relabelConfig="$WORK/relabel.yaml" -remoteWrite.tmpDataPath="$WORK/vmagent" \
        -loggerLevel=ERROR > "$WORK/vmagent.log" 2>&1 & PID=$!
      HEALTH="http://127.0.0.1:$PORT/health" ;;
    phoenix-candidate|phoenix-shadow)
      phoenix_config "$PORT" "$SINK_PORT" "$([ "$NAME" = phoenix-shadow ] && echo 1 || echo 0)" > "$WORK/$NAME.yaml"
      RUST_LOG=warn "$AGENT" run --config "$WORK/$NAME.yaml" > "$WORK/$NAME.log" 2>&1 & PID=$!
      HEALTH="http://127.0.0.1:$PORT/-/healthy" ;;
  esac
  PIDS+=("$PID")
  wait_http "$HEALTH"
  BEFORE=$(cpu_ticks "$PID")
  OUT=$("$LOADGEN" send --url "http://127.0.0.1:$PORT/api/v1/write" --series "$N" --ticks "$TICKS" \
    --rounds "$ROUNDS" --concurrency "$CONCURRENCY")
  settle "$PID"
  AFTER=$(cpu_ticks "$PID")
  ACCEPTED=$(sed -n 's/.*accepted_samples=\([0-9]*\).*/\1/p' <<< "$OUT")
  FAILED=$(sed -n 's/.*failed_requests=\([0-9]*\).*/\1/p' <<< "$OUT")
  CPU[$NAME]=$(awk -v a="$AFTER" -v b="$BEFORE" -v hz="$HZ" 'BEGIN {printf "%.2f", (a - b) / hz}')
  PERM[$NAME]=$(awk -v s="$ACCEPTED" -v c="${CPU[$NAME]}" 'BEGIN {printf "%.3f", c * 1000000 / s}')
  RSS[$NAME]=$(awk -v k="$(peak_rss_kib "$PID")" 'BEGIN {printf "%.0f", k / 1024}')
  echo "$NAME N=$N: $OUT cpu_s=${CPU[$NAME]} failed=$FAILED" >&2
  printf '| %s | %s | %s | %s | %s | %s |\n' "$N" "$NAME" "$ACCEPTED" "${CPU[$NAME]}" "${PERM[$NAME]}" "${RSS[$NAME]}" >> "$WORK/table.md"
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
printf '| | **shadow / candidate alone** (the price of A/B) | | | **%s×** | %s vs %s MiB |\n' \
  "$(ratio "${PERM[phoenix-shadow]}" "${PERM[phoenix-candidate]}")" "${RSS[phoenix-shadow]}" "${RSS[phoenix-candidate]}" >> "$WORK/table.md"
printf '| | **shadow / vmagent** | | | **%s×** | %s vs %s MiB |\n' \
  "$(ratio "${PERM[phoenix-shadow]}" "${PERM[vmagent]}")" "${RSS[phoenix-shadow]}" "${RSS[vmagent]}" >> "$WORK/table.md"
cat "$WORK/table.md"
