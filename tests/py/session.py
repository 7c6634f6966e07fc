"""A psycopg2 session driven line by line from stdin, for lock choreography.

Prints "<pid> <backend pid>" first, then one line per command:
  sql <statement>   -> "ok" or "err <SQLSTATE>"
  commit | rollback -> "ok" or "err <SQLSTATE>"
  sleep <seconds>   -> "ok"
  exit
Autocommit is off, so psycopg2 sends BEGIN before the first statement of
each transaction, as applications using it do.
"""
import os
import sys
import time

import psycopg2

conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("select pg_backend_pid()")
backend = cur.fetchone()[0]
conn.commit()
print(os.getpid(), backend, flush=True)

for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "sql":
            cur.execute(arg)
        elif cmd == "commit":
            conn.commit()
        elif cmd == "rollback":
            conn.rollback()
        elif cmd == "sleep":
            time.sleep(float(arg))
        elif cmd == "exit":
            break
        print("ok", flush=True)
    except psycopg2.Error as e:
        print("err", e.pgcode, flush=True)
conn.close()
