"""Counts the SIGCONTs it gets while importing psycopg (3, binary wheel) in
one thread and other extension modules in another, then queries once and
prints the count: each library load the agent held it at ends in one."""
import signal
import sys
import threading

conts = 0


def on_cont(signum, frame):
    global conts
    conts += 1


signal.signal(signal.SIGCONT, on_cont)


def imports():
    import _decimal, _sqlite3, _ctypes, _bz2, _lzma  # noqa: F401 (extension modules: one dlopen each)


other = threading.Thread(target=imports)
other.start()
import psycopg  # noqa: E402

other.join()
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("select 'after the holds' as marker")
print(conts)
