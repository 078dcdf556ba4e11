#!/usr/bin/env python3
"""Live view of a running experiment for scripts/demo: every few seconds, the progress,
each agent's last-interval KPIs per variant (from the heartbeats in GET
/api/v1/fleet/status) and the API's own reduction gauge (GET /metrics). Returns when
every target has finished the experiment (its `start` task completed) or after the
duration plus a margin; prints a summary. Standard library only."""
import json
import os
import sys
import time
import urllib.request

api, experiment, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
REFRESH = float(os.environ.get("PHOENIX_DEMO_REFRESH", "5"))


def get(path, as_json=True):
    with urllib.request.urlopen(api + path, timeout=10) as r:
        body = r.read().decode()
    return json.loads(body) if as_json else body


def api_reduction():
    for line in get("/metrics", as_json=False).splitlines():
        if line.startswith("phoenix_cardinality_reduction_percent{") and experiment in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def kpi_batches():
    for line in get("/metrics", as_json=False).splitlines():
        if line.startswith('phoenix_kpi_batches_total{status="stored"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def start_tasks():
    items = get(f"/api/v1/tasks?limit=500")["items"]
    return [t for t in items if t["type"] == "experiment" and t.get("experiment_id") == experiment
            and t["payload"].get("action") == "start"]


def bar(fraction, width=30):
    done = int(round(fraction * width))
    return "[" + "#" * done + "-" * (width - done) + "]"


started = time.time()
best = {}
last_api_reduction = None
while True:
    elapsed = time.time() - started
    try:
        fleet = get("/api/v1/fleet/status")
        phase = get(f"/api/v1/experiments/{experiment}")["phase"]
        reduction = api_reduction()
        tasks = start_tasks()
    except OSError as e:
        print(f"  (api not answering: {e})")
        time.sleep(REFRESH)
        continue
    finished = [t for t in tasks if t["status"] in ("completed", "failed")]
    print(f"{bar(min(elapsed / duration, 1.0))} {min(elapsed, duration):5.0f}s/{duration:.0f}s  "
          f"experiment {experiment[:8]}… phase {phase}  "
          f"agents healthy {fleet['by_health'].get('healthy', 0)}/{fleet['total']}  "
          f"KPI batches stored {kpi_batches()}")
    print(f"  {'host':<14}{'variant':<11}{'input series':>13}{'output series':>15}{'reduction':>11}"
          f"{'protected':>11}{'ns/sample':>11}")
    for agent in sorted(fleet["agents"], key=lambda a: a["host_id"]):
        for p in agent["running_pipelines"]:
            last = p.get("last_interval")
            if not last or p.get("variant") is None:
                continue
            name = p.get("variant") if p.get("experiment_id") else f"{p['name']} (steady)"
            print(f"  {agent['host_id']:<14}{name:<11}{last['input_series']:>13,}"
                  f"{last['output_series']:>15,}{last['reduction_percent']:>10.1f}%"
                  f"{last['protected_coverage_percent']:>10.1f}%{last['ns_per_sample']:>11.0f}")
            if p.get("variant") == "candidate" and p.get("experiment_id"):
                best[agent["host_id"]] = last
    if reduction is not None:
        last_api_reduction = reduction
        print(f"  API: candidate reduction over the latest interval, all hosts: {reduction:.1f} %")
    print()
    if tasks and len(finished) == len(tasks):
        break
    if elapsed > duration + 60:
        print("  the experiment did not finish on every agent in time")
        sys.exit(1)
    time.sleep(REFRESH)

print("==> experiment over on every agent:")
for t in sorted(finished, key=lambda t: t["host_id"] or ""):
    print(f"  {t['host_id']}: {t['status']} {json.dumps(t.get('result') or t.get('error'))}")
if best:
    inp = sum(v["input_series"] for v in best.values())
    out = sum(v["output_series"] for v in best.values())
    print(f"==> adaptive vs baseline on {len(best)} agents: {inp:,} input series -> {out:,} "
          f"output series, reduction {100.0 * (1 - out / inp):.1f} %, protected series intact "
          f"{min(v['protected_coverage_percent'] for v in best.values()):.0f} %")
elif last_api_reduction is not None:
    print(f"==> adaptive vs baseline on {len(finished)} agents: reduction {last_api_reduction:.1f} % "
          f"(the API's gauge over the last interval)")
if any(t["status"] == "failed" for t in finished):
    sys.exit(1)
