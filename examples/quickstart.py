"""A card-transactions pipeline: the project's main demo (``nox -s demo``).

Run it with ``xlib-pipeline run examples/quickstart.py``. It generates a day of synthetic
card transactions, validates them, scores four regions in parallel, joins the scores and
writes a report. ``PIPELINE_CONFIG`` turns the compliance plugins on with embedded
defaults: an audit trail, OpenLineage events, data classification and encryption of every
stored output, written under ``.xlib-pipeline/`` (or ``$XLIB_PIPELINE_HOME``) next to the run
store the CLI keeps. The master key goes to ``$XLIB_PIPELINE_KEYS_DIR`` (the demo session
sets it), else ``~/.config/xlib-pipeline/keys``: never beside the data it protects; the
evidence signing key that signs each run's attestation goes there too.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time

from xlib_pipeline import Pipeline

PIPELINE_CONFIG = {
    "max_workers": 4,
    "audit": {"fsync": "batch"},
    "lineage": {"namespace": "xlib-demo"},
    "classification": {"detect_pii": True},
    "security": {"encryption_at_rest": True},
    "evidence": True,
}

REGIONS = ("north", "south", "east", "west")

pipeline = Pipeline("card_transactions_daily")


@pipeline.task("extract", outputs=["demo://raw/transactions"], classification="confidential")
def extract() -> list[dict]:
    """A day of synthetic transactions (seeded, so every run sees the same data)."""
    rng = random.Random(20261126)
    rows = []
    for i in range(20_000):
        card = f"{rng.randrange(10**15, 10**16)}"
        rows.append(
            {
                "id": i,
                "card_token": hashlib.sha256(card.encode()).hexdigest()[:16],
                "region": rng.choice(REGIONS),
                "amount": round(rng.lognormvariate(3.0, 1.1), 2),
            }
        )
    return rows


@pipeline.task("validate", depends_on=["extract"], inputs=["demo://raw/transactions"])
def validate(rows: list[dict]) -> list[dict]:
    """Drop malformed rows (non-positive amounts, unknown regions)."""
    return [r for r in rows if r["amount"] > 0 and r["region"] in REGIONS]


def _score_region(region: str):
    def score(rows: list[dict]) -> dict:
        amounts = [r["amount"] for r in rows if r["region"] == region]
        time.sleep(0.2)  # stands in for a model call; the four regions overlap
        mean = statistics.fmean(amounts)
        sd = statistics.pstdev(amounts)
        flagged = sum(1 for a in amounts if a > mean + 4 * sd)
        return {"region": region, "count": len(amounts), "mean": round(mean, 2), "flagged": flagged}

    score.__name__ = f"score_{region}"
    return score


for _region in REGIONS:
    pipeline.add_task(
        f"score_{_region}",
        _score_region(_region),
        depends_on=["validate"],
        outputs=[f"demo://scores/{_region}"],
    )


@pipeline.task(
    "report",
    depends_on=[f"score_{r}" for r in REGIONS],
    inputs=[f"demo://scores/{r}" for r in REGIONS],
    outputs=["demo://reports/daily"],
)
def report(*scores: dict) -> dict:
    """Join the regional scores into the daily report."""
    return {
        "transactions": sum(s["count"] for s in scores),
        "flagged": sum(s["flagged"] for s in scores),
        "by_region": {s["region"]: s["mean"] for s in scores},
    }
