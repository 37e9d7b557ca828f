"""A FastAPI application (with mounted Starlette routers, one under a path
parameter) for the route tests."""

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, Router


async def report(request):
    return PlainTextResponse(f"report {request.path_params['rid']}\n")


app = FastAPI()
app.mount("/admin", Router(routes=[Route("/reports/{rid}", report)]))
# A mount with a path parameter of its own: the route is the whole template.
app.mount("/org/{org}", Starlette(routes=[Route("/r/{rid}", report)]))


@app.get("/users/{uid}")
async def user(uid: int):
    return {"uid": uid}


@app.get("/fail")
async def fail():
    return 1 // 0


@app.get("/")
async def index():
    return {"hello": "world"}
