"""Serves moto's S3 service (and its /moto-api) on HOST PORT, for `scripts/s3-server`.

`python -m moto.server` serves every AWS service moto knows and works out which one each
request is for: on every request it tries the host name against each service's URL patterns
(about 180 directory look-ups on disk each time) before falling back to S3. The tests only speak
S3, so this sends every request straight to the S3 app, and `/moto-api/...` (readiness checks,
the request recorder) to moto's own API app. The HTTP side is werkzeug's threaded server, as
with `python -m moto.server`. A GET costs about 4 ms here against about 6 ms there.

Usage: python moto-s3.py HOST PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


# moto checks `If-None-Match: *` and `If-Match` and then writes, as two steps: two requests on
# two of the server's threads can both pass the check (two writers both "win" one version).
# S3 makes the check and the write one atomic step; holding this lock around every write does
# the same here. Reads stay concurrent.
WRITES = threading.Lock()


class S3Only(DomainDispatcherApplication):
    """Routes `/moto-api...` to moto's API app and everything else to the S3 app; one write
    at a time."""

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with WRITES:
                return super().__call__(environ, start_response)
        return super().__call__(environ, start_response)

    def get_application(self, environ):
        path = environ.get("PATH_INFO", "")
        service = "moto_api" if path.startswith("/moto-api") else "s3"
        app = self.app_instances.get(service)
        if app is None:
            with self.lock:
                app = self.app_instances.get(service)
                if app is None:
                    app = self.create_app(service)
                    self.app_instances[service] = app
        return app


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: moto-s3.py HOST PORT")
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, S3Only(create_backend_app), threaded=True)


if __name__ == "__main__":
    main()
