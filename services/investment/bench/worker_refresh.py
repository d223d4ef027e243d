#!/usr/bin/env python3
"""Times the investment-price worker's refresh of 500 held instruments
against a stub of the provider (Twelve Data's time_series, started here):

    python3 services/investment/bench/worker_refresh.py target/release/freedumb \\
        postgres://postgres@127.0.0.1:5432/freedumb_worker_bench [INSTRUMENTS]

It creates the database, starts `freedumb serve all` with the stub as its
provider, records a buy of each instrument (one CSV import), and reports
the worker's pass that refreshed them (its log line's `elapsed_ms`) and the
stub's request count. Standard library only; everything runs on loopback.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINARY, DATABASE_URL = sys.argv[1], sys.argv[2]
COUNT = int(sys.argv[3]) if len(sys.argv) > 3 else 500
KEY = "bench-key"
REQUESTS = []


class Stub(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("authorization") != f"apikey {KEY}":
            self.send_response(401)
            self.end_headers()
            return
        q = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).items()}
        REQUESTS.append(q["symbol"])
        day, end = date.fromisoformat(q["start_date"]), date.fromisoformat(q["end_date"])
        values = []
        while day <= end:
            values.append({"datetime": day.isoformat(), "close": "0.9" if "/" in q["symbol"] else "101.5"})
            day += timedelta(days=1)
        body = json.dumps({"meta": {"symbol": q["symbol"]}, "values": values, "status": "ok"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def call(port, method, path, body=None, token=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def main():
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    port = 3966
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(port), ENVIRONMENT="bench", DEPLOYMENT="bench",
               DATABASE_URL=DATABASE_URL, DATABASE_MAX_CONNECTIONS="10", REDIS_URL="redis://127.0.0.1:6379",
               REDIS_KEY_PREFIX=f"bench-{uuid.uuid4().hex}:", JWT_ACCESS_SECRET="bench-access-secret-0123456789abcdef",
               JWT_REFRESH_SECRET="bench-refresh-secret-0123456789abcdef",
               ENCRYPTION_KEY="000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
               RABBITMQ_URL="amqp://guest:guest@127.0.0.1:5672/%2f", EVENTS_EXCHANGE=f"bench.{uuid.uuid4().hex}",
               MARKET_DATA_API_KEY=KEY, MARKET_DATA_API_URL=f"http://127.0.0.1:{stub.server_port}",
               INVESTMENT_PRICE_POLL_MS="200", LOG_FORMAT="json", LOG_LEVEL="info")
    subprocess.run([BINARY, "migrate", "--create-database"], env=env, check=True, capture_output=True)
    server = subprocess.Popen([BINARY, "serve", "all"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Read its log all along: a full pipe would stop the server.
    passes = queue.Queue()

    def read_log():
        for line in server.stdout:
            if "investment prices refreshed" in line:
                passes.put(line)

    threading.Thread(target=read_log, daemon=True).start()
    try:
        for _ in range(100):
            try:
                call(port, "GET", "/ready")
                break
            except Exception:
                time.sleep(0.1)
        email, password = f"bench-{uuid.uuid4().hex}@example.com", "correct horse battery staple"
        call(port, "POST", "/v1/auth/register", {"email": email, "password": password})
        token = call(port, "POST", "/v1/auth/login", {"email": email, "password": password})["access_token"]
        pid = call(port, "POST", "/v1/portfolios", {"name": "Bench", "base_currency": "EUR"}, token)["id"]
        rows = ["date,kind,symbol,quantity,unit_price"]
        for i in range(COUNT):
            call(port, "POST", "/v1/instruments", {"symbol": f"W{i:04d}", "exchange": "XBEN", "asset_class": "equity",
                                                   "currency": "USD"}, token)
            rows.append(f"{date.today() - timedelta(days=30)},buy,W{i:04d},1,100")
        mapping = {"date": "date", "kind": "kind", "symbol": "symbol", "quantity": "quantity", "unit_price": "unit_price"}
        REQUESTS.clear()
        call(port, "POST", f"/v1/portfolios/{pid}/activities/import", {"csv": "\n".join(rows) + "\n", "mapping": mapping}, token)
        deadline = time.time() + 300
        refreshed = 0
        while time.time() < deadline and refreshed < COUNT:
            try:
                line = passes.get(timeout=1)
            except queue.Empty:
                continue
            entry = json.loads(line)
            fields = entry.get("fields", entry)
            refreshed += int(fields.get("refreshed", 0))
            print(f"a pass refreshed {fields.get('refreshed')} listings in {fields.get('elapsed_ms')} ms")
        listings = sum(1 for s in REQUESTS if "/" not in s)
        print(f"{refreshed} of {COUNT} listings refreshed; the stub answered {listings} listing and "
              f"{len(REQUESTS) - listings} FX requests")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
