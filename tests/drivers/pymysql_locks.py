"""Lock choreography over PyMySQL (pure Python: only the server side of
dbtel sees it), for the MariaDB server tests.

Usage: pymysql_locks.py SOCKET DATABASE SCENARIO
The table `t (id int primary key, v int)` holds rows 1 and 2 beforehand.
Prints `conn NAME ID` for each connection, the errors as `error NAME ERRNO`,
then `done`. Scenarios:
  row       A updates row 1 and holds it 0.6 s; B updates row 1 (waits, granted)
  timeout   B sets innodb_lock_wait_timeout=1; A holds row 1 for 2 s; B gets 1205
  deadlock  A locks 1 then 2, B locks 2 then 1: one of them gets 1213
  metadata  A holds a transaction that read t for 1.5 s; B runs ALTER TABLE t (waits on its MDL)
"""

import sys
import threading
import time

import pymysql

socket, database, scenario = sys.argv[1], sys.argv[2], sys.argv[3]


def connect(name):
    c = pymysql.connect(unix_socket=socket, user="root", database=database, autocommit=True)
    print("conn", name, c.thread_id(), flush=True)
    return c


a, b = connect("A"), connect("B")


def run(name, conn, statements):
    cur = conn.cursor()
    for s in statements:
        if isinstance(s, float):
            time.sleep(s)
            continue
        try:
            cur.execute(s)
        except pymysql.MySQLError as e:
            print("error", name, e.args[0], flush=True)
            cur.execute("rollback")
            return


if scenario == "row":
    plans = [("A", a, ["begin", "update t set v = v + 1 where id = 1", 0.6, "commit"]),
             ("B", b, [0.15, "update t set v = v + 10 where id = 1"])]
elif scenario == "timeout":
    plans = [("A", a, ["begin", "update t set v = v + 1 where id = 1", 2.0, "commit"]),
             ("B", b, ["set session innodb_lock_wait_timeout = 1", 0.15, "update t set v = v + 10 where id = 1"])]
elif scenario == "deadlock":
    plans = [("A", a, ["begin", "update t set v = v + 1 where id = 1", 0.3, "update t set v = v + 1 where id = 2", "commit"]),
             ("B", b, ["begin", "update t set v = v + 1 where id = 2", 0.3, "update t set v = v + 1 where id = 1", "commit"])]
elif scenario == "metadata":
    plans = [("A", a, ["begin", "select v from t where id = 1", 1.5, "commit"]),
             ("B", b, [0.15, "alter table t add column w int"])]
else:
    sys.exit("unknown scenario " + scenario)

threads = [threading.Thread(target=run, args=p) for p in plans]
for th in threads:
    th.start()
for th in threads:
    th.join()
a.close()
b.close()
print("done", flush=True)
