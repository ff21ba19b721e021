"""``GET /metrics`` in the Prometheus text exposition format (version 0.0.4), written by hand.

    passthru_devices{kind,state}                      devices the inventory knows: state present | lost
    passthru_lost_devices                             devices gone from the host
    passthru_devices_held{kind}                       of those, held by a VM
    passthru_assignments{state}                       active assignments: reserved | attached
    passthru_vms{status}                              VMs holding devices: running | not_running | gone
    passthru_errors_total{source,code}                API errors by code, reconcile and sync errors
    passthru_http_requests_total{method,status}      method: GET HEAD POST PUT DELETE PATCH OPTIONS or other
    passthru_connections{state}                       open connections: open | waiting (for request headers)
    passthru_connections_closed_total{reason}         closed by the agent: header_timeout | evicted | refused
    passthru_hotplug_events_total{subsystem,action}
    passthru_inventory_generation                     bumps at every refresh
    passthru_inventory_refresh_timestamp_seconds, passthru_inventory_refresh_duration_seconds,
    passthru_inventory_refreshes_total
    passthru_last_reconcile_timestamp_seconds, passthru_last_reconcile_duration_seconds,
    passthru_last_reconcile_success                   1 when the last reconcile had no errors
    passthru_agent_start_time_seconds

No label value comes from a request: methods and statuses are folded into fixed sets (gate.py), error codes are the
API's own, sync errors are exception class names, hot-plug actions the kernel's (others: "other"), kinds and states
the inventory's. So the number of series does not grow with the number of requests.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .state import Agent

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _ts(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def render_metrics(agent: Agent) -> str:
    snap = agent.snapshot()
    o = _Out()
    by: dict[tuple[str, str], int] = {}
    held: dict[str, int] = {}
    for r in snap.rows:
        by[(r["kind"], r["state"])] = by.get((r["kind"], r["state"]), 0) + 1
        held.setdefault(r["kind"], 0)
        if r.get("vm"):
            held[r["kind"]] += 1
    o.family("passthru_devices", "gauge", "Devices in the inventory by kind and state (present, lost).",
             [({"kind": k, "state": s}, n) for (k, s), n in sorted(by.items())])
    o.family("passthru_lost_devices", "gauge", "Devices gone from the host (state lost): look at GET /devices.",
             [({}, sum(n for (_, st), n in by.items() if st == "lost"))])
    o.family("passthru_devices_held", "gauge", "Devices held by a VM, by kind.",
             [({"kind": k}, n) for k, n in sorted(held.items())])
    states = {"reserved": 0, "attached": 0}
    vms = {"running": 0, "not_running": 0, "gone": 0}
    try:
        for a in agent.store.assignments():
            states[a.state] = states.get(a.state, 0) + 1
        for v in agent.vm_status().values():
            vms[v["status"]] = vms.get(v["status"], 0) + 1
    except Exception:  # noqa: BLE001 - a locked store must not take /metrics down
        agent.counters.add(agent.counters.errors, ("metrics", "store"))
    o.family("passthru_assignments", "gauge", "Active assignments by state.",
             [({"state": s}, n) for s, n in sorted(states.items())])
    o.family("passthru_vms", "gauge", "VMs holding devices, by whether their QEMU process runs.",
             [({"status": s}, n) for s, n in sorted(vms.items())])
    c = agent.counters
    with c.lock:
        errors = sorted(c.errors.items())
        requests = sorted(c.requests.items())
        events = sorted(c.events.items())
        refreshes, refresh_s = c.refreshes, c.refresh_seconds
    o.family("passthru_errors_total", "counter", "Errors: API responses by error code, reconcile and sync errors.",
             [({"source": s, "code": k}, n) for (s, k), n in errors])
    o.family("passthru_http_requests_total", "counter", "HTTP requests by method (other: not a standard method) "
             "and status.",
             [({"method": m, "status": s}, n) for (m, s), n in requests])
    conns = agent.connections
    if conns is not None:
        o.family("passthru_connections", "gauge", "Open connections, and of those the ones waiting for request "
                 "headers.", [({"state": "open"}, len(conns.open)), ({"state": "waiting"}, len(conns.waiting))])
        o.family("passthru_connections_closed_total", "counter", "Connections the agent closed: no complete "
                 "request headers in time, evicted at the connection limit, refused (all busy).",
                 [({"reason": r}, n) for r, n in sorted(dict(conns.closed).items())])
    o.family("passthru_hotplug_events_total", "counter", "Kernel hot-plug events seen, by subsystem and action.",
             [({"subsystem": s, "action": a}, n) for (s, a), n in events])
    o.family("passthru_inventory_generation", "gauge", "Inventory snapshot generation (bumps at every refresh).",
             [({}, snap.generation)])
    o.family("passthru_inventory_refreshes_total", "counter", "Inventory refreshes.", [({}, refreshes)])
    o.family("passthru_inventory_refresh_timestamp_seconds", "gauge", "When the inventory was last refreshed.",
             [({}, round(snap.time, 3))])
    o.family("passthru_inventory_refresh_duration_seconds", "gauge", "How long the last refresh took.",
             [({}, round(refresh_s, 6))])
    last = agent.last_reconcile
    if last is not None:
        o.family("passthru_last_reconcile_timestamp_seconds", "gauge", "When the last reconcile started.",
                 [({}, round(_ts(last["started"]), 3))])
        o.family("passthru_last_reconcile_duration_seconds", "gauge", "How long the last reconcile took.",
                 [({}, last["duration_s"])])
        o.family("passthru_last_reconcile_success", "gauge", "1 when the last reconcile had no errors.",
                 [({}, 1 if last["ok"] else 0)])
    o.family("passthru_agent_start_time_seconds", "gauge", "When the agent started.", [({}, round(agent.started, 3))])
    return "\n".join(o.lines) + "\n"
