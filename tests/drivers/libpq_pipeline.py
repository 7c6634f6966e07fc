"""libpq's pipeline calls made directly (ctypes), on the libpq 18 bundled by
psycopg 3's binary wheel, for dbtel's end-to-end tests.

Connects, prints its PID and its backend's PID, waits for a line on stdin
(so the agent can attach by PID first), then, in pipeline mode:

- sends `select 1` and an insert that breaks a deferred unique constraint,
  then a sync with PQsendPipelineSync (libpq 17+): the implicit transaction
  fails to commit at the sync (23505, after the insert's own result);
- calls PQexec, which libpq refuses in pipeline mode;
- sends `select 2` and a sync with PQpipelineSync;
- reads every result, leaves pipeline mode, and runs `select 3` with PQexec.

Prints each result's status and SQLSTATE, "done", and exits.
"""
import ctypes
import glob
import os
import sys
import sysconfig

lib = glob.glob(sysconfig.get_paths()["purelib"] + "/psycopg_binary.libs/libpq-*.so.5.*")[0]
pq = ctypes.CDLL(lib)
vp = ctypes.c_void_p
pq.PQconnectdb.restype = vp
pq.PQconnectdb.argtypes = [ctypes.c_char_p]
for f in ["PQenterPipelineMode", "PQexitPipelineMode", "PQsendPipelineSync", "PQpipelineSync", "PQflush",
          "PQresultStatus", "PQbackendPID", "PQstatus"]:
    getattr(pq, f).argtypes = [vp]
pq.PQgetResult.restype = vp
pq.PQgetResult.argtypes = [vp]
pq.PQexec.restype = vp
pq.PQexec.argtypes = [vp, ctypes.c_char_p]
pq.PQclear.argtypes = [vp]
pq.PQfinish.argtypes = [vp]
pq.PQsendQueryParams.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, vp, vp, vp, vp, ctypes.c_int]
pq.PQresultErrorField.restype = ctypes.c_char_p
pq.PQresultErrorField.argtypes = [vp, ctypes.c_int]

PIPELINE_SYNC = 10

conn = pq.PQconnectdb(sys.argv[1].encode())
assert pq.PQstatus(conn) == 0, "connection failed"
print(os.getpid(), pq.PQbackendPID(conn), flush=True)
sys.stdin.readline()


def send(text):
    assert pq.PQsendQueryParams(conn, text, 0, None, None, None, None, 0) == 1


assert pq.PQenterPipelineMode(conn) == 1
send(b"select 1")
send(b"insert into d (id) values (1)")
assert pq.PQsendPipelineSync(conn) == 1
assert pq.PQexec(conn, b"select 'refused'") is None
send(b"select 2")
assert pq.PQpipelineSync(conn) == 1
syncs = 0
while syncs < 2:
    r = pq.PQgetResult(conn)
    if not r:
        continue
    status = pq.PQresultStatus(r)
    code = pq.PQresultErrorField(r, ord("C"))
    print(status, code.decode() if code else "-", flush=True)
    syncs += status == PIPELINE_SYNC
    pq.PQclear(r)
assert pq.PQgetResult(conn) is None
assert pq.PQexitPipelineMode(conn) == 1
pq.PQclear(pq.PQexec(conn, b"select 3"))
pq.PQfinish(conn)
print("done", flush=True)
