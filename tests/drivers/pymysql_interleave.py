"""Several PyMySQL connections at once, each in its own thread, for the
MariaDB server tests (pool-of-threads: the server runs each command of a
connection on whichever worker thread is free).

Usage: pymysql_interleave.py SOCKET DATABASE CONNECTIONS ROUNDS
Needs `t (id int primary key, v int)` with rows 1 and 2, `counters (id int
primary key, n int)` with a row per connection (0 .. CONNECTIONS-1) and
`events (id int auto_increment primary key, conn int, round int)`.
Each round: a read, a BEGIN .. COMMIT block (insert, update of the
connection's own counter: no lock waits), every 3rd round a failing
statement (1146), every 4th a COM_INIT_DB (select_db).
Prints `conn N ID` for each connection, `error N ERRNO` for each error,
then `done`.
"""

import sys
import threading

import pymysql

socket, database, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conns = [pymysql.connect(unix_socket=socket, user="root", database=database, autocommit=True) for _ in range(n)]
for i, c in enumerate(conns):
    print("conn", i, c.thread_id(), flush=True)
start = threading.Barrier(n)
lock = threading.Lock()


def work(i, c):
    cur = c.cursor()
    start.wait()
    for r in range(rounds):
        cur.execute("select v from t where id = %s", (i % 2 + 1,))
        cur.fetchall()
        cur.execute("begin")
        cur.execute("insert into events (conn, round) values (%s, %s)", (i, r))
        cur.execute("update counters set n = n + 1 where id = %s", (i,))
        cur.execute("commit")
        if r % 3 == 0:
            try:
                cur.execute("select * from missing")
            except pymysql.MySQLError as e:
                with lock:
                    print("error", i, e.args[0], flush=True)
        if r % 4 == 0:
            c.select_db(database)


threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(conns)]
for th in threads:
    th.start()
for th in threads:
    th.join()
for c in conns:
    c.close()
print("done", flush=True)
