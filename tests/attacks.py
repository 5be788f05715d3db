"""What an attacker's processes run, in the tests of issue 25's shared-node
holes (tests/integration/test_shared_node_net.py, tests/users)."""

# Holds ``n`` idle TCP connections to 127.0.0.1:``port`` and says nothing on
# them; whatever the other end closes is dialled again at once.
FLOOD = """
import resource, selectors, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
def dial():
    s = socket.socket()
    # A connection the kernel completed by a SYN cookie while the master's
    # accept queue was full exists only on this side: it would be held idle
    # forever, not in the master. Keepalive probes find it (a reset) in ~2 s.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_READ)
for _ in range(n):
    dial()
print("holding", n, flush=True)
while True:  # say nothing; whatever the master closes is dialled again at once
    for key, _ in sel.select(1):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            dial()
"""
