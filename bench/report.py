"""The report: a Markdown table per scenario plus a summary, and the same data as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import CAPPED
from bench.contenders import Contender
from bench.results import FIGURES, Figure, Record, Stat, records_of, stat, values
from bench.scenarios import (
    BulkResult,
    IdleResult,
    ReloadResult,
    Scenario,
    SmallResult,
    SseScenario,
)
from bench.system import Machine

#: Issue 13's targets for the relay edge(http)->core over tcp: (figure, comparison, bound).
TARGETS = (
    ("CPU per SSE token (µs)", "<=", 30.0),
    ("token p99 ÷ direct", "<=", 4.1),
    ("small requests, req/s ÷ direct", ">=", 0.52),
    ("bulk MiB/s ÷ direct (1 connection)", ">=", 0.24),
    ("KiB per idle held connection", "<=", 5.6),
)
#: The relay as issue 13's targets name it (edge http -> core, tcp between the hops): one
#: tunnel per TCP connection, and all tunnels multiplexed on one TCP connection.
TARGET_CONTENDERS = ("relay-2hop-tcp", "relay-2hop-mtcp")


@dataclass
class RunInfo:
    started: str
    duration_s: float
    quick: bool
    repeats: int
    argv: list[str]
    machine: Machine
    scenarios: list[Scenario]
    contenders: list[Contender]
    #: Git commit of the relay measured, and whether its working tree differed.
    relay_revision: str = "unknown"
    #: Contender or scenario name -> why it did not run.
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _fmt(value: float, digits: int) -> str:
    if abs(value) >= 1000 and digits > 0:
        digits = 0
    return f"{value:,.{digits}f}".replace(",", " ")


def cell(st: Stat | None, digits: int) -> str:
    if st is None:
        return "-"
    if st.n == 1 or st.min == st.max:
        return _fmt(st.median, digits)
    return f"{_fmt(st.median, digits)} [{_fmt(st.min, digits)}, {_fmt(st.max, digits)}]"


def _status_column(scenario: Scenario, recs: list[Record]) -> str:
    """Failures summed over repeats, in the terms of the scenario."""
    errors = [r.error for r in recs if r.error]
    results = [r.result for r in recs if r.result is not None]
    text = ""
    if scenario.kind in ("sse", "reload"):
        streams = sum(getattr(r, "streams", 0) for r in results)
        failed = sum(getattr(r, "failed", getattr(r, "broken", 0)) for r in results)
        text = f"{failed}/{streams}"
    elif scenario.kind == "small":
        text = str(sum(sum(r.errors.values()) for r in results if isinstance(r, SmallResult)))
    elif scenario.kind == "bulk":
        bulk = [r for r in results if isinstance(r, BulkResult)]
        bad = sum(1 for r in bulk if not r.complete)
        capped = sum(1 for r in bulk if r.error == CAPPED)
        text = f"{bad} failed" if bad else "yes"
        if capped:
            text += f", {capped} stopped at the time cap"
    elif scenario.kind == "idle":
        held = sum(r.held for r in results if isinstance(r, IdleResult))
        conns = sum(r.conns for r in results if isinstance(r, IdleResult))
        text = f"{held}/{conns} held"
    if scenario.kind == "reload":
        applied = all(r.applied for r in results if isinstance(r, ReloadResult))
        text += ", reloads applied" if applied and results else ", RELOAD NOT APPLIED"
    if errors:
        text += f"; {len(errors)} error(s)"
    return text


#: The last column of each table, added up over all repeats.
_STATUS_HEADER = {
    "sse": "failed streams (all repeats)",
    "small": "errors (all repeats)",
    "bulk": "complete",
    "idle": "held (all repeats)",
    "reload": "broken streams (all repeats)",
}


def scenario_table(scenario: Scenario, contenders: list[Contender], records: list[Record]) -> str:
    figures = FIGURES[scenario.kind]
    names = [c.name for c in contenders if records_of(records, scenario.key, c.name)]
    lines = [
        "| contender | "
        + " | ".join(f.label for f in figures)
        + f" | {_STATUS_HEADER[scenario.kind]} |",
        "|---" * (len(figures) + 2) + "|",
    ]
    for name in names:
        cells = []
        for figure in figures:
            if name == "direct" and figure.proxied_only:
                cells.append("-")
                continue
            st = stat(values(records, scenario.key, name, figure))
            text = cell(st, figure.digits)
            if name == "direct" and figure.mode != "abs" and st is not None:
                text = f"*{text}*"  # the baseline itself, absolute
            cells.append(text)
        status = _status_column(scenario, records_of(records, scenario.key, name))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def _headline_scenarios(scenarios: list[Scenario]) -> dict[str, Scenario]:
    """The scenario each summary column is read from (the largest SSE run for SSE figures)."""
    chosen: dict[str, Scenario] = {}
    sse = [s for s in scenarios if isinstance(s, SseScenario)]
    if sse:
        chosen["sse"] = max(sse, key=lambda s: s.streams)
    for kind in ("small", "bulk", "idle", "reload"):
        for scenario in scenarios:
            if scenario.kind == kind:
                chosen.setdefault(kind, scenario)
    return chosen


_SUMMARY = (
    ("sse", Figure("cpu_us_per_token", "CPU µs per SSE token", "abs", 1)),
    ("sse", Figure("delay_p99_ms", "token p99 ÷ direct", "ratio")),
    ("sse", Figure("delay_p99_ms", "added token p99 ms", "added")),
    ("small", Figure("requests_per_s", "small req/s ÷ direct", "ratio")),
    ("bulk", Figure("mib_per_s", "bulk MiB/s ÷ direct", "ratio")),
    ("idle", Figure("kib_per_conn", "KiB per idle conn", "abs")),
)


def summary(
    scenarios: list[Scenario], contenders: list[Contender], records: list[Record]
) -> tuple[str, dict[str, dict[str, Stat | None]]]:
    chosen = _headline_scenarios(scenarios)
    columns = [(kind, fig) for kind, fig in _SUMMARY if kind in chosen]
    header = "| contender | " + " | ".join(f.label for _, f in columns)
    if "reload" in chosen:
        header += " | reload: broken streams"
    lines = [header + " |", "|---" * (len(columns) + 1 + ("reload" in chosen)) + "|"]
    data: dict[str, dict[str, Stat | None]] = {}
    for contender in contenders:
        if contender.kind == "direct":
            continue
        if not any(r.contender == contender.name and r.result for r in records):
            continue
        row: dict[str, Stat | None] = {}
        cells = []
        for kind, figure in columns:
            st = stat(values(records, chosen[kind].key, contender.name, figure))
            row[f"{kind}.{figure.label}"] = st
            cells.append(cell(st, figure.digits))
        if "reload" in chosen:
            recs = records_of(records, chosen["reload"].key, contender.name)
            cells.append(_status_column(chosen["reload"], recs) if recs else "-")
        data[contender.name] = row
        lines.append(f"| {contender.name} | " + " | ".join(cells) + " |")
    notes = []
    for kind, scenario in chosen.items():
        notes.append(f"{kind}: {scenario.title()}")
    return "\n".join(lines) + "\n\nColumns read from: " + "; ".join(notes) + ".", data


def targets_table(data: dict[str, dict[str, Stat | None]]) -> str:
    names = [name for name in TARGET_CONTENDERS if name in data]
    if not names:
        return ""
    keys = (
        "sse.CPU µs per SSE token",
        "sse.token p99 ÷ direct",
        "small.small req/s ÷ direct",
        "bulk.bulk MiB/s ÷ direct",
        "idle.KiB per idle conn",
    )
    lines = [
        "| figure | target | " + " | ".join(f"{name} (median) | met" for name in names) + " |",
        "|---|---|" + "---|---|" * len(names),
    ]
    for (label, op, bound), key in zip(TARGETS, keys, strict=True):
        cells = []
        for name in names:
            st = data[name].get(key)
            if st is None:
                cells += ["-", "-"]
                continue
            met = st.median <= bound if op == "<=" else st.median >= bound
            cells += [f"{st.median:.2f}", "yes" if met else "NO"]
        lines.append(f"| {label} | {op} {bound:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_line(scenario: Scenario, records: list[Record], nproc: int) -> str:
    foreign = [r.foreign_cores for r in records if r.scenario == scenario.key and r.result]
    if not foreign:
        return ""
    st = stat(foreign)
    assert st is not None
    return (
        f"Other work on the machine during these measurements (CPU used by neither the bench,"
        f" the contender nor the origin): median {st.median:.2f}, max {st.max:.2f} of {nproc}"
        " cores."
    )


def _kernel_floor_line(floor: dict[str, float]) -> list[str]:
    if not floor:
        return []
    return [
        f"- Kernel floor at the start (`python -m bench.kernel_floor`): a loopback send+recv of"
        f" 100 bytes {floor['send_recv_ns'] / 1e3:.1f} µs (two hops: at least"
        f" {floor['two_hops_send_recv_ns'] / 1e3:.1f} µs per token in the kernel); a message"
        f" that wakes a sleeping process {floor['wake_up_cpu_ns'] / 1e3:.0f} µs of CPU"
    ]


def markdown(info: RunInfo, records: list[Record]) -> str:
    m = info.machine
    tools = ", ".join(f"{k} {v}" for k, v in info.machine.tools.items() if v) or "none"
    minutes, seconds = divmod(int(info.duration_s), 60)
    out = [
        f"# Benchmark: relay vs nginx, haproxy, pproxy — {info.started}",
        "",
        f"- Machine: nproc {m.nproc}, {m.cpu_model}, {m.memory_gib} GiB, Linux {m.kernel}, "
        f"Python {m.python}, fd limit {m.fd_limit}, load average at start {m.loadavg}",
        f"- Tools: {tools}; relay: {info.relay_revision}",
        *_kernel_floor_line(m.kernel_floor),
        f"- Run: {'--quick, ' if info.quick else ''}{info.repeats} repeat(s), "
        f"{minutes}m{seconds:02d}s; command: `{' '.join(info.argv)}`",
        "- Every proxy runs one process (one nginx worker, one haproxy thread) per hop, all on"
        " loopback; load generators run in their own processes.",
        "- Cells: median [min, max] over repeats. *÷ direct* and *added* figures are against"
        " the direct (no proxy) run of the same repeat; the direct row shows its absolute value"
        " in italics.",
        "",
        "## Summary",
        "",
    ]
    table, data = summary(info.scenarios, info.contenders, records)
    out += [table, ""]
    targets = targets_table(data)
    if targets:
        out += [
            "Issue 13 targets (set for 9,900 streams, 2 hops; compare like with like):",
            "",
            targets,
            "",
        ]
    for scenario in info.scenarios:
        if not any(r.scenario == scenario.key for r in records):
            continue
        out += [
            f"## {scenario.title()}",
            "",
            scenario_table(scenario, info.contenders, records),
            "",
            _load_line(scenario, records, info.machine.nproc),
            "",
        ]
    problems = [
        f"- repeat {r.repeat + 1}, {r.scenario}, {r.contender}: {r.error}"
        for r in records
        if r.error
    ]
    for r in records:
        result = r.result
        errors = getattr(result, "errors", None) if result is not None else None
        if errors:
            shown = ", ".join(f"{k} x{v}" for k, v in list(errors.items())[:4])
            problems.append(f"- repeat {r.repeat + 1}, {r.scenario}, {r.contender}: {shown}")
        if r.log_issues:
            problems.append(
                f"- repeat {r.repeat + 1}, {r.scenario}, {r.contender} logged: "
                + " / ".join(f"`{line[:160]}`" for line in r.log_issues[:2])
            )
    if info.skipped or problems or info.notes:
        out += ["## Skipped, errors and notes", ""]
        out += [f"- skipped {name}: {why}" for name, why in info.skipped.items()]
        out += problems
        out += [f"- {note}" for note in info.notes]
        out.append("")
    return "\n".join(out)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "kind"):
            out["kind"] = value.kind
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def as_json(info: RunInfo, records: list[Record]) -> dict[str, Any]:
    aggregate: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in info.scenarios:
        per: dict[str, dict[str, Any]] = {}
        for contender in info.contenders:
            if not records_of(records, scenario.key, contender.name):
                continue
            per[contender.name] = {
                f"{f.key}.{f.mode}": _plain(stat(values(records, scenario.key, contender.name, f)))
                for f in FIGURES[scenario.kind]
            }
        aggregate[scenario.key] = per
    _, data = summary(info.scenarios, info.contenders, records)
    return {
        "started": info.started,
        "duration_s": round(info.duration_s, 1),
        "quick": info.quick,
        "repeats": info.repeats,
        "argv": info.argv,
        "relay_revision": info.relay_revision,
        "machine": _plain(info.machine),
        "scenarios": [dict(_plain(s), title=s.title()) for s in info.scenarios],
        "contenders": [_plain(c) for c in info.contenders],
        "skipped": info.skipped,
        "notes": info.notes,
        "summary": _plain(data),
        "aggregate": aggregate,
        "records": [
            dict(_plain(r), result_type=type(r.result).__name__ if r.result else None)
            for r in records
        ],
    }


def write(info: RunInfo, records: list[Record], out_dir: Path, stamp: str) -> tuple[Path, str]:
    """Write ``<stamp>.md``/``.json`` and ``latest.md``/``.json``; returns (md path, text)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(info, records)
    doc = json.dumps(as_json(info, records), indent=1, ensure_ascii=False)
    md_path = out_dir / f"{stamp}.md"
    md_path.write_text(text)
    (out_dir / f"{stamp}.json").write_text(doc)
    (out_dir / "latest.md").write_text(text)
    (out_dir / "latest.json").write_text(doc)
    return md_path, text
