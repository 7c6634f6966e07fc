"""psycopg 3 in libpq pipeline mode, for dbtel's end-to-end tests.

Connects (autocommit: no implicit BEGIN), prints its PID, waits for a line on
stdin (so the agent can attach by PID first), then runs:

1. executemany of 50 rows: psycopg prepares the statement and runs it 50
   times in one pipeline (PQsendPrepare, 50 PQsendQueryPrepared, a sync);
2. a `conn.pipeline()` block of 20 statements (four texts, five times each:
   below psycopg's prepare threshold, so each goes by PQsendQueryParams);
3. a pipeline whose fourth statement fails: the three after it are skipped
   by the server (PGRES_PIPELINE_ABORTED); prints the failing SQLSTATE.

Prints "done" and exits.
"""
import os
import sys

import psycopg

# The 20-statement pipeline: (text, parameters of the i-th run).
PIPELINE = [
    ("select id from t where id <= %s", lambda i: (i + 1,)),
    ("update t set n = n + %s where id = %s", lambda i: (i, i + 1)),
    ("insert into u (id) values (%s)", lambda i: (i,)),
    ("select count(*) from t where id > %s", lambda i: (i,)),
]

conn = psycopg.connect(sys.argv[1], autocommit=True)
print(os.getpid(), flush=True)
sys.stdin.readline()

cur = conn.cursor()
cur.executemany("insert into t (id, n) values (%s, %s)", [(i, 0) for i in range(1, 51)])
print(cur.rowcount, flush=True)

with conn.pipeline():
    for i in range(20):
        text, params = PIPELINE[i % 4]
        cur.execute(text, params(i // 4))

try:
    with conn.pipeline():
        cur.execute("select id from t where id = %s", (1,))
        cur.execute("update t set n = n + %s where id = %s", (1, 2))
        cur.execute("insert into u (id) values (%s)", (100,))
        cur.execute("insert into u (id) values (%s)", (0,))  # duplicate key
        cur.execute("select id from t where id = %s", (3,))
        cur.execute("update t set n = n + %s where id = %s", (1, 4))
        cur.execute("insert into u (id) values (%s)", (101,))
except psycopg.Error as e:
    print(e.sqlstate, flush=True)

conn.close()
print("done", flush=True)
