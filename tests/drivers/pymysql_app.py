"""A PyMySQL application: the MySQL protocol spoken in Python, no client
library loaded (dbtel can see it only through its server).

Usage: pymysql_app.py SOCKET DATABASE
Prints its PID, waits for a line on stdin, then runs a few statements and
prints `conn ID` (its connection id) and `done`.
"""

import os
import sys

import pymysql

socket, database = sys.argv[1], sys.argv[2]
print(os.getpid(), flush=True)
sys.stdin.readline()
conn = pymysql.connect(unix_socket=socket, user="root", database=database)
print("conn", conn.thread_id(), flush=True)
with conn.cursor() as cur:
    cur.execute("select balance from accounts where id = %s", (1,))
    assert cur.fetchall() == ((100,),)
    cur.execute("update accounts set note = %s where id = 2", ("pymysql",))
conn.commit()
conn.close()
print("done", flush=True)
