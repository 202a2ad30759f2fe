"""Results of a study from the newest answers: mean rank (or win rate) per model and scale with
bootstrap CIs, Kendall's W, the Table 5 layout with PSNR/SSIM; every submission for the audit export."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.models import ReaderStudyAnswer, ReaderStudyCase
from dicom_node.reader_study import stats
from dicom_node.reader_study.records import (
    candidates_by_case,
    definition_of,
    get_study,
    latest_answers,
)


@dataclass
class AnswerRow:
    """One submission, for the audit export."""

    answer_id: int
    reader: str
    case_k: int
    scale: str
    answered_at: str
    seconds_on_case: float | None
    display_order: list[str]
    ranking: list[str]
    latest: bool


def answer_rows(sessions: sessionmaker[Session], study_id: int) -> list[AnswerRow]:
    """Every stored submission with models resolved (admin audit, CSV export)."""
    with sessions() as session:
        get_study(session, study_id)
        cases = {c.id: c for c in session.execute(
            select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)).scalars()}
        model_of = {c.id: c.model for cands in candidates_by_case(session, study_id).values() for c in cands.values()}
        latest = {a.id for a in latest_answers(session, study_id).values()}
        rows = session.execute(select(ReaderStudyAnswer).where(ReaderStudyAnswer.study_id == study_id)
                               .order_by(ReaderStudyAnswer.id)).scalars().all()
        return [AnswerRow(a.id, a.reader, cases[a.case_id].k, cases[a.case_id].scale_key, a.answered_at.isoformat(),
                          a.seconds_on_case, [model_of[i] for i in json.loads(a.display_order_json)],
                          [model_of[i] for i in json.loads(a.ranking_json)], a.id in latest) for a in rows]


def results(sessions: sessionmaker[Session], study_id: int, n_boot: int = 2000) -> dict[str, Any]:
    """Mean rank (or pairwise win rate) per model and scale with 95% bootstrap CIs, Kendall's W, the
    Table 5 style table, mean PSNR/SSIM where a ground truth exists."""
    with sessions() as session:
        study = get_study(session, study_id)
        definition = definition_of(study)
        cases = session.execute(select(ReaderStudyCase).where(ReaderStudyCase.study_id == study_id)
                                .order_by(ReaderStudyCase.k)).scalars().all()
        cands = candidates_by_case(session, study_id)
        model_of = {c.id: c.model for cc in cands.values() for c in cc.values()}
        latest = latest_answers(session, study_id)
        state, name = study.state, study.name
    models = definition.models
    per_scale: dict[str, Any] = {}
    for scale_key in definition.scales:
        scase = [c for c in cases if c.scale_key == scale_key]
        index = {c.id: i for i, c in enumerate(scase)}
        answers = [(reader, index[case_id],
                    {model_of[cid]: rank + 1 for rank, cid in enumerate(json.loads(a.ranking_json))})
                   for (case_id, reader), a in latest.items() if case_id in index]
        r = stats.rank_array(answers, definition.readers, len(scase), models)
        if definition.task == "rank":
            value, ci = stats.mean_ranks(r), stats.bootstrap_ci(r, n_boot=n_boot, seed=study_id)
            place = stats.positions(value, lower_is_better=True)
        else:
            value, ci = stats.win_rates(r), stats.bootstrap_win_ci(r, n_boot=n_boot, seed=study_id)
            place = stats.positions(value, lower_is_better=False)
        psnr = {m: [v for c in scase if c.id in cands and (v := cands[c.id][m].psnr_db) is not None]
                for m in models}
        ssim = {m: [v for c in scase if c.id in cands and (v := cands[c.id][m].ssim) is not None]
                for m in models}
        per_scale[scale_key] = {
            "cases": len(scase), "answers": len(answers),
            "agreement": stats.agreement(r) if definition.task == "rank" else None,
            "models": {m: {"value": _num(value[i]), "ci": [_num(ci[i, 0]), _num(ci[i, 1])], "place": place[i],
                           "n": int((~np.isnan(r[:, :, i])).sum()),
                           "psnr_db": _num(float(np.mean(psnr[m]))) if psnr[m] else None,
                           "ssim": _num(float(np.mean(ssim[m]))) if ssim[m] else None}
                       for i, m in enumerate(models)},
        }
    # Table 5: one row per model, one column group per scale, and the overall place from the mean
    # of the per-scale values; rows ordered by the overall place.
    overall_values = np.array([np.mean([v for s in definition.scales
                                        if (v := per_scale[s]["models"][m]["value"]) is not None] or [np.nan])
                               for m in models])
    overall_place = stats.positions(overall_values, lower_is_better=definition.task == "rank")
    overall = {m: {"value": _num(overall_values[i]), "place": overall_place[i]} for i, m in enumerate(models)}
    order = sorted(models, key=lambda m: (overall[m]["place"] is None, overall[m]["place"] or 0, m))
    return {"study": study_id, "name": name, "state": state, "task": definition.task,
            "metric": "mean rank (1 = best)" if definition.task == "rank" else "win rate",
            "readers": len(definition.readers), "scales": definition.scales, "per_scale": per_scale,
            "table": [{"model": m, **{s: per_scale[s]["models"][m] for s in definition.scales}, "overall": overall[m]}
                      for m in order]}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)
