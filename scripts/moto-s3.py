"""Serves moto's S3 service (and its /moto-api) on HOST PORT, for `scripts/s3-server`.

`python -m moto.server` serves every AWS service moto knows and works out which one each
request is for: on every request it tries the host name against each service's URL patterns
(about 180 directory look-ups on disk each time) before falling back to S3. The tests only speak
S3, so this sends every request straight to the S3 app, and `/moto-api/...` (readiness checks,
the request recorder) to moto's own API app. The HTTP side is werkzeug's threaded server, as
with `python -m moto.server`. A GET costs about 4 ms here against about 6 ms there.

Usage: python moto-s3.py HOST PORT
"""

import contextlib
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class ReadWriteLock:
    """Any number of readers, or one writer; a waiting writer goes before readers that come
    after it, so a stream of reads cannot starve it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# moto's S3 backend is not safe for its threaded server, in two ways S3 itself never shows:
# - it checks `If-None-Match: *` and `If-Match` and then writes, as two steps, so two requests on
#   two threads can both pass the check (two writers both "win" one version), where S3 makes
#   the check and the write one atomic step;
# - a listing iterates the bucket's keys while another thread's DELETE removes one, and fails
#   with a KeyError (a 500 to the client).
# So a write (PUT, POST, DELETE) runs alone, and reads (GET, HEAD) run beside each other but
# never beside a write. `/moto-api` requests (readiness checks) take no lock.
BUCKET = ReadWriteLock()


class S3Only(DomainDispatcherApplication):
    """Routes `/moto-api...` to moto's API app and everything else to the S3 app; a write runs
    alone, reads run together."""

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return super().__call__(environ, start_response)
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with BUCKET.write():
                return super().__call__(environ, start_response)
        with BUCKET.read():
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
