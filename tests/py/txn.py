"""Transactions for dbtel's end-to-end test (tests/tests/transactions.rs).

Connects twice, prints its PID, waits for a line on stdin (so the agent can
attach first), then runs a fixed sequence of transactions on the first
connection; the second only interferes once, to force a serialization failure
that the first retries. Prints the SQLSTATEs it caught, then "done".
Autocommit is off: psycopg2 sends BEGIN before the first statement.
"""
import os
import sys
import time

import psycopg2

dsn = sys.argv[1]
conn = psycopg2.connect(dsn)
other = psycopg2.connect(dsn)
print(os.getpid(), flush=True)
sys.stdin.readline()

cur = conn.cursor()

# 1. Committed: two statements and a savepoint.
cur.execute("insert into accounts values (10, 100)")
cur.execute("savepoint sp1")
cur.execute("update accounts set balance = balance + 1 where id = 10")
cur.execute("release savepoint sp1")
conn.commit()

# 2. Idle in transaction for 300 ms before COMMIT.
cur.execute("select balance from accounts where id = 10")
time.sleep(0.3)
conn.commit()

# 3. A failing statement aborts the transaction: the COMMIT is answered ROLLBACK.
try:
    cur.execute("select 1/0")
except psycopg2.Error as e:
    print(e.pgcode, flush=True)
conn.commit()

# 4. Explicit rollback.
cur.execute("delete from accounts where id = 10")
conn.rollback()

# 5. Autocommit: no transaction.
conn.autocommit = True
cur.execute("select 2")
cur.execute("select 3")
conn.autocommit = False

# 6. Serializable: the other connection commits a change to the row between
# our read and our write, once; we retry after the serialization failure.
conn.set_session(isolation_level="SERIALIZABLE")
ocur = other.cursor()
for attempt in range(3):
    try:
        cur.execute("select balance from accounts where id = 1")
        if attempt == 0:
            ocur.execute("update accounts set balance = balance - 5 where id = 1")
            other.commit()
        cur.execute("update accounts set balance = balance + 5 where id = 1")
        conn.commit()
        break
    except psycopg2.Error as e:
        print(e.pgcode, flush=True)
        conn.rollback()

conn.close()
other.close()
print("done", flush=True)
