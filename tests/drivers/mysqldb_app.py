"""A MySQLdb (mysqlclient, on libmariadb.so.3) application with autocommit
off, as the driver leaves it: transactions end with COMMIT or ROLLBACK; a
failing statement inside one; a deadlock between two more connections (two
threads locking two rows in opposite orders), whose victim rolls back and
retries.

Usage: mysqldb_app.py SOCKET DATABASE
Prints its PID, then waits for a line on stdin ("go": an agent may attach by
PID meanwhile; the library is already loaded), then prints as it goes:
  conn NAME ID        each connection's id (NAME: main, b, c)
  error 1146          the failing statement's error number
  deadlock NAME       the connection chosen as the deadlock victim
  done
The table `accounts (id int primary key, balance int, note varchar(64))`
holds rows 1 and 2 beforehand.
"""

import os
import sys
import threading
import time

import MySQLdb

socket, database = sys.argv[1], sys.argv[2]
print(os.getpid(), flush=True)
sys.stdin.readline()


def connect(name):
    conn = MySQLdb.connect(unix_socket=socket, user="root", database=database)
    print("conn", name, conn.thread_id(), flush=True)
    return conn


main = connect("main")
cur = main.cursor()
cur.execute("insert into accounts values (%s, %s, %s)", (3, 30, "it's \"three\""))
main.commit()

cur.execute("select balance from accounts where id = %s", (1,))
assert cur.fetchall() == ((100,),)
cur.execute('update accounts set balance = balance + 5, note = "bonus" where id = 1')
main.commit()

cur.execute("delete from accounts where id = 3")
main.rollback()

cur.execute("select balance from accounts where id = 2")
try:
    cur.execute("select * from no_such_table")
except MySQLdb.ProgrammingError as e:
    print("error", e.args[0], flush=True)
main.rollback()

# Two connections lock rows 1 and 2 in opposite orders: one of them is
# chosen as the deadlock victim (1213), rolls back and retries.
b, c = connect("b"), connect("c")
both_hold_one = threading.Barrier(2)
failures = []


def transfer(name, conn, first, second, pause):
    cur = conn.cursor()
    attempt = 0
    while True:
        try:
            cur.execute("update accounts set balance = balance - 1 where id = %s", (first,))
            if attempt == 0:
                both_hold_one.wait()
                # The other side's second update waits first.
                time.sleep(pause)
            cur.execute("update accounts set balance = balance + 1 where id = %s", (second,))
            conn.commit()
            return
        except MySQLdb.OperationalError as e:
            if e.args[0] != 1213 or attempt > 0:
                failures.append((name, e.args))
                return
            print("deadlock", name, flush=True)
            conn.rollback()
            attempt += 1


threads = [
    threading.Thread(target=transfer, args=("b", b, 1, 2, 0.0)),
    threading.Thread(target=transfer, args=("c", c, 2, 1, 0.3)),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures

cur.execute("select sleep(0.2)")
main.commit()

for conn in (b, c, main):
    conn.close()
print("done", flush=True)
