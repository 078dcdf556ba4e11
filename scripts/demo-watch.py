#!/usr/bin/env python3
"""Live view of a running experiment for scripts/demo: every few seconds, the progress,
each agent's last-interval KPIs per variant (from the heartbeats in GET
/api/v1/fleet/status), the API's own reduction gauge (GET /metrics) and its latest
analysis. Returns when the experiment has ended (its decision made) and every target has
finished it (its `start` task completed), or after the duration plus a margin; prints the
decision with its reasons, the guardrail table and the cost savings. Exits non-zero when
the experiment did not end in `completed`. Standard library only."""
import json
import os
import sys
import time
import urllib.request

api, experiment, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
REFRESH = float(os.environ.get("PHOENIX_DEMO_REFRESH", "5"))


TOKEN = os.environ.get("PHOENIX_TOKEN", "")


def get(path, as_json=True):
    request = urllib.request.Request(api + path)
    if TOKEN:
        request.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(request, timeout=10) as r:
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


TERMINAL = ("completed", "rolled_back", "failed", "stopped")
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
    try:
        analysis = get(f"/api/v1/experiments/{experiment}/results")["result"]
    except OSError:
        analysis = None
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
    if analysis and analysis.get("intervals"):
        red = analysis.get("reduction_percent")
        print(f"  analysis: {analysis['intervals']} intervals, decision so far "
              f"{analysis['decision']}" + (f", mean reduction {red:.1f} %" if red is not None else ""))
    print()
    if tasks and len(finished) == len(tasks) and phase in TERMINAL:
        break
    if elapsed > duration + 90:
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

exp = get(f"/api/v1/experiments/{experiment}")
results = get(f"/api/v1/experiments/{experiment}/results")["result"]
print(f"==> experiment {exp['phase']}: decision {results['decision']}"
      + (" (candidate promoted)" if exp.get("promoted") else ""))
for reason in results["reasons"]:
    print(f"  - {reason}")
print(f"  {'guardrail':<22}{'status':<14}{'observed':>10}{'threshold':>11}")
for g in results["guardrails"]:
    obs = "-" if g["observed"] is None else f"{g['observed']:.2f}"
    thr = "-" if g["threshold"] is None else f"{g['threshold']:g}"
    print(f"  {g['guardrail']:<22}{g['status']:<14}{obs:>10}{thr:>11}")
cost = get(f"/api/v1/experiments/{experiment}/cost-analysis")
sel = cost["selected"]
print(f"==> cost ({sel['preset']} preset, {sel['currency']}): "
      f"{cost['before']['active_series']:,.0f} -> {cost['after']['active_series']:,.0f} active series, "
      f"{sel['before']['monthly']:,.2f} -> {sel['after']['monthly']:,.2f} a month: "
      f"saves {sel['savings_monthly']:,.2f} a month, {sel['savings_yearly']:,.2f} a year "
      f"({sel['savings_percent']:.1f} %)")
for c in cost["presets"]:
    if c["preset"] != sel["preset"]:
        print(f"  under {c['preset']}: saves {c['savings_monthly']:,.2f} {c['currency']} a month")
if any(t["status"] == "failed" for t in finished) or exp["phase"] != "completed":
    sys.exit(1)
