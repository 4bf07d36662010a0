"""Where a Spark application's time went, from its event log (``spark.eventLog.enabled``).

One row per job, labelled by its job description (lesionspark's stages set one per step with
``progress.timed(..., spark=spark)``): wall seconds, tasks, and the task metrics Spark records,
summed over tasks: executor run time, CPU time, deserialisation, GC, result serialisation, input
and shuffle bytes. Wall time not inside any job is driver-side work (planning, listing on the
driver, Python between jobs), shown as its own row.

    .venv/bin/python benchmarks/eventlog.py /tmp/spark-events/<app-id>   # print the table
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ("wall_s", "jobs", "tasks", "run_s", "cpu_s", "deser_s", "gc_s", "ser_s", "input_mb",
           "shuffle_read_mb", "shuffle_write_mb")


def parse(path: str | Path, since_ms: int = 0) -> tuple[list[dict], float]:
    """(rows by job description, application wall seconds from ``since_ms``) for one event log."""
    job_desc, job_span, stage_job, acc = {}, {}, {}, defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
    start = end = None
    for line in Path(path).read_text().splitlines():
        ev = json.loads(line)
        kind = ev["Event"]
        if kind == "SparkListenerJobStart":
            if ev["Submission Time"] < since_ms:
                continue
            props = ev.get("Properties") or {}
            desc = props.get("spark.job.description") or "(no description)"
            job_desc[ev["Job ID"]] = desc
            job_span[ev["Job ID"]] = [ev["Submission Time"], None]
            for sid in ev["Stage IDs"]:
                stage_job[sid] = ev["Job ID"]
            start = ev["Submission Time"] if start is None else min(start, ev["Submission Time"])
        elif kind == "SparkListenerJobEnd" and ev["Job ID"] in job_span:
            job_span[ev["Job ID"]][1] = ev["Completion Time"]
            end = max(end or 0, ev["Completion Time"])
        elif kind == "SparkListenerTaskEnd" and ev["Stage ID"] in stage_job:
            m = ev.get("Task Metrics") or {}
            row = acc[job_desc[stage_job[ev["Stage ID"]]]]
            row["tasks"] += 1
            row["run_s"] += m.get("Executor Run Time", 0) / 1e3
            row["cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
            row["deser_s"] += m.get("Executor Deserialize Time", 0) / 1e3
            row["gc_s"] += m.get("JVM GC Time", 0) / 1e3
            row["ser_s"] += m.get("Result Serialization Time", 0) / 1e3
            row["input_mb"] += (m.get("Input Metrics") or {}).get("Bytes Read", 0) / 2**20
            sr = m.get("Shuffle Read Metrics") or {}
            row["shuffle_read_mb"] += (sr.get("Remote Bytes Read", 0) + sr.get("Local Bytes Read", 0)) / 2**20
            row["shuffle_write_mb"] += (m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0) / 2**20
    # Wall time per description: the union of its jobs' spans (jobs of one step may overlap).
    spans = defaultdict(list)
    for jid, (s, e) in job_span.items():
        spans[job_desc[jid]].append((s, e or s))
        acc[job_desc[jid]]["jobs"] += 1
    for desc, ss in spans.items():
        acc[desc]["wall_s"] = _union_ms(ss) / 1e3
    rows = [{"step": d, **v} for d, v in acc.items()]
    rows.sort(key=lambda r: -r["wall_s"])
    total = ((end or 0) - (start or 0)) / 1e3
    return rows, total


def _union_ms(spans: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            total += (cur_e - cur_s) if cur_e is not None else 0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s) if cur_e is not None else 0)


def table(rows: list[dict], wall_s: float | None = None) -> str:
    """Markdown table; with ``wall_s`` (the stage's measured wall time) a row for time outside jobs."""
    head = "| step (Spark job description) | " + " | ".join(COLUMNS) + " |"
    out = [head, "|" + " --- |" + " ---: |" * len(COLUMNS)]
    for r in rows:
        out.append(f"| {r['step']} | " + " | ".join(
            f"{r[c]:.0f}" if c in ("jobs", "tasks") else f"{r[c]:.1f}" for c in COLUMNS) + " |")
    if wall_s is not None:
        in_jobs = sum(r["wall_s"] for r in rows)
        out.append(f"| driver, outside any job (wall {wall_s:.1f} s − jobs {in_jobs:.1f} s) | "
                   f"{wall_s - in_jobs:.1f} |" + " |" * (len(COLUMNS) - 1))
    return "\n".join(out)


def latest_log(directory: str | Path) -> Path:
    files = [p for p in Path(directory).iterdir() if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime)


if __name__ == "__main__":
    rows, total = parse(sys.argv[1])
    print(table(rows))
    print(f"\njobs span {total:.1f} s")
