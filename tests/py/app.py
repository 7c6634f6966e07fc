"""A small psycopg2 application for dbtel's end-to-end tests.

Connects, prints its PID, waits for a line on stdin (so the agent can attach
by PID first), runs a fixed workload, prints "done" and exits.
"""
import os
import sys

import psycopg2

conn = psycopg2.connect(sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()

cur = conn.cursor()
cur.execute("select id, name from items where id = %s", (2,))
assert cur.fetchall() == [(2, "item 2")]
cur.execute("update items set name = %s where id = %s", ("renamed", 3))
conn.commit()
try:
    cur.execute("select * from no_such_table")
except psycopg2.Error as e:
    print(e.pgcode, flush=True)
conn.rollback()
cur.execute("select pg_sleep(0.2)")
conn.commit()
conn.close()
print("done", flush=True)
