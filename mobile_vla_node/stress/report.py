"""Targets (issue 10), the printed table and the JSON of a `vla_stress` scenario result."""

from __future__ import annotations

import json
from pathlib import Path

RATE_FRACTION = 0.95      # Twist rate received >= 95 % of control_rate_hz
GAP_PERIODS = 3           # no gap over 3 periods
RSS_TOLERANCE_PCT = 10.0  # RSS after the flood within 10 % of before
SOAK_RSS_GROWTH_PCT = 5.0  # soak: RSS growth after the warm-up below 5 %
HOGS_FOR_TARGETS = 2      # the targets are stated for --cpu-hogs 2
RECORDER_LAG_WARN = 0.5   # periods: a recorder lagging more than this may inflate gaps


def target(name: str, value, limit: str, ok: bool) -> dict:
    """One evaluated target."""
    return {"target": name, "value": value, "limit": limit, "pass": bool(ok)}


def evaluate(result: dict) -> list:
    """PASS/FAIL per issue-10 target for one scenario result."""
    name = result["scenario"]
    if name == "signals":
        return _signal_targets(result)
    if name == "clock-jump":
        return _jump_targets(result)
    rate = result["control_rate_hz"]
    whole = result["twists"]["whole"]
    period_ms = 1e3 / rate
    out = [
        target("twist_rate_hz", whole["rate_hz"], f">= {RATE_FRACTION * rate:.2f}",
               whole["rate_hz"] is not None and whole["rate_hz"] >= RATE_FRACTION * rate),
        target("max_gap_ms", whole["max_gap_ms"], f"<= {GAP_PERIODS * period_ms:.0f}",
               whole["max_gap_ms"] is not None
               and whole["max_gap_ms"] <= GAP_PERIODS * period_ms),
    ]
    if name == "malformed-flood":
        change = result["rss"].get("change_pct")
        out.append(target("rss_change_pct", change, f"|x| <= {RSS_TOLERANCE_PCT:g}",
                          change is not None and abs(change) <= RSS_TOLERANCE_PCT))
    if name == "soak":
        out += _soak_targets(result["soak"], rate)
    return out


def _soak_targets(soak: dict, rate: float) -> list:
    """Every window on rate (a soak with no whole window fails), RSS growth after warm-up."""
    rates = [w["rate_hz"] for w in soak["windows"]]
    worst = min(rates, default=None)
    growth = soak["rss_after_warmup"].get("growth_pct")
    return [
        target("min_window_rate_hz", worst, f">= {RATE_FRACTION * rate:.2f} in each of "
               f"{len(rates)} windows of {soak['window_s']:g} s",
               bool(rates) and all(r is not None and r >= RATE_FRACTION * rate for r in rates)),
        target("rss_growth_after_warmup_pct", growth, f"< {SOAK_RSS_GROWTH_PCT:g}",
               growth is not None and growth < SOAK_RSS_GROWTH_PCT),
    ]


def _signal_targets(result: dict) -> list:
    s = result["summary"]["all"]
    runs = s["runs"]
    return [
        target("nonzero_after_first_zero", s["nonzero_after_zero_total"],
               f"0 in {runs} runs", s["nonzero_after_zero_total"] == 0 and s["started"] == runs),
        target("exit_code_0", f"{s['exit_0']}/{runs}", f"{runs}/{runs}", s["exit_0"] == runs),
        target("last_twist_zero", f"{s['last_zero']}/{runs}", f"{runs}/{runs}",
               s["last_zero"] == runs),
    ]


def _jump_targets(result: dict) -> list:
    out = []
    for v in result["variants"]:
        ms = v.get("first_zero_ms")
        out.append(target(f"first_zero_ms[{v['variant']}#{v['repeat']}]", ms,
                          f"<= {result['limit_ms']:g}",
                          ms is not None and ms <= result["limit_ms"]))
    return out


def notes(result: dict) -> list:
    """Caveats that change how to read the figures."""
    out = []
    hogs = result.get("cpu_hogs", {}).get("count")
    if hogs is not None and hogs != HOGS_FOR_TARGETS:
        out.append(f"targets are stated for --cpu-hogs {HOGS_FOR_TARGETS}; this run used {hogs}")
    rec = result.get("recorder") or {}
    rate = result.get("control_rate_hz") or 20.0
    if rec.get("lag_max_ms") is not None and rec["lag_max_ms"] > RECORDER_LAG_WARN * 1e3 / rate:
        out.append(f"recorder lagged (its own wake-up lag max {rec['lag_max_ms']} ms, p99 "
                   f"{rec['lag_p99_ms']} ms): gaps up to that size may be the receiver's")
    foreign = _foreign_publishers(result)
    if foreign:
        out.append(f"another node published /cmd_vel on this ROS domain ({foreign}): its "
                   "Twists are mixed in; rerun with a --domain nobody else uses")
    for name, pub in (result.get("publishers") or {}).items():
        if pub.get("error"):
            out.append(f"publisher {name}: {pub['error']}")
        elif pub.get("nominal_hz") and pub.get("achieved_hz") is not None \
                and pub["achieved_hz"] < 0.9 * pub["nominal_hz"]:
            out.append(f"publisher {name} reached only {pub['achieved_hz']} of "
                       f"{pub['nominal_hz']:g} Hz: the load was lighter than named")
    return out


def _foreign_publishers(result: dict) -> str:
    """Where more than one /cmd_vel publisher was seen (empty if never)."""
    if result["scenario"] == "signals":
        n = result["summary"]["all"].get("runs_with_foreign_publishers", 0)
        return f"in {n} runs" if n else ""
    if result["scenario"] == "clock-jump":
        bad = [v["variant"] for v in result["variants"]
               if (v.get("graph_publishers_max") or {}).get("/cmd_vel", 0) > 1]
        return f"in {', '.join(bad)}" if bad else ""
    n = (result.get("graph_publishers_max") or {}).get("/cmd_vel", 0)
    return f"{n} publishers" if n > 1 else ""


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _rows(result: dict) -> list:
    name = result["scenario"]
    if name == "signals":
        rows = []
        for pattern, s in result["summary"]["by_pattern"].items():
            rows.append((pattern, f"runs {s['runs']}, exit 0 {s['exit_0']}, exit codes "
                                  f"{s['exit_codes']}, non-zero after zero "
                                  f"{s['nonzero_after_zero_total']} (in "
                                  f"{s['runs_with_nonzero_after_zero']} runs), last zero "
                                  f"{s['last_zero']}, hung {s['hung_killed']}"))
        a = result["summary"]["all"]
        rows.append(("all", f"runs {a['runs']}, first zero after signal max "
                            f"{_fmt(a['first_zero_max_s'])} s, no zero at all "
                            f"{a['no_zero_at_all']}"))
        return rows
    if name == "clock-jump":
        return [(f"{v['variant']} #{v['repeat']}",
                 f"first zero {_fmt(v.get('first_zero_ms'))} ms after last frame (limit "
                 f"{result['limit_ms']:g}), moving at last frame "
                 f"{v.get('moving_at_last_frame')}, non-zero after last frame "
                 f"{v.get('nonzero_after_last_frame')}, exit "
                 f"{(v.get('shutdown') or {}).get('exit_code')} after "
                 f"{(v.get('shutdown') or {}).get('exit_s')} s"
                 + (f", ERROR {v['error'][:80]}" if v.get("error") else ""))
                for v in result["variants"]]
    t = result["twists"]
    rss, diag = result["rss"], result["diagnostics"]["end_of_load"]
    sd = result["shutdown"]
    rows = []
    for window in ("load", "tail", "whole"):
        w = t[window]
        if not w["window_s"]:
            continue
        rows.append((f"Twists {window} ({w['window_s']:g} s)",
                     f"rate {_fmt(w['rate_hz'])} Hz of {result['control_rate_hz']:g}, max gap "
                     f"{_fmt(w['max_gap_ms'])} ms ({_fmt(w['max_gap_periods'])} periods), "
                     f"late {w['late_ticks']} ({_fmt((w['late_fraction'] or 0) * 100)} %, "
                     f"{_fmt(w['late_per_min'])}/min), >3 periods {w['gaps_over_3_periods']}"))
    worst = t["whole"].get("worst_gaps") or []
    rows.append(("worst gaps", ", ".join(f"{ms:.0f} ms at +{at:.1f} s" for at, ms in worst)
                 + f" (load {t['load']['window_s']:g} s, then tail)"))
    rows.append(("fewest Twists in 1 s", _fmt(t["fewest_in_one_second"])))
    rows.append(("node RSS (MB)", f"before {_fmt(rss.get('before_mb'))}, after "
                                  f"{_fmt(rss.get('after_mb'))} ({_fmt(rss.get('change_pct'))} "
                                  f"%), peak {_fmt(rss.get('peak_mb'))}"))
    rows.append(("node CPU %", f"load {_fmt(rss.get('load_cpu_pct'))}, whole "
                               f"{_fmt(rss.get('cpu_pct'))} (100 = one core)"))
    rows.append(("/diagnostics end of load",
                 f"control_rate_hz {_fmt(diag['control_rate_hz'])}, deadline_misses "
                 f"{_fmt(diag['deadline_misses'])} (+{_fmt(diag['deadline_misses_in_window'])}),"
                 f" jitter p99 {_fmt(diag['jitter_p99_ms'])} ms, control "
                 f"{diag['control_level_name']} {diag['control_message']!r}"))
    if name == "soak":
        rows += _soak_rows(result)
    if name == "malformed-flood":
        rows.append(("/diagnostics counters", f"malformed images "
                     f"+{_fmt(diag['malformed_images_in_window'])}, rejected commands "
                     f"+{_fmt(diag['rejected_commands_in_window'])}"))
    for pname, pub in result["publishers"].items():
        rows.append((f"published {pname}",
                     f"{_fmt(pub.get('achieved_hz'))} Hz of {_fmt(pub.get('nominal_hz'))}, "
                     f"{pub.get('published')} msgs, max interval "
                     f"{_fmt(pub.get('max_interval_ms'))} ms"))
    rec = result["recorder"]
    rows.append(("recorder health", f"wake-up lag p99 {_fmt(rec.get('lag_p99_ms'))} ms, max "
                                    f"{_fmt(rec.get('lag_max_ms'))} ms"))
    rows.append(("shutdown (SIGINT)", f"exit {sd['exit_code']}, first zero after "
                                      f"{_fmt(sd['first_zero_s'])} s, non-zero after zero "
                                      f"{sd['nonzero_after_zero']}, last zero {sd['last_zero']}"))
    return rows


def _soak_rows(result: dict) -> list:
    soak = result["soak"]
    loads = soak.get("load_avg") or []
    rows = []
    for w in soak["windows"]:
        at = w["start_s"] + 0.5 * w["window_s"]
        load = min(loads, key=lambda s: abs(s[0] - at))[1] if loads else None
        rows.append((f"window {w['index'] + 1} (+{w['start_s']:.0f} s)",
                     f"{_fmt(w['rate_hz'])} Hz, max gap {_fmt(w['max_gap_ms'])} ms, late "
                     f"{w['late_ticks']}, >3 periods {w['gaps_over_3_periods']}, load avg "
                     f"{_fmt(load)}"))
    g = soak["rss_after_warmup"]
    rows.append((f"RSS after {soak['warmup_s']:g} s warm-up",
                 f"{_fmt(g.get('start_mb'))} -> {_fmt(g.get('end_mb'))} MB "
                 f"({_fmt(g.get('growth_pct'))} %, medians of {_fmt(g.get('edge_s'))} s), slope "
                 f"{_fmt(g.get('slope_mb_per_min'))} MB/min, peak {_fmt(g.get('peak_mb'))}"))
    if loads:
        rows.append(("load avg (1 min)", f"min {min(s[1] for s in loads):.2f}, max "
                                         f"{max(s[1] for s in loads):.2f}, {len(loads)} samples"))
    return rows


def render(result: dict) -> str:
    """The printed table of one scenario, its targets and notes."""
    m = result.get("machine", {})
    hogs = result.get("cpu_hogs", {}).get("count")
    lines = [f"=== vla_stress {result['scenario']} === {m.get('date_utc')}, {m.get('cpus')} CPUs, "
             f"load avg {m.get('load_avg_1m')}, cpu hogs {hogs}, backend "
             f"{result.get('backend')}"]
    rows = _rows(result)
    width = max((len(k) for k, _ in rows), default=10)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    for t in result.get("targets", []):
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']} = {_fmt(t['value'])} "
                     f"(target {t['limit']})")
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def finish(result: dict, out_dir: str | Path) -> Path:
    """Evaluate targets and notes into ``result`` and write ``<out>/<scenario>.json``."""
    result["targets"] = evaluate(result)
    result["notes"] = notes(result)
    result["pass"] = all(t["pass"] for t in result["targets"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['scenario']}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
