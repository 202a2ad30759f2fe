"""Results as CSV (the Table 5 layout, one row per model) and as a PNG chart with CI bars."""
from __future__ import annotations

import csv
import io
from typing import Any

from dicom_node.reader_study.results import AnswerRow


def results_csv(res: dict[str, Any]) -> str:
    """model, then per scale: value (mean rank or win rate), CI low/high, place, n, PSNR, SSIM."""
    buf = io.StringIO()
    w = csv.writer(buf)
    fields = ("value", "ci_low", "ci_high", "place", "n", "psnr_db", "ssim")
    w.writerow(["model"] + [f"{s}_{f}" for s in res["scales"] for f in fields] + ["overall_value", "overall_place"])
    for row in res["table"]:
        cells = [row["model"]]
        for s in res["scales"]:
            c = row[s]
            cells += [c["value"], c["ci"][0], c["ci"][1], c["place"], c["n"], c["psnr_db"], c["ssim"]]
        cells += [row["overall"]["value"], row["overall"]["place"]]
        w.writerow(["" if x is None else x for x in cells])
    return buf.getvalue()


def answers_csv(rows: list[AnswerRow]) -> str:
    """Every submission (audit): reader, case, scale, time, seconds, display order, ranking, latest."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["answer_id", "reader", "case", "scale", "answered_at", "seconds_on_case", "display_order",
                "ranking_best_first", "latest"])
    for a in rows:
        w.writerow([a.answer_id, a.reader, a.case_k, a.scale, a.answered_at,
                    "" if a.seconds_on_case is None else round(a.seconds_on_case, 2),
                    " ".join(a.display_order), " ".join(a.ranking), int(a.latest)])
    return buf.getvalue()


def results_png(res: dict[str, Any]) -> bytes:
    """Horizontal bars per model and scale with the 95% CI (mean rank: shorter is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r["model"] for r in res["table"]]
    scales = res["scales"]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(models) * len(scales)), dpi=110)
    height = 0.8 / len(scales)
    for j, s in enumerate(scales):
        ys = [i + j * height for i in range(len(models))]
        vals = [r[s]["value"] or 0.0 for r in res["table"]]
        lo = [max(0.0, (r[s]["value"] or 0) - (r[s]["ci"][0] if r[s]["ci"][0] is not None else r[s]["value"] or 0))
              for r in res["table"]]
        hi = [max(0.0, (r[s]["ci"][1] if r[s]["ci"][1] is not None else r[s]["value"] or 0) - (r[s]["value"] or 0))
              for r in res["table"]]
        ax.barh(ys, vals, height=height, xerr=[lo, hi], capsize=3, label=s.replace("to", "→"))
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(models))], models)
    ax.invert_yaxis()
    ax.set_xlabel(res["metric"] + " with 95% bootstrap CI")
    ax.set_title(f"Reader study: {res['name']} ({res['readers']} readers, {res['state']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
