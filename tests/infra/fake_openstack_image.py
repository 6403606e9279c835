"""Glance for the fake OpenStack: the images a test adds, listed and looked up."""

from __future__ import annotations

import re

from tests.infra.fake_openstack_http import Plumbing


class ImageAPI(Plumbing):
    """/image: Glance v2."""

    def image(self, method: str, path: str, query: dict[str, str]) -> None:
        if method == "GET" and path == "":
            return self.send_versions(300, "v2.15", "/image/v2/")
        if method == "GET" and path == "/v2/images":
            found = [
                i
                for i in self.cloud.images.values()
                if all(str(i.get(k)) == v for k, v in query.items() if k in ("name", "id"))
            ]
            return self.send(200, {"images": found})
        if (m := re.fullmatch(r"/v2/images/([^/]+)", path)) and method == "GET":
            image = self.cloud.images.get(m[1])
            return self.send(200, image) if image else self.not_found()
        self.not_found()
