"""psycopg 3 in libpq pipeline mode, for dbtel's end-to-end tests.

Opens two connections (autocommit: no implicit BEGIN), prints its PID and
their backends' PIDs, waits for a line on stdin (so the agent can attach by
PID first), then runs:

1. on the first connection, executemany of 50 rows: psycopg prepares the
   statement and runs it 50 times in one pipeline (PQsendPrepare, 50
   PQsendQueryPrepared, a sync); prints the row count;
2. on the first connection, a `conn.pipeline()` block of 20 statements
   (four texts, five times each: below psycopg's prepare threshold, so each
   goes by PQsendQueryParams);
3. on the second connection, a pipeline whose fourth statement fails (a
   duplicate key): the server skips the three after it; prints the SQLSTATE.

Prints "done" and exits.
"""
import os
import sys

import psycopg

# The 20-statement pipeline: (text, parameters of its j-th run).
PIPELINE = [
    ("select id from t where id <= %s", lambda j: (j + 1,)),
    ("update t set n = n + %s where id = %s", lambda j: (j, j + 1)),
    ("insert into u (id) values (%s)", lambda j: (j,)),
    ("select count(*) from t where id > %s", lambda j: (j,)),
]

a = psycopg.connect(sys.argv[1], autocommit=True)
b = psycopg.connect(sys.argv[1], autocommit=True)
print(os.getpid(), a.info.backend_pid, b.info.backend_pid, flush=True)
sys.stdin.readline()

cur = a.cursor()
cur.executemany("insert into t (id, n) values (%s, %s)", [(i, 0) for i in range(1, 51)])
print(cur.rowcount, flush=True)

with a.pipeline():
    for i in range(20):
        text, params = PIPELINE[i % 4]
        cur.execute(text, params(i // 4))

cur = b.cursor()
try:
    with b.pipeline():
        cur.execute("select id from t where id = %s", (1,))
        cur.execute("update t set n = n + %s where id = %s", (1, 2))
        cur.execute("insert into u (id) values (%s)", (100,))
        cur.execute("insert into u (id) values (%s)", (0,))  # a duplicate key
        cur.execute("select id from t where id = %s", (3,))
        cur.execute("update t set n = n + %s where id = %s", (1, 4))
        cur.execute("insert into u (id) values (%s)", (101,))
except psycopg.Error as e:
    print(e.sqlstate, flush=True)

a.close()
b.close()
print("done", flush=True)
