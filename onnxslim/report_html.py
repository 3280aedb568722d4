"""report.html: the run report with inline SVG plots (matplotlib, Agg), one file, no scripts.

Plots, from the report's JSON form only (so any stored report.json can be re-rendered):
size / metric / latency after each step; per-layer sensitivity (accuracy-aware
quantization) or per-layer error (prune, cluster); weight histograms before and
after clustering; the Pareto chart (size against metric) of a search. The SVGs
carry no date and fixed ids (`svg.hashsalt`), so the same report renders the same.
"""

from __future__ import annotations

import html as _html
import io
import json
import re
from typing import Any

from onnxslim.report_markdown import markdown


def _pyplot() -> Any:
    import matplotlib  # optional and heavy (~0.5 s): only report.html draws plots

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "onnxslim"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small and searchable
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend is probed

    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline in HTML


def steps_plot(data: dict[str, Any]) -> str:
    plt = _pyplot()
    labels = ["input"] + [f"{s['index']}:{s['name']}" for s in data["steps"]]
    sizes = [data["input"]["bytes"]] + [s["file_bytes"] for s in data["steps"]]
    metric_key = "top1" if data["input"].get("top1") is not None else "agreement"
    metric = [data["input"].get(metric_key)] + [s.get(metric_key) for s in data["steps"]]
    error = [0.0] + [s.get("parity_error") or 0.0 for s in data["steps"]]
    latency = [1.0] + [s.get("latency_ratio") for s in data["steps"]]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    x = range(len(labels))
    axes[0].bar(x, [b / 1024 for b in sizes], color="#4c72b0")
    axes[0].set_title("file size (KiB)")
    if any(m is not None for m in metric):
        axes[1].plot(
            x, [m if m is not None else float("nan") for m in metric], "o-", color="#55a868"
        )
        axes[1].set_title(f"{metric_key} after each step")
    else:
        axes[1].plot(x, error, "o-", color="#c44e52")
        axes[1].set_title("parity error (relative RMS)")
    axes[2].plot(x, [v if v is not None else float("nan") for v in latency], "o-", color="#8172b2")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[2].set_title("latency / input (1 thread)")
    for ax in axes:
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def layer_plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, svg) per step that produced per-layer figures."""
    plt = _pyplot()
    plots = []
    for step in data["steps"]:
        details = step.get("details") or {}
        rows: list[tuple[str, float]] = []
        if "accuracy_aware" in details:
            rows = [(r["layer"], 100 * r["gain"]) for r in details["accuracy_aware"]["sensitivity"]]
            title, unit = "per-layer sensitivity: top-1 gained by keeping it float", "points"
        elif step["kind"] == "cluster" and details.get("layers"):
            rows = [
                (
                    r.get("layer", r.get("weight", "?")),
                    float(r.get("error_after", r.get("error", 0.0)) or 0.0),
                )
                for r in details["layers"]
            ]
            title, unit = "per-layer output error after clustering", "relative error"
        elif step["kind"] == "cluster" and details.get("weights"):
            rows = [(r["weight"], float(r.get("weight_error") or 0.0)) for r in details["weights"]]
            title, unit = "per-weight clustering error", "relative error"
        elif step["kind"] == "prune" and details.get("layers"):
            rows = [(r["layer"], 100 * r["sparsity"]) for r in details["layers"]]
            title, unit = "per-layer sparsity", "% zeros"
        if not rows:
            continue
        rows = rows[:30]
        fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) + 1.2))
        ax.barh(range(len(rows)), [v for _, v in rows], color="#dd8452")
        ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_title(f"step {step['index']} ({step['name']}): {title}", fontsize=9)
        fig.tight_layout()
        plots.append((f"step {step['index']}: {title}", _svg(fig)))
    return plots


def histogram_plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    plt = _pyplot()
    plots = []
    for step in data["steps"]:
        hist = (step.get("details") or {}).get("histogram")
        if not hist:
            continue
        edges = hist["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        width = edges[1] - edges[0]
        fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), sharex=True)
        axes[0].bar(centers, hist["before"], width=width, color="#4c72b0")
        axes[0].set_title(f"weights before clustering ({hist['weights']} tensors)", fontsize=9)
        axes[1].bar(centers, hist["after"], width=width, color="#c44e52")
        axes[1].set_title(f"after: {hist['unique_after']} distinct values", fontsize=9)
        for ax in axes:
            ax.set_yscale("symlog")
        fig.tight_layout()
        plots.append((f"step {step['index']}: weight histograms", _svg(fig)))
    return plots


def pareto_plot(data: dict[str, Any]) -> str | None:
    search = data.get("search")
    if not search or not search.get("candidates"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in search["candidates"]:
        if c.get("file_bytes") is None or c.get("metric") is None:
            continue
        color = "#55a868" if c["passed"] else "#c44e52"
        marker = "*" if c["index"] == search.get("winner") else "o"
        ax.scatter(
            c["file_bytes"] / 1024,
            c["metric"],
            c=color,
            marker=marker,
            s=160 if marker == "*" else 40,
        )
        ax.annotate(
            str(c["index"]),
            (c["file_bytes"] / 1024, c["metric"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    front = pareto_front(search["candidates"])
    if len(front) > 1:
        ax.plot(
            [c["file_bytes"] / 1024 for c in front],
            [c["metric"] for c in front],
            "--",
            color="grey",
            lw=0.8,
        )
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel(search.get("metric_name") or "metric")
    ax.set_title("search: size against metric (green passed, star winner)", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def pareto_front(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates no other beats on both size (smaller) and metric (higher), by size."""
    points = [
        c for c in candidates if c.get("file_bytes") is not None and c.get("metric") is not None
    ]
    points.sort(key=lambda c: (c["file_bytes"], -c["metric"]))
    front, best = [], float("-inf")
    for c in points:
        if c["metric"] > best:
            front.append(c)
            best = c["metric"]
    return front


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}figure{margin:1em 0}"""


def html(data: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    verdict = "PASS" if data["passed"] else "FAIL"
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxslim report: "
        f"{verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>onnxslim run: <span class='{verdict.lower()}'>{verdict}</span></h1>",
        _markdown_tables(markdown(data)),
    ]
    if data["steps"]:
        parts.append(
            f"<h2>After each step</h2><figure class='plot' id='steps'>{steps_plot(data)}</figure>"
        )
    pareto = pareto_plot(data)
    if pareto:
        parts.append(f"<h2>Search</h2><figure class='plot' id='pareto'>{pareto}</figure>")
    for title, svg in layer_plots(data):
        parts.append(f"<h2>{_html.escape(title)}</h2><figure class='plot layers'>{svg}</figure>")
    for title, svg in histogram_plots(data):
        parts.append(f"<h2>{_html.escape(title)}</h2><figure class='plot histogram'>{svg}</figure>")
    recipe = data["recipe"]["document"]
    parts.append("<h2>Recipe</h2><pre>" + _html.escape(json.dumps(recipe, indent=2)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _markdown_tables(text: str) -> str:
    """Render report.md's tables and lines as HTML (the two forms never disagree)."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|(-+\|)+", r)]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_html.escape(c)}</th>" for c in cells[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in cells[1:]
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("###") or not line.strip():
            continue
        out.append(f"<p>{_html.escape(line).replace('**', '')}</p>")
    flush()
    return "\n".join(out)


def _cell(text: str) -> str:
    escaped = _html.escape(text)
    if text.startswith("PASS"):
        return f"<span class='pass'>{escaped}</span>"
    if text.startswith("FAIL"):
        return f"<span class='fail'>{escaped}</span>"
    return escaped
