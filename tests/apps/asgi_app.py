"""The ASGI twin of wsgi_app: same paths, plus lifespan and a websocket echo
(neither of which is an HTTP request)."""

import asyncio


class AppFailure(ValueError):
    pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text", "")})
        await send({"type": "websocket.close"})
        return
    path = scope["path"]
    status, body = 200, b"hello\n"
    if path.startswith("/status/"):
        status, body = int(path.rsplit("/", 1)[1]), b"status\n"
    elif path == "/raise":
        raise AppFailure("the application failed")
    elif path.startswith("/sleep/"):
        await asyncio.sleep(float(path.rsplit("/", 1)[1]))
    elif path == "/echo":
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
