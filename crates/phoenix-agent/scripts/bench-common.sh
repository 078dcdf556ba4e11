# Shared by bench-vs-vmagent.sh and bench-shadow-vs-vmagent.sh (sourced, from the repository
# root, with CARGO_TARGET_DIR set): checks vmagent, builds (or takes prebuilt
# PHOENIX_AGENT_BIN and LOADGEN_BIN) phoenix-agent and rw_loadgen, makes a work directory
# cleaned on exit with every pid in PIDS, and defines the measuring helpers.
command -v vmagent >/dev/null || { echo "vmagent missing: apt-get install -y victoria-metrics" >&2; exit 1; }
if [ -z "${PHOENIX_AGENT_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
  cargo build --release -q -p phoenix-agent --bin phoenix-agent --example rw_loadgen
fi
AGENT="${PHOENIX_AGENT_BIN:-$CARGO_TARGET_DIR/release/phoenix-agent}"
LOADGEN="${LOADGEN_BIN:-$CARGO_TARGET_DIR/release/examples/rw_loadgen}"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done  # e.g. VictoriaMetrics flushing
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
# Waits until the process stops using CPU (it has forwarded what it received).
settle() { local prev=-1 now; while true; do now=$(cpu_ticks "$1"); [ "$now" = "$prev" ] && return; prev=$now; sleep 1; done; }
