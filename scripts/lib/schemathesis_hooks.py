"""schemathesis hooks for scripts/check-api: every request carries a fresh admin JWT.

The bootstrap admin logs in again every few seconds, so that a case that revokes its sessions
(POST /admins/{id}/revoke-sessions on its own id) does not turn the rest of the run into 401s.
"""
import os

import requests
import schemathesis

BASE = os.environ["CHECK_API_BASE"]
EMAIL = os.environ["CHECK_API_EMAIL"]
PASSWORD = os.environ["CHECK_API_PASSWORD"]


@schemathesis.auth(refresh_interval=2)
class AdminLogin:
    def get(self, case, ctx):
        answer = requests.post(
            f"{BASE}/admin/v1/auth/login",
            json={"email": EMAIL, "password": PASSWORD},
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
