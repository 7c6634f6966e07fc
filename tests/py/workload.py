"""Metrics workload for dbtel's end-to-end test (tests/tests/metrics.rs).

Prints its PID, waits for a line on stdin giving the seconds to run, then:
serialization failures retried, row lock waits, deadlocks (the victim
retries), an N+1 (a listing, then a lookup per row), slow queries (pg_sleep(0.1)), failing statements, queries on 300
missing tables (label cardinality), and plain transactions until the time is
up. Prints what it did ("name count" lines), then "done".
"""
import os
import sys
import threading
import time

import psycopg2
import psycopg2.errors

dsn = sys.argv[1]
a = psycopg2.connect(dsn)
b = psycopg2.connect(dsn)
print(os.getpid(), flush=True)
seconds = float(sys.stdin.readline().split()[-1])
ca, cb = a.cursor(), b.cursor()
n = dict(retries=0, serialization=0, deadlocks=0, lock_waits=0, slow=0, errors=0)


def serialization_failure_retried():
    a.set_session(isolation_level="SERIALIZABLE")
    for attempt in range(3):
        try:
            ca.execute("select balance from accounts where id = 1")
            if attempt == 0:
                cb.execute("update accounts set balance = balance - 1 where id = 1")
                b.commit()
            ca.execute("update accounts set balance = balance + 1 where id = 1")
            a.commit()
            break
        except psycopg2.errors.SerializationFailure:
            a.rollback()
            n["serialization"] += 1
            n["retries"] += 1
    a.set_session(isolation_level="READ COMMITTED")


def lock_wait():
    cb.execute("update accounts set balance = balance where id = 2")
    t = threading.Timer(0.2, b.commit)
    t.start()
    ca.execute("update accounts set balance = balance + 1 where id = 2")
    a.commit()
    t.join()
    n["lock_waits"] += 1


def deadlock():
    """A locks 4 then wants 3; B locks 3 then wants 4. The victim retries."""
    cb.execute("update accounts set balance = balance where id = 3")
    ca.execute("update accounts set balance = balance where id = 4")

    def other():
        try:
            cb.execute("update accounts set balance = balance where id = 4")
            b.commit()
        except psycopg2.errors.DeadlockDetected:
            b.rollback()
            n["deadlocks"] += 1
            n["retries"] += 1
            cb.execute("update accounts set balance = balance where id = 3")
            cb.execute("update accounts set balance = balance where id = 4")
            b.commit()

    th = threading.Thread(target=other)
    th.start()
    time.sleep(0.2)
    try:
        ca.execute("update accounts set balance = balance where id = 3")
        a.commit()
    except psycopg2.errors.DeadlockDetected:
        a.rollback()
        n["deadlocks"] += 1
        n["retries"] += 1
        th.join()
        ca.execute("update accounts set balance = balance where id = 4")
        ca.execute("update accounts set balance = balance where id = 3")
        a.commit()
    th.join()


start = time.monotonic()
for _ in range(2):
    serialization_failure_retried()
    lock_wait()
    deadlock()
# N+1: a listing of the 10 accounts, then one lookup per account.
ca.execute("select id from accounts order by id")
for (i,) in ca.fetchall():
    ca.execute("select balance from accounts where id = %s", (i,))
a.commit()
n["n_plus_one"] = 1
for _ in range(3):
    ca.execute("select pg_sleep(0.1)")
    a.commit()
    n["slow"] += 1
for _ in range(2):
    try:
        ca.execute("select 1/0")
    except psycopg2.Error:
        a.rollback()
        n["errors"] += 1
for i in range(300):
    try:
        ca.execute("select * from missing_%d" % i)
    except psycopg2.errors.UndefinedTable:
        a.rollback()
        n["errors"] += 1
n["plain"] = 0
while time.monotonic() - start < seconds:
    ca.execute("select balance from accounts where id = %s", (5,))
    a.commit()
    n["plain"] += 1
    time.sleep(0.01)
for k, v in sorted(n.items()):
    print(k, v, flush=True)
print("done", flush=True)
