"""A Flask application for the route and failure tests: templates, not paths.

/fail raises ZeroDivisionError, which Flask turns into a 500 itself;
`propagating` is the same application with PROPAGATE_EXCEPTIONS on, so the
exception also reaches the worker."""

from flask import Blueprint, Flask

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


# A blueprint under a path parameter: the rule is the whole template.
org = Blueprint("org", __name__, url_prefix="/org/<org>")


@org.route("/r/<int:rid>")
def org_report(org, rid):
    return f"report {rid}\n"


app.register_blueprint(org)


@app.route("/fail")
def fail():
    return 1 // 0


propagating = Flask("propagating")
propagating.config["PROPAGATE_EXCEPTIONS"] = True
propagating.add_url_rule("/fail", view_func=fail)
propagating.add_url_rule("/", view_func=index)
