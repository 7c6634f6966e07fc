"""A traced program that tries to blow up the agent's memory.

Usage: hostile.py maps DIR        maps /dev/zero and a 1 GiB sparse file (in DIR)
                                  executable, for 3 s
       hostile.py flood SECONDS   PQexec(NULL, 4 KB text) in a loop: nothing is
                                  sent, libpq returns at once
       hostile.py conns N         N connection handles (to no server), never
                                  closed, a PQexec on each
Prints its PID first, the number of calls for a flood, then `done`.
"""

import ctypes
import mmap
import os
import sys
import time

print(os.getpid(), flush=True)
mode = sys.argv[1]
if mode == "maps":
    zero = os.open("/dev/zero", os.O_RDONLY)
    m1 = mmap.mmap(zero, 1 << 20, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC)
    path = os.path.join(sys.argv[2], "sparse.bin")
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    sparse = os.open(path, os.O_RDONLY)
    m2 = mmap.mmap(sparse, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC)
    time.sleep(3)
elif mode == "flood":
    pq = ctypes.CDLL("libpq.so.5")
    pq.PQexec.restype = ctypes.c_void_p
    pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    text = b"select " + b"1," * 2000 + b"1"
    end = time.time() + float(sys.argv[2])
    n = 0
    while time.time() < end:
        pq.PQexec(None, text)
        n += 1
    print("calls", n, flush=True)
elif mode == "conns":
    pq = ctypes.CDLL("libpq.so.5")
    pq.PQconnectStart.restype = ctypes.c_void_p
    pq.PQconnectStart.argtypes = [ctypes.c_char_p]
    pq.PQexec.restype = ctypes.c_void_p
    pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    leaked = []
    for i in range(int(sys.argv[2])):
        c = pq.PQconnectStart(b"host=/nonexistent dbname=none connect_timeout=1")
        leaked.append(c)
        pq.PQexec(c, b"select 1")
print("done", flush=True)
