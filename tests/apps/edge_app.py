"""A WSGI application whose requests end where Gunicorn's own paths meet.

Paths: /                     200 "hello"
       /body-raises          start_response("200 OK"), then the body raises
                             before its first chunk: Gunicorn answers 500
       /clears-environ       start_response("200 OK"), then clears the environ:
                             Gunicorn fails reading it and answers 500
       /no-start-response    returns a body without calling start_response
       /fork/exit            forks a child that leaves through sys.exit(3);
                             the parent waits for it and answers 200
       /fork/raise           the same, the child leaving by an exception
"""

import os
import socket
import sys


class BodyFailure(RuntimeError):
    pass


def _raising_body():
    raise BodyFailure("the body failed before its first chunk")
    yield b"never"  # noqa: B901 - a generator that raises when iterated


def _fork_and_wait(environ, how):
    pid = os.fork()
    if pid == 0:
        # The child must not answer on the parent's connection: its copy of
        # the descriptor becomes one end of a pair nobody reads.
        spare, _ = socket.socketpair()
        os.dup2(spare.fileno(), environ["gunicorn.socket"].fileno())
        if how == "exit":
            sys.exit(3)
        raise BodyFailure("the forked child failed")
    os.waitpid(pid, 0)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/body-raises":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _raising_body()
    if path == "/clears-environ":
        start_response("200 OK", [("Content-Type", "text/plain")])
        environ.clear()
        return [b"cleared\n"]
    if path == "/no-start-response":
        return [b"no status\n"]
    if path.startswith("/fork/"):
        _fork_and_wait(environ, path.rsplit("/", 1)[1])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]
