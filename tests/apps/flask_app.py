"""A Flask application for the route tests: templates, not paths."""

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
