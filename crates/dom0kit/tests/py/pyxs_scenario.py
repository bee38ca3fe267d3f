"""A pyxs (python3-pyxs) client session against the xenstored at argv[1]:
reads, writes, listing, permissions, transactions (one conflicting) and a
watch. Prints what it saw, one item per line, for comparison between
daemons. Written for dom0kit's tests."""
import sys

import pyxs

path = sys.argv[1]
out = []


def attempt(what, f):
    try:
        out.append((what, f()))
    except pyxs.PyXSError as e:
        out.append((what, "error", e.args[0]))


with pyxs.Client(unix_socket_path=path) as c:
    c.write(b"/py/a", b"1")
    attempt("read", lambda: c.read(b"/py/a"))
    c.mkdir(b"/py/dir")
    attempt("list", lambda: c.list(b"/py"))
    attempt("exists none", lambda: c.exists(b"/py/none"))
    attempt("exists a", lambda: c.exists(b"/py/a"))
    attempt("read none", lambda: c.read(b"/py/none"))
    attempt("set_perms", lambda: c.set_perms(b"/py/a", [b"b0", b"r0"]))
    attempt("get_perms", lambda: c.get_perms(b"/py/a"))
    attempt("walk", lambda: list(c.walk(b"/py")))
    attempt("domain path", lambda: c.get_domain_path(3))
    c.transaction()
    c.write(b"/py/t", b"x")
    attempt("commit", lambda: c.commit())
    attempt("read t", lambda: c.read(b"/py/t"))
    with pyxs.Client(unix_socket_path=path) as other:
        c.transaction()
        c.read(b"/py/a")
        other.write(b"/py/a", b"2")
        c.write(b"/py/b", b"y")
        attempt("conflicting commit", lambda: c.commit())
    attempt("b after conflict", lambda: c.exists(b"/py/b"))
    m = c.monitor()
    m.watch(b"/py/w", b"tok")
    events = m.wait()
    out.append(("first event", next(events)))
    c.write(b"/py/w/x", b"1")
    out.append(("event", next(events)))
    c.delete(b"/py")
    out.append(("event after rm", next(events)))
    m.unwatch(b"/py/w", b"tok")
    attempt("delete", lambda: c.delete(b"/py"))

for item in out:
    print(repr(item))
