"""The supply chain (trace_events): purchases before every sale, unsold stock, returns.

Every pack that is sold was received (``purchase``) by the institution that sells
it first, 1-60 days before that sale. Beyond that, institutions hold unsold stock,
part of which goes back to the supplier (``return``) and is never sold afterwards.
Planted cases add their own events (a pack received by someone else, a pack
returned before it is sold) and name the packs that get no automatic purchase.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.simulate.claims import EV_PURCHASE, EV_RETURN, Claims
from features.simulate.config import DAY, HOUR, YEAR_DAYS, YEAR_END
from features.simulate.spelling import KEY_SHIFT, CodeBook

UNSOLD_RATE = 0.05
RETURN_SHARE = 0.3


def build_events(
    claims: Claims,
    explicit: pd.DataFrame,
    no_auto: np.ndarray,
    book: CodeBook,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """trace_events as (key, inst, kind, t, var), sorted by time."""
    cr = claims.code_rows()
    s = claims.s
    srow = (
        pd.Series(np.arange(len(s)), index=s["sid"].to_numpy())
        .reindex(claims.l["sid"].to_numpy())
        .to_numpy()
    )
    line_t = s["t"].to_numpy()[srow]
    line_inst = s["inst"].to_numpy()[srow]
    sold = pd.DataFrame(
        {
            "key": cr["key"].to_numpy(),
            "t": line_t[cr["line"].to_numpy()],
            "inst": line_inst[cr["line"].to_numpy()],
        }
    )
    sold = sold[(sold["key"] >= 0) & ~np.isin(sold["key"].to_numpy(), no_auto)]
    first = sold.sort_values(["t", "key"]).drop_duplicates("key", keep="first").sort_values("key")
    n = len(first)
    day = first["t"].to_numpy() // DAY - rng.integers(1, 61, n)
    purchases = pd.DataFrame(
        {
            "key": first["key"].to_numpy(),
            "inst": first["inst"].to_numpy(),
            "kind": np.full(n, EV_PURCHASE, np.int8),
            "t": day * DAY + 8 * HOUR + rng.integers(0, 4 * HOUR, n),
        }
    )

    # unsold stock per (institution, product) that sells the product, some of it returned
    pairs = pd.DataFrame(
        {"inst": purchases["inst"], "prod": purchases["key"].to_numpy() >> KEY_SHIFT}
    )
    counts = pairs.value_counts(["inst", "prod"], sort=False).sort_index()
    extra = rng.binomial(counts.to_numpy(), UNSOLD_RATE)
    inst_x = np.repeat(counts.index.get_level_values("inst").to_numpy(), extra)
    prod_x = np.repeat(counts.index.get_level_values("prod").to_numpy(), extra)
    keys_x = book.allocate(prod_x)
    m = len(keys_x)
    t_x = rng.integers(-60, YEAR_DAYS - 1, m) * DAY + 8 * HOUR + rng.integers(0, 4 * HOUR, m)
    unsold = pd.DataFrame(
        {"key": keys_x, "inst": inst_x, "kind": np.full(m, EV_PURCHASE, np.int8), "t": t_x}
    )
    t_ret = t_x + rng.integers(3, 31, m) * DAY + rng.integers(0, 6 * HOUR, m)
    ret = (rng.random(m) < RETURN_SHARE) & (t_ret < YEAR_END)
    returns = pd.DataFrame(
        {
            "key": keys_x[ret],
            "inst": inst_x[ret],
            "kind": np.full(int(ret.sum()), EV_RETURN, np.int8),
            "t": t_ret[ret],
        }
    )
    events = pd.concat(
        [purchases, unsold, returns, explicit[["key", "inst", "kind", "t"]]], ignore_index=True
    )
    events["key"] = events["key"].astype(np.int64)
    events["inst"] = events["inst"].astype(np.int64)
    events["kind"] = events["kind"].astype(np.int8)
    events["t"] = events["t"].astype(np.int64)
    events = events.sort_values(["t", "key", "kind"], kind="stable").reset_index(drop=True)
    events["var"] = rng.integers(0, 1 << 16, len(events))
    return events
