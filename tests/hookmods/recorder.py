"""A Python hook for the integration tests: records every event it sees, decides by rules.

Each event is one JSON line in `path`, so a test can check what hooks were told and in
which order. Options (all optional) say what to decide:
  block: substring -> the statement is refused (SQLSTATE `sqlstate`, default 42501)
  rewrite: {substring: new SQL}
  route: {substring: "primary" | "replica"}
  refuse_application: application_name refused at pre_connect
  after_connect: SQL run on each new server connection
  raise_on: substring -> pre_query raises (a buggy hook)
  answer: anything else -> an answer the proxy must reject as nonsense (a bad SQLSTATE)
"""

from __future__ import annotations

import json

from trio_pgdog.hooks.api import Decision


class Recorder:
    def __init__(self, path: str, block: str = "", sqlstate: str = "42501",
                 rewrite: dict[str, str] | None = None, route: dict[str, str] | None = None,
                 refuse_application: str = "", after_connect: list[str] | None = None,
                 raise_on: str = "", nonsense_on: str = ""):
        self.path = path
        self.block, self.sqlstate = block, sqlstate
        self.rewrite = rewrite or {}
        self.route = route or {}
        self.refuse_application = refuse_application
        self.after = after_connect or []
        self.raise_on = raise_on
        self.nonsense_on = nonsense_on

    def _write(self, **event: object) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=repr) + "\n")

    def pre_connect(self, info):
        self._write(event="pre_connect", user=info.user, database=info.database,
                    application_name=info.application_name, client_addr=info.client_addr)
        if self.refuse_application and info.application_name == self.refuse_application:
            return Decision.block(f"application {info.application_name} is not welcome", "28000")
        return None

    def after_connect(self, info):
        self._write(event="after_connect", database=info.database, host=info.host,
                    port=info.port, role=info.role)
        return self.after

    def pre_query(self, query):
        params = [p.decode() if p is not None else None for p in query.parameters]
        self._write(event="pre_query", sql=query.sql, params=params, extended=query.extended,
                    kind=query.facts.kind, tables=[list(t) for t in query.facts.tables],
                    in_transaction=query.in_transaction)
        if self.raise_on and self.raise_on in query.sql:
            raise RuntimeError("recorder hook bug")
        if self.nonsense_on and self.nonsense_on in query.sql:
            return Decision.block("nonsense", sqlstate="not-a-code")
        if self.block and self.block in query.sql:
            return Decision.block(f"{self.block} is blocked by the recorder", self.sqlstate)
        for needle, sql in self.rewrite.items():
            if needle in query.sql:
                return Decision.rewrite(sql)
        for needle, role in self.route.items():
            if needle in query.sql:
                return Decision.route(role=role)
        return None

    def post_query(self, done):
        self._write(event="post_query", sql=done.sql, rows=done.rows, sqlstate=done.sqlstate,
                    host=done.host, role=done.role, duration_us=done.duration_us,
                    params=[p.decode() if p is not None else None for p in done.parameters])


def read_events(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []
