"""report.md: a run report's dictionary as a pull-request comment (verdict, gates, steps)."""

from __future__ import annotations

from typing import Any


def markdown(data: dict[str, Any]) -> str:
    """A pull-request comment: verdict, gates, then one row per step."""
    verdict = "PASS" if data["passed"] else "FAIL"
    recipe = data["recipe"]
    lines = [f"### onnxslim run: **{verdict}** ({recipe['source']})", ""]
    if data.get("error"):
        lines += [f"error: {data['error']}", ""]
    if data["gates"]:
        lines += ["| gate | threshold | value | result |", "|---|---|---|---|"]
        for gate in data["gates"]:
            lines.append(
                f"| {gate['name']} | {_fmt(gate['threshold'])} | {_fmt(gate['value'])} "
                f"| {'PASS' if gate['passed'] else 'FAIL'}: {gate['reason']} |"
            )
        lines.append("")
    lines += [
        "| step | size (bytes) | gzip | nodes | top-1 | agreement | parity error | latency "
        "| time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    source = data["input"]
    lines.append(
        f"| input | {source['bytes']:,} | {_fmt(source.get('gzip_bytes'))} | {source['nodes']} | "
        f"{_pct(source['top1'])} | "
        f"| | 1.00x | |"
    )
    for step in data["steps"]:
        latency = f"{step['latency_ratio']:.2f}x" if step["latency_ratio"] else ""
        lines.append(
            f"| {step['index']}: {step['name']} | {step['file_bytes']:,} | "
            f"{_fmt(step.get('gzip_bytes'))} | {step['nodes']} | {_pct(step['top1'])} | "
            f"{_pct(step['agreement'])} | "
            f"{_fmt(step['parity_error'])} | {latency} | {step['seconds']:.1f} s |"
        )
    outputs = data["output"].get("outputs") or []
    if outputs:
        lines += [
            "",
            "| output (final model vs input) | parity error | cosine | max abs | top-1 agreement |",
            "|---|---|---|---|---|",
        ]
        for o in outputs:
            lines.append(
                f"| {o['name']} | {_fmt(o['parity_error'])} | {_fmt(o['cosine'])} | "
                f"{_fmt(o['max_abs'])} | {_pct(o['top1_agreement'])} |"
            )
    output = data["output"]
    if output.get("bytes"):
        lines += [
            "",
            f"output: {output['bytes']:,} bytes ({output['size_reduction']:.1%} "
            f"smaller), sha256 `{output['sha256'][:16]}`; recipe sha256 "
            f"`{recipe['sha256'][:16]}`; evaluated on {data['data']['feeds']}",
        ]
    for key, applied in (data["data"].get("image_preprocessing") or {}).items():
        lines += [
            "",
            f"image preprocessing of {key} `{applied['folder']}`: `{applied['preprocessing']}`",
        ]
    if data.get("search"):
        search = data["search"]
        lines += [
            "",
            f"search ({search['objective']}): {len(search['candidates'])} candidates, "
            f"winner #{search['winner']}"
            if search.get("winner") is not None
            else f"search ({search['objective']}): no candidate passed the gates",
            "",
            "| # | config | size (bytes) | metric | latency | gates |",
            "|---|---|---|---|---|---|",
        ]
        for c in search["candidates"]:
            config = ", ".join(f"{k}={v}" for k, v in c["config"].items())
            lines.append(
                f"| {c['index']} | {config} | {_fmt(c.get('file_bytes'))} | "
                f"{_fmt(c.get('metric'))} | {_fmt(c.get('latency_ratio'))} | "
                f"{'PASS' if c['passed'] else 'FAIL: ' + c.get('reason', '')} |"
            )
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)
