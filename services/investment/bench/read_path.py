#!/usr/bin/env python3
"""Times the investment service's read path: a portfolio of 50 instruments
and 2,000 activities (imported as one CSV), then N sequential reads each of
its holdings, valuation and performance (the default period: from the first
activity, about two years, to today), reporting p50/p95/p99 per route.

    python3 services/investment/bench/read_path.py http://127.0.0.1:3955 [N]

Against a running `freedumb serve all` (release build, its own database);
standard library only. It registers a fresh user each run.
"""

import json
import random
import statistics
import sys
import time
import urllib.request
import uuid
from datetime import date, timedelta

BASE = sys.argv[1].rstrip("/")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
INSTRUMENTS = 50
ACTIVITIES = 2000


def call(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
    return time.perf_counter() - started, json.loads(payload) if payload else None


def main():
    email = f"bench-{uuid.uuid4().hex}@example.com"
    password = "correct horse battery staple"
    call("POST", "/v1/auth/register", {"email": email, "password": password})
    _, tokens = call("POST", "/v1/auth/login", {"email": email, "password": password})
    token = tokens["access_token"]
    _, portfolio = call("POST", "/v1/portfolios", {"name": "Bench", "base_currency": "EUR"}, token)
    pid = portfolio["id"]
    currencies = ["USD", "EUR", "GBP", "JPY", "CHF"]
    symbols = []
    for i in range(INSTRUMENTS):
        symbol = f"B{i:03d}"
        call("POST", "/v1/instruments", {"symbol": symbol, "exchange": "XBEN", "asset_class": "equity",
                                         "currency": currencies[i % len(currencies)]}, token)
        symbols.append(symbol)

    rng = random.Random(20261203)
    start = date.today() - timedelta(days=730)
    rows = ["date,kind,symbol,quantity,unit_price,amount,currency"]
    rows.append(f"{start},deposit,,,,1000000.00,EUR")
    held = {s: 0 for s in symbols}
    per = -(-(ACTIVITIES - 1) // INSTRUMENTS)
    events = []
    for s in symbols:
        for k in range(per):
            events.append((start + timedelta(days=1 + (k * 729) // per), s, k))
    events.sort()
    for day, s, k in events[: ACTIVITIES - 1]:
        if k % 5 == 4 and held[s] > 2:
            rows.append(f"{day},sell,{s},2,{rng.randint(50, 150)},,")
            held[s] -= 2
        elif k % 7 == 6:
            rows.append(f"{day},dividend,{s},,,1,")
        else:
            rows.append(f"{day},buy,{s},3,{rng.randint(50, 150)},,")
            held[s] += 3
    mapping = {"date": "date", "kind": "kind", "symbol": "symbol", "quantity": "quantity",
               "unit_price": "unit_price", "amount": "amount", "currency": "currency"}
    seconds, summary = call("POST", f"/v1/portfolios/{pid}/activities/import",
                            {"csv": "\n".join(rows) + "\n", "mapping": mapping}, token)
    print(f"import of {len(rows) - 1} rows: {seconds * 1000:.0f} ms, created {summary['created']}, "
          f"rejected {summary['rejected']}")

    routes = {
        "GET /v1/holdings?portfolio_id": f"/v1/holdings?portfolio_id={pid}",
        "GET /v1/portfolios/{id}/valuation": f"/v1/portfolios/{pid}/valuation",
        "GET /v1/portfolios/{id}/performance": f"/v1/portfolios/{pid}/performance",
    }
    for name, path in routes.items():
        call("GET", path, token=token)  # warm
        times = sorted(call("GET", path, token=token)[0] * 1000 for _ in range(N))
        q = statistics.quantiles(times, n=100)
        print(f"{name}: n={N} p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, max {times[-1]:.1f} ms")


if __name__ == "__main__":
    main()
