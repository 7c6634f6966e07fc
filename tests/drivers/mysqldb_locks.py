"""One side of a lock scenario over MySQLdb (mysqlclient on libmariadb: dbtel
traces it), autocommit off as the driver leaves it.

Usage: mysqldb_locks.py SOCKET DATABASE SCENARIO ROLE
The table `t (id int primary key, v int)` holds rows 1 and 2 beforehand.
Prints its PID, then `conn ID`, waits for `go` on stdin, runs its side, and
prints `error ERRNO` for an error, `retry` before retrying, then `done`.
Scenarios (A and B started together, B a little later):
  row       A updates row 1 and holds its transaction 0.5 s; B updates row 1
  deadlock  A locks 1 then 2, B locks 2 then 1: the victim (1213) retries
  timeout   B (innodb_lock_wait_timeout=1) updates row 1, which A holds 1.6 s: 1205
  metadata  A reads t and holds its transaction 1.2 s; B runs ALTER TABLE t
"""

import os
import sys
import time

import MySQLdb

socket, database, scenario, role = sys.argv[1:5]
print(os.getpid(), flush=True)
conn = MySQLdb.connect(unix_socket=socket, user="root", database=database)
print("conn", conn.thread_id(), flush=True)
assert sys.stdin.readline().strip() == "go"
cur = conn.cursor()


def plan():
    if scenario == "row":
        if role == "A":
            return ["update t set v = v + 1 where id = 1", 0.5, "commit"]
        return [0.05, "update t set v = v + 10 where id = 1", "commit"]
    if scenario == "deadlock":
        first, second = (1, 2) if role == "A" else (2, 1)
        return [f"update t set v = v + 1 where id = {first}", 0.3, f"update t set v = v + 1 where id = {second}", "commit"]
    if scenario == "timeout":
        if role == "A":
            return ["update t set v = v + 1 where id = 1", 1.6, "commit"]
        return ["set session innodb_lock_wait_timeout = 1", 0.1, "update t set v = v + 10 where id = 1", "commit"]
    if scenario == "metadata":
        if role == "A":
            return ["select v from t where id = 1", 1.2, "commit"]
        return [0.15, "alter table t add column w int"]
    sys.exit("unknown scenario " + scenario)


steps = plan()
attempt = 0
while True:
    try:
        for s in steps:
            if isinstance(s, float):
                time.sleep(s if attempt == 0 else 0)
            elif s == "commit":
                conn.commit()
            else:
                cur.execute(s)
        break
    except MySQLdb.OperationalError as e:
        print("error", e.args[0], flush=True)
        conn.rollback()
        if e.args[0] != 1213 or attempt > 0:
            break
        print("retry", flush=True)
        attempt += 1
conn.close()
print("done", flush=True)
