"""``python -m bench.run``: run contenders x scenarios, interleaved and repeated; write the report.

Order of work: for each repeat, for each scenario, every contender in turn (the order rotates
from one repeat to the next), each measurement on a freshly started contender; one dev origin
per repeat serves them all. Results go to ``bench/results/<stamp>.{md,json}`` and
``latest.{md,json}``; the Markdown is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench import kernel_floor, report
from bench.clients import wrk_available
from bench.contenders import (
    APT_HINT,
    CONTENDERS,
    Contender,
    Env,
    StartError,
    install_pproxy,
    start_origin,
)
from bench.procs import REPO, stop_all
from bench.results import Record
from bench.scenarios import (
    FULL_DEFAULTS,
    QUICK_DEFAULTS,
    SIZES,
    Ctx,
    Scenario,
    ScenarioError,
    parse,
)
from bench.system import (
    HostLoad,
    fd_limit,
    free_port,
    machine_info,
    source_revision,
    tool_version,
)

RESULTS = Path(__file__).resolve().parent / "results"
LOG_WORDS = ("Traceback", "ERROR", "Error", "error]", "[alert]", "[emerg]", "[crit]")


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(c.name for c in CONTENDERS)
    sizes = "; ".join(f"{k}={q} (full {f})" for k, (q, f) in SIZES.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"contenders: {names}\n\n"
            "scenarios: NAME or NAME:SIZES, where SIZES is\n"
            "  sse*: STREAMSxTOKENSxINTERVAL_MS (sse-max: as many streams as the fd limit allows)\n"
            "  small: SECONDS[xCONNECTIONS]   bulk: MIB   idle: CONNECTIONS\n"
            "  reload: STREAMSxTOKENSxINTERVAL_MS[xRELOADS]\n"
            f"  defaults (quick, full): {sizes}\n"
            f"  default set: quick {' '.join(QUICK_DEFAULTS)}; full {' '.join(FULL_DEFAULTS)}\n\n"
            f"nginx, haproxy and wrk are Debian packages: {APT_HINT}"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--repeats", type=int, help="repeats (default: 2 quick, 3 full)")
    parser.add_argument("--scenarios", nargs="+", metavar="S", help="scenarios to run")
    parser.add_argument(
        "--contenders",
        nargs="+",
        metavar="C",
        help="contender names or globs (e.g. 'relay-*' nginx-2hop); direct is always added",
    )
    parser.add_argument(
        "--streams-per-worker",
        type=int,
        default=2500,
        help="streams per load generator process (default 2500)",
    )
    parser.add_argument("--no-install", action="store_true", help="never pip install pproxy")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument("--list", action="store_true", help="list contenders and exit")
    return parser


def _select(patterns: list[str] | None) -> list[Contender]:
    if not patterns:
        return list(CONTENDERS)
    chosen = {"direct"}
    for pattern in patterns:
        for part in pattern.split(","):
            matched = [c.name for c in CONTENDERS if fnmatch.fnmatch(c.name, part)]
            if not matched:
                raise SystemExit(f"--contenders: nothing matches {part!r}; see --list")
            chosen.update(matched)
    return [c for c in CONTENDERS if c.name in chosen]


def _prepare(contenders: list[Contender], install: bool, skipped: dict[str, str]) -> None:
    """Install pproxy on demand; note contenders whose programs are missing."""
    if install and any(c.kind == "pproxy" and c.missing() for c in contenders):
        print("installing pproxy into this environment (pip install pproxy) ...", flush=True)
        why = install_pproxy()
        if why:
            print(f"  pip install pproxy failed: {why}", flush=True)
    for contender in contenders:
        why = contender.missing()
        if why:
            skipped[contender.name] = why


def _log_issues(logs: list[Path]) -> list[str]:
    found: list[str] = []
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        found += [
            f"{path.parent.name}/{path.name}: {line.strip()}"
            for line in lines
            if any(word in line for word in LOG_WORDS)
        ]
    return found[:10]


def _measure(
    contender: Contender, scenario: Scenario, env: Env, ctx: Ctx, repeat: int, origin_pid: int
) -> Record:
    started = time.monotonic()
    tag = f"r{repeat + 1}-{scenario.key.replace(':', '_')}"
    running = contender.start(env, tag)  # StartError goes to the caller
    record = Record(repeat, scenario.key, contender.name, None)
    load = HostLoad([*running.pids(), origin_pid])
    try:
        record.result = scenario.run(running, ctx)
        record.host_busy_cores, record.foreign_cores = load.finish()
        if (why := running.dead()) is not None:
            record.error = f"crashed during the run: {why}"
    except Exception as exc:  # one failed measurement must not end the whole run
        record.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        running.stop()
    logs = [p.log_path for p in running.procs]
    logs += list((env.workdir / f"{contender.name}-{tag}").glob("*/error.log"))
    record.log_issues = _log_issues(logs)
    record.seconds = time.monotonic() - started
    return record


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for c in CONTENDERS:
            print(f"{c.name:20} {c.description}{'  [' + m + ']' if (m := c.missing()) else ''}")
        return 0
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    limit = fd_limit()
    repeats = args.repeats or (2 if args.quick else 3)
    words = args.scenarios or list(QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    try:
        scenarios = [parse(word, args.quick, limit) for word in words]
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    contenders = _select(args.contenders)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    _prepare(contenders, not args.no_install, skipped)
    if not wrk_available() and any(s.kind == "small" for s in scenarios):
        skipped["small requests (wrk)"] = f"wrk not installed: {APT_HINT}"
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)

    tools = {
        "nginx": tool_version(["nginx", "-v"]),
        "haproxy": tool_version(["haproxy", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "pproxy": tool_version([sys.executable, "-m", "pproxy", "--version"]),
    }
    print("measuring the kernel floor (bench.kernel_floor, ~10 s)", flush=True)
    machine = machine_info(tools, kernel_floor.measure())
    revision = source_revision(REPO)  # now: others may commit while the bench runs
    started_at = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aicdn-bench-"))
    records: list[Record] = []
    ever_started: set[str] = set()
    print(
        f"bench: {repeats} repeat(s), scenarios {' '.join(words)}; work dir {workdir}", flush=True
    )
    try:
        for repeat in range(repeats):
            origin_port = free_port()
            origin = start_origin(sys.executable, origin_port, workdir)
            env = Env(workdir, origin_port, limit)
            ctx = Ctx(workdir, args.streams_per_worker)
            try:
                for scenario in scenarios:
                    order = [c for c in contenders if c.name not in skipped and scenario.applies(c)]
                    if not order:
                        continue
                    shift = repeat % len(order)
                    order = order[shift:] + order[:shift]
                    print(f"[{repeat + 1}/{repeats}] {scenario.title()}", flush=True)
                    for contender in order:
                        if contender.name in skipped:
                            continue
                        try:
                            record = _measure(contender, scenario, env, ctx, repeat, origin.pid)
                        except StartError as exc:
                            print(f"    {contender.name:20} cannot start: {exc}", flush=True)
                            if contender.name not in ever_started:
                                skipped[contender.name] = f"cannot start: {exc}"
                                continue
                            record = Record(
                                repeat, scenario.key, contender.name, None, f"cannot start: {exc}"
                            )
                        ever_started.add(contender.name)
                        records.append(record)
                        brief = record.result.brief() if record.result else record.error
                        print(
                            f"    {contender.name:20} {brief}  ({record.seconds:.1f} s, "
                            f"other load {record.foreign_cores:.2f} cores)",
                            flush=True,
                        )
                        if not origin.alive():
                            raise RuntimeError(f"the dev origin died: {origin.log_tail()}")
            finally:
                origin.stop()
    except KeyboardInterrupt:
        notes.append("interrupted: the results are partial")
        print("interrupted; writing partial results", file=sys.stderr)
    finally:
        stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep_workdir:
        notes.append(f"configs and logs kept in {workdir}")
    info = report.RunInfo(
        started=started_at.strftime("%Y-%m-%d %H:%M UTC"),
        duration_s=time.monotonic() - t0,
        quick=args.quick,
        repeats=repeats,
        argv=["python -m bench.run", *(argv if argv is not None else sys.argv[1:])],
        machine=machine,
        scenarios=scenarios,
        contenders=[c for c in contenders if any(r.contender == c.name for r in records)],
        relay_revision=revision,
        skipped=skipped,
        notes=notes,
    )
    stamp = started_at.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    path, text = report.write(info, records, args.out, stamp)
    print()
    print(text)
    print(f"written: {path} (and latest.md / latest.json in {path.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
