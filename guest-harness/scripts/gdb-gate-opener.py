#!/usr/bin/env python3
"""Test aid standing in for the bench: watch a control log; once every named thread of a trial
sent READY, open its gates through qemu's gdbstub (physical-memory mode, `M` packets).

    gdb-gate-opener.py CTL_LOG GDB_PORT NAME1,NAME2 [PHASE]

Gates are opened in the given order; with PHASE, the second is opened only after `PHASE
<PHASE>` (e.g. `migrate-done`). Start qemu with `-gdb tcp::GDB_PORT` (see qemu-try.sh, EXTRA)."""
import socket, sys, time
ctl, port, order = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(',')
def pkt(s, data):
    cs = sum(data.encode()) & 0xff
    s.sendall(f"${data}#{cs:02x}".encode())
    buf = b""
    while True:
        buf += s.recv(4096)
        if b"#" in buf.lstrip(b"+") and len(buf.split(b"#")[-1]) >= 2:
            s.sendall(b"+")
            return buf
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError: time.sleep(0.1)
s.sendall(b"+")
print(pkt(s, "qqemu.PhyMemMode"))
print(pkt(s, "Qqemu.PhyMemMode:1"))
s.sendall(b"$c#63")  # continue (qemu stops the VM on attach)
done = set(); seen = 0
deadline = time.time() + 200
while time.time() < deadline:
    lines = open(ctl).read().splitlines()
    gates = {}; ready = set()
    for l in lines:
        f = l.split()
        if f and f[0] == "PHASE" and f[1].startswith("trial-"): gates = {}; ready = set(); trial = f[1]
        if f and f[0] == "GATE": gates[f[1]] = int(f[2], 16)
        if f and f[0] == "READY": ready.add(f[1])
        if f and f[0] == "EXIT": sys.exit(0)
    if gates and set(order) <= ready and trial not in done:
        s.sendall(b"\x03"); time.sleep(0.2); s.recv(4096)   # interrupt
        between = sys.argv[4] if len(sys.argv) > 4 else None
        for i, name in enumerate(order):
            if i > 0 and between:
                s.sendall(b"$c#63")
                n = len(lines)
                while not any(l == "PHASE " + between for l in open(ctl).read().splitlines()[n:]): time.sleep(0.1)
                s.sendall(b"\x03"); time.sleep(0.2); s.recv(4096)
            print(trial, "open", name, hex(gates[name]), pkt(s, f"M{gates[name]:x},4:01000000"))
        s.sendall(b"$c#63")
        done.add(trial)
    time.sleep(0.2)
