"""``index.html`` of an evidence pack: one offline page, CSS and SVG inline, no requests.

A Content-Security-Policy of ``default-src 'none'`` forbids the page any request at all;
nothing in it points outside the file. Large runs keep every row of the task table; the
DAG and the timeline draw the first :data:`MAX_DRAWN` tasks and say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from html import escape as _escape
from typing import Any

MAX_DRAWN = 400
COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "skipped": "#9e9e9e",
    "upstream_failed": "#ef6c00",
    "cancelled": "#6d4c41",
    "pending": "#bdbdbd",
    "running": "#1565c0",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f6f9}
header{background:#1d2b45;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px}header .sub{opacity:.8;font-size:13px}
main{padding:20px 32px;max-width:1400px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:16px 20px;
margin:0 0 18px}
h2{font-size:16px;margin:0 0 12px}
.badges{display:flex;gap:12px;flex-wrap:wrap;margin-top:12px}
.badge{display:inline-block;padding:6px 12px;border-radius:16px;font-weight:600;font-size:13px}
.ok{background:#e6f4ea;color:#1e6b34}.bad{background:#fde7e9;color:#a4161a}
.na{background:#eceff1;color:#455a64}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e7ee}
th{background:#f0f3f8;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.st{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#5b6576}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.scroll{overflow:auto;max-height:520px}
.legend span{margin-right:14px;font-size:12px}
svg text{font:11px system-ui,sans-serif}
.note{color:#5b6576;font-size:12px}
input{padding:4px 8px;margin-bottom:8px;border:1px solid #c5ccd8;border-radius:4px}
"""

_JS = """
document.getElementById('filter').addEventListener('input',function(e){
 var q=e.target.value.toLowerCase();
 document.querySelectorAll('#tasks tbody tr').forEach(function(r){
  r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});
"""


_ESCAPED: dict[str, str] = {}


def escape(text: str) -> str:
    """HTML-escape ``text`` (memoized: statuses, levels and key ids repeat per task)."""
    got = _ESCAPED.get(text)
    if got is None:
        got = _escape(text)
        if len(_ESCAPED) < 4096:
            _ESCAPED[text] = got
    return got


def escape_all(texts: list[str]) -> list[str]:
    """:func:`escape` of each text, in a few C-level passes over the joined column rather
    than one call per cell (a 10,000-task table has 60,000 cells)."""
    sep = "\x00"
    joined = sep.join(texts)
    if joined.count(sep) != max(len(texts) - 1, 0):  # a text holds the separator
        return [escape(t) for t in texts]
    return _escape(joined).split(sep) if texts else []


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _status(s: str) -> str:
    return f'<span class="st" style="background:{COLORS.get(s, "#bdbdbd")}"></span>{escape(s)}'


def _dag(tasks: list[dict[str, Any]]) -> str:
    shown = tasks[:MAX_DRAWN]
    names = {t["name"] for t in shown}
    depth: dict[str, int] = {}
    for t in shown:  # tasks come in definition order; upstreams first when defined so
        ups = [u for u in t.get("dependsOn", []) if u in names]
        depth[t["name"]] = 1 + max((depth.get(u, 0) for u in ups), default=-1)
    layers: dict[int, list[str]] = {}
    for n, d in depth.items():
        layers.setdefault(d, []).append(n)
    w, h, bw, bh = 170, 44, 140, 26
    pos = {n: (20 + d * w, 16 + i * h) for d, ns in layers.items() for i, n in enumerate(ns)}
    width = 40 + (max(layers, default=0) + 1) * w
    height = 32 + max((len(v) for v in layers.values()), default=1) * h
    status = {t["name"]: t["status"] for t in shown}
    parts = [
        f'<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="task graph">'
    ]
    for t in shown:
        x2, y2 = pos[t["name"]]
        for u in t.get("dependsOn", []):
            if u in pos:
                x1, y1 = pos[u]
                parts.append(
                    f'<path d="M{x1 + bw},{y1 + bh / 2} C{x1 + bw + 15},{y1 + bh / 2} '
                    f'{x2 - 15},{y2 + bh / 2} {x2},{y2 + bh / 2}" fill="none" '
                    f'stroke="#8a94a6" stroke-width="1.2"/>'
                )
    for n, (x, y) in pos.items():
        c = COLORS.get(status[n], "#bdbdbd")
        label = n if len(n) <= 20 else n[:19] + "…"
        parts.append(
            f'<g class="node"><title>{escape(n)}: {escape(status[n])}</title>'
            f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="5" fill="{c}"/>'
            f'<text x="{x + 8}" y="{y + 17}" fill="#fff">{escape(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _gantt(pred: Mapping[str, Any]) -> str:
    rowof: dict[str, int] = {}
    attempts = []
    for a in pred.get("attempts", []):
        if not a.get("start"):
            continue
        i = rowof.get(a["task"])
        if i is None:
            if len(rowof) >= MAX_DRAWN:
                continue
            i = rowof[a["task"]] = len(rowof)
        s = _ts(a["start"]) or 0.0
        attempts.append((i, a, s, _ts(a.get("end")) or s))
    t0 = _ts(pred.get("started")) or min((x[2] for x in attempts), default=0.0)
    t1 = max([_ts(pred.get("finished")) or t0, *(x[3] for x in attempts)])
    span = max(t1 - t0, 1e-6)
    names = list(rowof)
    label_w, plot_w, row = 160, 900, 18
    height = 30 + len(names) * row
    rowof = {n: i for i, n in enumerate(names)}
    parts = [
        f'<svg id="gantt" xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 60}" '
        f'height="{height}" role="img" aria-label="timeline of every attempt">'
    ]
    for k in range(5):
        x = label_w + plot_w * k / 4
        parts.append(
            f'<line x1="{x}" y1="14" x2="{x}" y2="{height}" stroke="#e3e7ee"/>'
            f'<text x="{x + 2}" y="11" fill="#5b6576">+{span * k / 4:.3g}s</text>'
        )
    for i, a, s, e in attempts:
        x = label_w + plot_w * (s - t0) / span
        w = max(plot_w * (e - s) / span, 2.0)
        y = 20 + i * row
        c = COLORS.get(a.get("outcome", ""), "#1565c0")
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 5}" rx="2" '
            f'fill="{c}"><title>{escape(a["task"])} attempt {a["attempt"]}: '
            f"{escape(str(a.get('outcome')))} ({e - s:.3f}s)</title></rect>"
        )
    for n, i in rowof.items():
        label = n if len(n) <= 24 else n[:23] + "…"
        parts.append(f'<text x="4" y="{20 + i * row + 10}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(run_json: Mapping[str, Any], *, audit_ok: bool | None, files: Mapping[str, Any]) -> str:
    """The page for a pack whose ``run.json`` is ``run_json``."""
    pred = run_json["predicate"]
    secs = pred.get("sections") or {}
    cls = secs.get("classification") or {}
    enc = (secs.get("encryption") or {}).get("keys") or {}
    lin = secs.get("lineage") or {}
    audit = secs.get("audit") or {}
    tasks = pred.get("tasks", [])
    kid = run_json["signer"]["keyid"]
    if audit_ok is None:
        badge = '<span id="audit-badge" class="badge na">Audit trail: not recorded</span>'
    elif audit_ok:
        badge = (
            '<span id="audit-badge" class="badge ok">&#10004; Audit chain intact '
            f"(seq {audit.get('firstSeq')}–{audit.get('lastSeq')})</span>"
        )
    else:
        badge = '<span id="audit-badge" class="badge bad">&#10008; Audit chain BROKEN</span>'
    ok_run = pred.get("status") == "succeeded"
    run_badge = (
        f'<span class="badge {"ok" if ok_run else "bad"}">Run {escape(str(pred.get("status")))}'
        "</span>"
    )
    levels = cls.get("levels") or {}
    gone = set(run_json.get("shredded") or ())
    pii = cls.get("pii") or {}
    names = [t["name"] for t in tasks]
    col_name = escape_all(names)
    col_level = escape_all([levels.get(n, "—") for n in names])
    col_pii = escape_all([", ".join(pii.get(n, [])) or "—" for n in names])
    col_key = escape_all([enc.get(n, "—") for n in names])
    col_tenant = escape_all([t.get("tenant") or "—" for t in tasks])
    status_cells: dict[str, str] = {}
    rows = []
    for i, t in enumerate(tasks):
        dur = t.get("durationSeconds")
        st = status_cells.get(t["status"])
        if st is None:
            st = status_cells[t["status"]] = _status(t["status"])
        rows.append(
            f"<tr><td>{col_name[i]}</td><td>{st}</td>"
            f'<td class="num">{t["attempts"]}</td>'
            f'<td class="num">{"" if dur is None else f"{dur:.3f}s"}</td>'
            f"<td>{col_level[i]}</td><td>{col_pii[i]}</td><td>{col_key[i]}"
            f"{' <b>(shredded)</b>' if names[i] in gone else ''}</td>"
            f"<td>{col_tenant[i]}</td></tr>"
        )
    fl = cls.get("flows") or []
    col_from = escape_all([f["from"] for f in fl])
    col_to = escape_all([f["to"] for f in fl])
    col_flevel = escape_all([f["level"] for f in fl])
    col_clear = escape_all([f.get("clearance") or "—" for f in fl])
    col_dec = escape_all([f.get("decision") or "no clearance set" for f in fl])
    flows = []
    for i, f in enumerate(fl):
        mark = {"allowed": "ok", "refused": "bad"}.get(f.get("decision") or "", "na")
        flows.append(
            f"<tr><td>{col_from[i]} → {col_to[i]}</td><td>{col_flevel[i]}</td>"
            f'<td>{col_clear[i]}</td><td><span class="badge {mark}">{col_dec[i]}</span></td>'
            "</tr>"
        )
    ds = lin.get("datasets") or {}
    legend = "".join(f"<span>{_status(s)}</span>" for s in COLORS)
    drawn_note = (
        f'<p class="note">Showing the first {MAX_DRAWN} of {len(tasks)} tasks; the table '
        "below lists all of them.</p>"
        if len(tasks) > MAX_DRAWN
        else ""
    )
    env = pred.get("environment") or {}
    pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())

    def lst(items: list[str]) -> str:
        return "".join(f"<li>{escape(i)}</li>" for i in items) or "<li>—</li>"

    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Evidence: {escape(pred["pipeline"])} run {escape(pred["runId"])}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>Compliance evidence — {escape(pred["pipeline"])}</h1>
<div class="sub">run {escape(pred["runId"])} · {escape(str(pred.get("started")))} →
{escape(str(pred.get("finished")))}</div>
<div class="badges">{run_badge}{badge}
<span class="badge na" id="signer">Signed by Ed25519 key {escape(kid[:16])}…</span></div>
</header>
<main>
<section><h2>Run</h2><dl>
<dt>Pipeline</dt><dd>{escape(pred["pipeline"])}</dd>
<dt>Run id</dt><dd>{escape(pred["runId"])}</dd>
<dt>Resumed from</dt><dd>{escape(pred.get("resumedFrom") or "—")}</dd>
<dt>Principal</dt><dd>{escape(pred.get("principal") or "—")}</dd>
<dt>Tenants</dt><dd>{escape(", ".join(pred.get("tenants") or []) or "—")}</dd>
<dt>Executor</dt><dd>{escape(str(pred.get("executor")))}</dd>
<dt>Config digest</dt><dd>sha256:{escape(pred["config"]["sha256"])}</dd>
<dt>Signer key id</dt><dd>{escape(kid)}</dd>
<dt>Audit head hash</dt><dd>{escape(str(audit.get("headHash", "—")))}</dd>
<dt>Python</dt><dd>{escape(str(env.get("python")))} ({escape(str(env.get("platform")))})</dd>
<dt>Packages</dt><dd>{escape(pkgs)}</dd>
<dt>Files</dt><dd>{escape(", ".join(sorted(files)))}</dd>
</dl></section>
<section><h2>Task graph</h2><div class="legend">{legend}</div>{drawn_note}
<div class="scroll">{_dag(tasks)}</div></section>
<section><h2>Timeline of every attempt</h2>{drawn_note}<div class="scroll">{_gantt(pred)}</div>
</section>
<section><h2>Tasks</h2><input id="filter" placeholder="filter tasks…">
<div class="scroll"><table id="tasks"><thead><tr><th>Task</th><th>Status</th><th>Attempts</th>
<th>Duration</th><th>Classification</th><th>PII kinds</th><th>Key id</th><th>Tenant</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table></div>
<p class="note">Metadata only: no task data is ever in this pack.</p></section>
<section><h2>Lineage datasets</h2>
<p class="note">{lin.get("events", 0)} OpenLineage events.</p>
<div style="display:flex;gap:40px"><div><h3>In</h3><ul>{lst(ds.get("inputs") or [])}</ul></div>
<div><h3>Out</h3><ul>{lst(ds.get("outputs") or [])}</ul></div></div></section>
<section><h2>Classification flows</h2><table><thead><tr><th>Flow</th><th>Level</th>
<th>Clearance</th><th>Decision</th></tr></thead>
<tbody>{"".join(flows) or '<tr><td colspan="4">no classification recorded</td></tr>'}</tbody>
</table></section>
</main><script>{_JS}</script></body></html>
"""
