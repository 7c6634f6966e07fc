"""Already a libpq client (psycopg2-binary imported), then, told to on stdin,
imports psycopg (3, binary wheel: another libpq) and says so; told again,
queries with it. Prints its PID first; at the end, the SIGCONTs it got."""
import os
import signal
import sys

import psycopg2  # noqa: F401

conts = 0


def on_cont(signum, frame):
    global conts
    conts += 1


signal.signal(signal.SIGCONT, on_cont)
print(os.getpid(), flush=True)
sys.stdin.readline()
import psycopg  # noqa: E402

print("imported", flush=True)
sys.stdin.readline()
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for n in range(1, 6):
        conn.execute(f"select {n} as later{n}")
print(conts, flush=True)
