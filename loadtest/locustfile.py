"""Locust scenarios for hybrid-lb.

    pip install -r loadtest/requirements.txt
    locust -f loadtest/locustfile.py --headless -u 100 -r 10 --run-time 1m --host http://localhost:8080

Each simulated user keeps its cookies, like a browser, so with
`lb.sticky.mode: cookie` it stays on one upstream; the task mix spreads
requests over several paths. Users check stickiness as they go: the upstream
that answers (`X-Backend`) must not change while its cookie is held, unless the
balancer issued a new cookie (the session moved).
"""

import random

from locust import HttpUser, between, task


class Visitor(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self):
        self.home = None

    def _get(self, path, name=None):
        with self.client.get(path, name=name or path, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            backend = resp.headers.get("X-Backend")
            moved = "HLB_STICKY" in resp.headers.get("Set-Cookie", "")
            if self.home is not None and backend != self.home and not moved and "HLB_STICKY" in self.client.cookies:
                resp.failure(f"sticky session moved from {self.home} to {backend} without a new cookie")
                return
            self.home = backend
            resp.success()

    @task(6)
    def index(self):
        self._get("/")

    @task(3)
    def list_items(self):
        self._get("/api/items")

    @task(2)
    def item(self):
        self._get(f"/api/items/{random.randint(1, 100)}", name="/api/items/[id]")

    @task(1)
    def static_asset(self):
        self._get("/static/app.css")
