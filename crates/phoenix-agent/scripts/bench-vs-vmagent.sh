#!/usr/bin/env bash
# Side by side: vmagent and phoenix-agent receive the same remote write load (the k8s
# profile from rw_loadgen), drop `pod`, `instance` and `container`, and remote write the
# rest to a local sink. Reports samples per CPU-second of each agent, the ratio, and
# peak RSS, and what each forwarded (the sink decodes every request it gets). Needs the
# Debian package victoria-metrics (ships vmagent).
#
#   crates/phoenix-agent/scripts/bench-vs-vmagent.sh [SERIES...]     (default: 200000 1000000)
#   ROUNDS=5 TICKS=3 CONCURRENCY=4 crates/phoenix-agent/scripts/bench-vs-vmagent.sh 200000
#   DROP='instance|job' crates/phoenix-agent/scripts/bench-vs-vmagent.sh 200000
#
# DROP is the labeldrop regex (default `pod|instance|container`, the issue's job). Dropping
# `pod` makes series identical: vmagent forwards every one of them, Phoenix the first of
# each in a batch (its `relabel` semantics), so Phoenix also forwards fewer samples.
# `instance|job` merges nothing on the k8s profile: both forward every sample.
#
# For A/B runs of two builds: PHOENIX_AGENT_BIN=/path/to/phoenix-agent (and LOADGEN_BIN)
# skip the build and run that binary; PHOENIX_LD_PRELOAD=/path/to/lib.so is set as
# LD_PRELOAD for the phoenix agent only (e.g. to try another allocator).
#
# Everything listens on 127.0.0.1. Samples are counted as accepted by the agent (2xx).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROUNDS="${ROUNDS:-5}"
TICKS="${TICKS:-3}"
CONCURRENCY="${CONCURRENCY:-4}"
SIZES=("${@:-200000 1000000}")
read -r -a SIZES <<< "${SIZES[*]}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# shellcheck source=bench-common.sh
source crates/phoenix-agent/scripts/bench-common.sh

DROP="${DROP:-pod|instance|container}"
cat > "$WORK/relabel.yaml" <<YAML
- action: labeldrop
  regex: '$DROP'
YAML

HZ=$(getconf CLK_TCK)
printf '| series/tick | agent | samples accepted | CPU s | samples per CPU-second | peak RSS MiB | samples forwarded |\n|---:|---|---:|---:|---:|---:|---:|\n' > "$WORK/table.md"
sink_samples() { curl -sf "http://127.0.0.1:$SINK_PORT/stats" | sed -n 's/.*samples=\([0-9]*\).*/\1/p'; }
for N in "${SIZES[@]}"; do
  SINK_PORT=$(free_port)
  "$LOADGEN" sink --listen "127.0.0.1:$SINK_PORT" > "$WORK/sink.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$SINK_PORT/stats"
  declare -A RATE=()
  declare -A RSS=()
  for AGENT_NAME in vmagent phoenix; do
    PORT=$(free_port)
    if [ "$AGENT_NAME" = vmagent ]; then
      vmagent -httpListenAddr="127.0.0.1:$PORT" -remoteWrite.url="http://127.0.0.1:$SINK_PORT/api/v1/write" \
        -remoteWrite.relabelConfig="$WORK/relabel.yaml" -remoteWrite.tmpDataPath="$WORK/vmagent-$N" \
        -loggerLevel=ERROR > "$WORK/vmagent.log" 2>&1 & PID=$!
      HEALTH="http://127.0.0.1:$PORT/health"
    else
      cat > "$WORK/phoenix.yaml" <<YAML
receivers:
  remote_write: {listen: "127.0.0.1:$PORT"}
pipelines:
  live:
    processors:
      - type: relabel
        rules: [{action: labeldrop, regex: '$DROP'}]
exporters:
  remote_write: {url: "http://127.0.0.1:$SINK_PORT/api/v1/write", queue_capacity_requests: 4096}
YAML
      RUST_LOG=warn LD_PRELOAD="${PHOENIX_LD_PRELOAD:-}" "$AGENT" run --config "$WORK/phoenix.yaml" > "$WORK/phoenix.log" 2>&1 & PID=$!
      HEALTH="http://127.0.0.1:$PORT/-/healthy"
    fi
    PIDS+=("$PID")
    wait_http "$HEALTH"
    SINK_BEFORE=$(sink_samples)
    BEFORE=$(cpu_ticks "$PID")
    OUT=$("$LOADGEN" send --url "http://127.0.0.1:$PORT/api/v1/write" --series "$N" --ticks "$TICKS" \
      --rounds "$ROUNDS" --concurrency "$CONCURRENCY")
    settle "$PID"
    AFTER=$(cpu_ticks "$PID")
    FORWARDED=$(( $(sink_samples) - SINK_BEFORE ))
    ACCEPTED=$(sed -n 's/.*accepted_samples=\([0-9]*\).*/\1/p' <<< "$OUT")
    FAILED=$(sed -n 's/.*failed_requests=\([0-9]*\).*/\1/p' <<< "$OUT")
    CPU=$(awk -v a="$AFTER" -v b="$BEFORE" -v hz="$HZ" 'BEGIN {printf "%.2f", (a - b) / hz}')
    RATE[$AGENT_NAME]=$(awk -v s="$ACCEPTED" -v c="$CPU" 'BEGIN {printf "%.0f", s / c}')
    RSS[$AGENT_NAME]=$(awk -v k="$(peak_rss_kib "$PID")" 'BEGIN {printf "%.0f", k / 1024}')
    echo "$AGENT_NAME N=$N: $OUT cpu_s=$CPU failed=$FAILED" >&2
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$N" "$AGENT_NAME" "$ACCEPTED" "$CPU" "${RATE[$AGENT_NAME]}" "${RSS[$AGENT_NAME]}" "$FORWARDED" >> "$WORK/table.md"
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
  RATIO=$(awk -v p="${RATE[phoenix]}" -v v="${RATE[vmagent]}" 'BEGIN {printf "%.2f", p / v}')
  printf '| %s | **ratio phoenix/vmagent** | | | **%s×** | RSS %s vs %s MiB | |\n' "$N" "$RATIO" "${RSS[phoenix]}" "${RSS[vmagent]}" >> "$WORK/table.md"
done
cat "$WORK/table.md"
