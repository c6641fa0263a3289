#!/usr/bin/env python3
"""Runs SQL statements in chDB (a current ClickHouse engine, in-process, from PyPI's chdb-core)
for stockflow/tests/clickhouse_sql.rs: a JSON list of statements on stdin; prints a JSON list
with, per statement, its rows (JSONEachRow, parsed) or {"error": "..."}."""
import json
import sys
import tempfile

import chdb
from chdb import session

statements = json.load(sys.stdin)
out = []
with tempfile.TemporaryDirectory() as path:
    s = session.Session(path)
    for sql in statements:
        try:
            res = s.query(sql, "JSONEachRow")
            text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
            out.append([json.loads(line) for line in text.splitlines() if line.strip()])
        except Exception as e:  # the test prints which statement failed and why
            out.append({"error": str(e)})
    s.close()
print(json.dumps({"version": chdb.query("SELECT version()", "CSV").bytes().decode().strip().strip('"'), "results": out}))
