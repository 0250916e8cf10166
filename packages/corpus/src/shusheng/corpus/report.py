"""The run report: report.json (machine-readable), report.md (tables), and PNG histograms of what was kept."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .io import atomic_write, write_json


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def markdown(report: dict) -> str:
    lines = ["# Corpus pipeline report", "",
             f"{report['input_files']} input files, {report['docs_in']:,} documents in, "
             f"{report['docs_out']:,} out, {report['seconds']} s.", "",
             "| step | docs in | docs out | bytes in | bytes out | removed (by reason) |",
             "|---|---:|---:|---:|---:|---|"]
    for name, s in report["stages"].items():
        reasons = ", ".join(f"{r}: {n:,}" for r, n in sorted(s["removed"].items(), key=lambda x: -x[1])) or "-"
        lines.append(f"| {name} | {s['in_docs']:,} | {s['out_docs']:,} | {_fmt_bytes(s['in_bytes'])} | "
                     f"{_fmt_bytes(s['out_bytes'])} | {reasons} |")
    if "dedup" in report:
        d = report["dedup"]
        lines.append(f"| dedup ({d['method']}) | {d['docs_in']:,} | {d['docs_out']:,} | | | "
                     f"duplicate: {d['docs_in'] - d['docs_out']:,} |")
    if "tokenize" in report:
        t = report["tokenize"]
        lines += ["", f"Tokenized: {t['num_tokens']:,} tokens in {t['num_documents']:,} documents, "
                      f"{t['num_shards']} shards (Megatron .bin/.idx in `tokens/`), dtype {t['dtype']}."]
    lines += ["", "Removed documents are in `removed/`, each with `metadata.removed` = {step, stage, reason}.", ""]
    return "\n".join(lines)


def plots(samples: dict[str, list], out: Path) -> list[str]:
    """Histograms of document length, language and quality score (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if samples.get("length"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(samples["length"], bins=50, log=True)
        ax.set(xlabel="characters", ylabel="documents", title="Document length (kept)")
        fig.tight_layout()
        fig.savefig(out / "length.png", dpi=100)
        plt.close(fig)
        made.append("length.png")
    if samples.get("language"):
        counts = Counter(samples["language"]).most_common(20)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([c[0] for c in counts], [c[1] for c in counts])
        ax.set(ylabel="documents", title="Language (kept)")
        fig.tight_layout()
        fig.savefig(out / "language.png", dpi=100)
        plt.close(fig)
        made.append("language.png")
    if samples.get("quality_score"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(samples["quality_score"], bins=40)
        ax.set(xlabel="score", ylabel="documents", title="Quality score (kept)")
        fig.tight_layout()
        fig.savefig(out / "quality.png", dpi=100)
        plt.close(fig)
        made.append("quality.png")
    return made


def write_report(report: dict, samples: dict[str, list], out: Path) -> None:
    report["plots"] = plots(samples, out)
    write_json(out / "report.json", report)
    atomic_write(out / "report.md", markdown(report) + "".join(f"\n![{p}]({p})\n" for p in report["plots"]))
