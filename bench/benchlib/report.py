"""Medians over rounds, per-workload tables, and the summary of ratios against
the issue 5 targets."""
import statistics

COLS = ("target", "IOPS", "MiB/s", "p99 us", "CPU s", "CPU s/GiB", "RSS MiB", "shut s",
        "dev flush/io", "vs best qemu", "check")


def aggregate(records, workload, targets):
    """One row per target: medians of the rounds that ran, or the error."""
    rows = []
    for t in targets:
        runs = [r for r in records if r["workload"] == workload.name and r["target"] == t.name]
        ok = [r for r in runs if "error" not in r]
        row = {"target": t.name, "kind": t.kind, "lazy": t.lazy, "rounds": len(ok)}
        if not ok:
            row["error"] = runs[-1]["error"] if runs else "not run"
            rows.append(row)
            continue
        for key in ("iops", "mib_s", "p99_us", "cpu_s", "cpu_per_gib", "shutdown_s"):
            row[key] = statistics.median(r[key] for r in ok)
        row["rss_mib"] = max(r["rss_kib"] for r in ok) / 1024
        fl = [r["flush_per_io"] for r in ok if r.get("flush_per_io") is not None]
        row["flush_per_io"] = statistics.median(fl) if fl else None
        bad = [r["check"] for r in ok if r.get("check", "clean") != "clean"]
        row["check"] = bad[0] if bad else ("clean" if any("check" in r for r in ok) else "-")
        rows.append(row)
    return rows


def best(rows, pred, key="iops", low=False):
    cand = [r for r in rows if "error" not in r and pred(r)]
    if not cand:
        return None
    return (min if low else max)(cand, key=lambda r: r[key])


def is_qnbd_goal_row(workload):
    if workload.goal_rows == "lazy":
        return lambda r: r["kind"] == "qnbd" and r["lazy"]
    return lambda r: r["kind"] == "qnbd"


def summarize(workload, rows):
    bq = best(rows, lambda r: r["kind"] == "qemu")
    bn = best(rows, is_qnbd_goal_row(workload))
    s = {"workload": workload.name, "goal": workload.goal,
         "qnbd": bn["target"] if bn else None, "qemu": bq["target"] if bq else None}
    if bq and bn:
        s["ratio"] = bn["iops"] / bq["iops"]
        s["met"] = s["ratio"] >= workload.goal if workload.goal else None
    cq = best(rows, lambda r: r["kind"] == "qemu", "cpu_per_gib", low=True)
    cn = best(rows, lambda r: r["kind"] == "qnbd", "cpu_per_gib", low=True)
    if cq and cn and cq["cpu_per_gib"] > 0:
        s["cpu_ratio"] = cn["cpu_per_gib"] / cq["cpu_per_gib"]
    kit = best(rows, lambda r: r["kind"] == "nbdkit")
    if kit and bn:
        s["vs_nbdkit"] = bn["iops"] / kit["iops"]
    return s


def _fmt(v, nd=1):
    return "-" if v is None else f"{v:,.{nd}f}"


def table(workload, rows, image_desc, rounds):
    bq = best(rows, lambda r: r["kind"] == "qemu")
    lines = [f"== {workload.name}: {workload.desc}",
             f"   image {image_desc}; median of {rounds} rounds"]
    widths = (16, 10, 9, 9, 7, 11, 9, 8, 14, 14, 0)
    lines.append("   " + "".join(c.ljust(w) if w else c for c, w in zip(COLS, widths)))
    for r in rows:
        if "error" in r:
            lines.append(f"   {r['target']:<16}FAILED: {r['error']}")
            continue
        ratio = f"{r['iops'] / bq['iops']:.2f}x" if bq and r["kind"] != "qemu" else ""
        cells = (r["target"], _fmt(r["iops"], 0), _fmt(r["mib_s"]), _fmt(r["p99_us"], 0),
                 _fmt(r["cpu_s"], 2), _fmt(r["cpu_per_gib"], 2), _fmt(r["rss_mib"]),
                 _fmt(r["shutdown_s"], 2), _fmt(r["flush_per_io"], 2), ratio, r["check"])
        lines.append("   " + "".join(c.ljust(w) if w else c for c, w in zip(cells, widths)))
    return "\n".join(lines)


def summary_table(summaries, extra_notes):
    lines = ["== Summary: best qnbd / best qemu-nbd (IOPS; same bs so = MiB/s), "
             "CPU s per GiB moved (best/best)",
             "   workload     qnbd target      qemu target      ratio   goal    met    "
             "CPU/GiB ratio (goal <= 0.5)"]
    for s in summaries:
        ratio = f"{s['ratio']:.2f}x" if "ratio" in s else "n/a"
        goal = f">={s['goal']:.1f}x" if s["goal"] else ""
        met = {True: "yes", False: "NO", None: ""}[s.get("met")]
        cpu = f"{s['cpu_ratio']:.2f}" if "cpu_ratio" in s else "n/a"
        kit = f"   (vs nbdkit {s['vs_nbdkit']:.2f}x)" if "vs_nbdkit" in s else ""
        lines.append(f"   {s['workload']:<12} {str(s['qnbd']):<16} {str(s['qemu']):<16} "
                     f"{ratio:<7} {goal:<7} {met:<6} {cpu}{kit}")
    return "\n".join(lines + extra_notes)


def fragmentation_notes(all_rows):
    """Issue 5: a sequential read of a randomly/reversely written image within 5%
    of the same read on a sequentially written one."""
    notes = []
    seq = {r["target"]: r for r in all_rows.get("e-seq", []) if "error" not in r}
    for name in ("e-rand", "e-rev"):
        for r in all_rows.get(name, []):
            base = seq.get(r["target"])
            if "error" in r or not base or r["kind"] != "qnbd":
                continue
            frac = r["iops"] / base["iops"]
            notes.append(f"   {name} / e-seq for {r['target']}: {frac:.2f} "
                         f"({'within' if frac >= 0.95 else 'NOT within'} 5%)")
    return notes
