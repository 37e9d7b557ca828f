"""A Flask application for the route and failure tests: templates, not paths.

/fail raises ZeroDivisionError, which Flask turns into a 500 itself;
`propagating` is the same application with PROPAGATE_EXCEPTIONS on, so the
exception also reaches the worker."""

from flask import Flask

app = Flask(__name__)


@app.route("/users/<int:uid>")
def user(uid):
    return f"user {uid}\n"


@app.route("/items/<name>", methods=["GET", "POST"])
def item(name):
    return f"item {name}\n"


@app.route("/")
def index():
    return "hello\n"


@app.route("/fail")
def fail():
    return 1 // 0


propagating = Flask("propagating")
propagating.config["PROPAGATE_EXCEPTIONS"] = True
propagating.add_url_rule("/fail", view_func=fail)
propagating.add_url_rule("/", view_func=index)
