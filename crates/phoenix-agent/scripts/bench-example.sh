#!/usr/bin/env bash
# What the shipped standalone example costs to run: `phoenix-agent run` with
# examples/pipeline-standalone.yaml as shipped (its 15 s intervals, its simulator, its
# baseline + candidate), beside a real prometheus-node-exporter and VictoriaMetrics. Only
# the file's fixed addresses are pointed at free ports. After a warm-up, reports the
# agent's CPU over a window, its RSS, and the candidate's KPIs from its /metrics.
# Needs the Debian packages victoria-metrics and prometheus-node-exporter.
#
#   crates/phoenix-agent/scripts/bench-example.sh
#   WARMUP=60 WINDOW=120 crates/phoenix-agent/scripts/bench-example.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
WARMUP="${WARMUP:-45}"
WINDOW="${WINDOW:-120}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# shellcheck source=bench-common.sh
source crates/phoenix-agent/scripts/bench-common.sh
command -v prometheus-node-exporter >/dev/null \
  || { echo "node-exporter missing: apt-get install -y prometheus-node-exporter" >&2; exit 1; }

VM_PORT=$(free_port); NODE_PORT=$(free_port); METRICS_PORT=$(free_port)
victoria-metrics -storageDataPath="$WORK/vm" -httpListenAddr="127.0.0.1:$VM_PORT" \
  -retentionPeriod=1d >"$WORK/vm.log" 2>&1 &
PIDS+=($!)
prometheus-node-exporter --web.listen-address="127.0.0.1:$NODE_PORT" >"$WORK/node.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$VM_PORT/health"
wait_http "http://127.0.0.1:$NODE_PORT/metrics"

sed -e "s/127.0.0.1:9201/127.0.0.1:$(free_port)/g" \
    -e "s/127.0.0.1:9100/127.0.0.1:$NODE_PORT/g" \
    -e "s/127.0.0.1:4317/127.0.0.1:$(free_port)/g" \
    -e "s/127.0.0.1:4318/127.0.0.1:$(free_port)/g" \
    -e "s/127.0.0.1:8428/127.0.0.1:$VM_PORT/g" \
    -e "s/127.0.0.1:9464/127.0.0.1:$METRICS_PORT/g" \
    examples/pipeline-standalone.yaml > "$WORK/example.yaml"
"$AGENT" run --config "$WORK/example.yaml" --kpi-interval-seconds 60 >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_http "http://127.0.0.1:$METRICS_PORT/metrics"

HZ=$(getconf CLK_TCK)
echo "warm-up ${WARMUP}s, then a ${WINDOW}s window ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
sleep "$WARMUP"
before=$(cpu_ticks "$AGENT_PID")
sleep "$WINDOW"
after=$(cpu_ticks "$AGENT_PID")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT_PID/status")
hwm=$(peak_rss_kib "$AGENT_PID")
page=$(curl -sf "http://127.0.0.1:$METRICS_PORT/metrics")
kpi() { grep -m1 "^$1{variant=\"$2\"}" <<<"$page" | awk '{print $2}'; }
curl -sf -o /dev/null "http://127.0.0.1:$VM_PORT/internal/force_flush"
stored=$(curl -sf "http://127.0.0.1:$VM_PORT/api/v1/series/count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0])')

awk -v t=$((after - before)) -v hz="$HZ" -v w="$WINDOW" -v rss="$rss" -v hwm="$hwm" '
  BEGIN { printf "agent: cpu %.2f s over %d s (%.2f %% of a core), rss %.1f MB, peak rss %.1f MB\n",
          t / hz, w, 100 * t / hz / w, rss / 1024, hwm / 1024 }'
for variant in baseline candidate; do
  echo "$variant (last 60 s interval): input series $(kpi phoenix_pipeline_input_series "$variant"), output series $(kpi phoenix_pipeline_output_series "$variant"), reduction $(kpi phoenix_cardinality_reduction_percent "$variant") %, protected coverage $(kpi phoenix_pipeline_protected_coverage_percent "$variant") %, ns per sample $(kpi phoenix_pipeline_ns_per_sample "$variant")"
done
echo "victoria-metrics: $stored series stored"
