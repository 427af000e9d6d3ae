"""The OpenAPI 3 document of the REST API, built from the route table, and the docs page.

Request schemas come from the msgspec types that validate the bodies (schemas.py), so
the document states exactly what the server accepts, ranges included.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from d7y.daemons.manager import responses, schemas
from d7y.daemons.manager.api import API, Route

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the bad field's JSON path"},
    },
}
_STATUS_TEXT = {
    "400": "the body is not JSON",
    "401": "no token, or an unknown or expired session",
    "403": "the token is inactive, expired or lacks the scope, or the role may only read",
    "404": "no such object",
    "409": "conflicts with existing data",
    "422": "a value is missing, unknown, ill-typed or out of range",
    "503": "the database cannot be reached",
}


def openapi_path(path: str) -> str:
    """aiohttp's ``{id:\\d+}`` -> OpenAPI's ``{id}``."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def build_document(routes: list[Route], version: str) -> dict[str, Any]:
    types = [*schemas.REQUEST_TYPES, *responses.RESPONSE_TYPES]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    for schema in components.values():
        # Every struct forbids unknown fields (schemas.Struct): say so, for requests (they
        # are refused) and answers (the tests check none is sent).
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    components["Error"] = _ERROR
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.operation_id or route.handler.__name__,
            "tags": [route.group or "service"],
            "responses": _responses(route),
        }
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1}}
            for name in _PARAM.findall(route.path)
        ]  # fmt: skip
        if route.query is not None:
            params += _query_params(route.query)
        elif route.method == "GET" and route.response == "array":
            params += [
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "per_page", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ]  # fmt: skip
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}
                    }
                },
            }
        if route.auth == "none":
            operation["security"] = []
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = operation
    paths[f"{API}/openapi.json"] = {
        "get": {
            "summary": "this document",
            "operationId": "openapi",
            "tags": ["service"],
            "security": [],
            "responses": {"200": {"description": "the OpenAPI 3 document"}},
        }
    }
    paths["/api/docs"] = {
        "get": {
            "summary": "the API documentation, rendered",
            "operationId": "docs",
            "tags": ["service"],
            "security": [],
            "responses": {"200": {"description": "an HTML page"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "d7y manager",
            "version": version,
            "description": "Clusters, schedulers, seed peers, users, tokens, audits and "
            "preheat jobs. "
            "Send Authorization: Bearer <token> (a session token from "
            f"POST {API}/users/signin, or a personal access token).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _responses(route: Route) -> dict[str, Any]:
    if route.response == "none":
        ok_code = "200" if route.path.endswith("/healthy") else "204"
        responses: dict[str, Any] = {ok_code: {"description": "done"}}
    else:
        item: dict[str, Any] = {"type": "object"}
        if route.returns is not None:
            item = {"$ref": f"#/components/schemas/{route.returns.__name__}"}
        kind = {"type": "array", "items": item} if route.response == "array" else item
        ok_code = "201" if route.method == "POST" and route.body in _CREATES else "200"
        responses = {
            ok_code: {"description": "done", "content": {"application/json": {"schema": kind}}}
        }
    codes = ["503"]
    if route.body is not None:
        codes += ["400", "422"]
    if route.query is not None or route.response == "array":
        codes.append("422")
    if route.auth != "none":
        codes += ["401", "403"]
    if "{" in route.path:
        codes.append("404")
    if route.method in ("POST", "PATCH", "DELETE") and route.auth != "none":
        codes.append("409")
    if route.path.endswith("/signin"):
        codes.append("401")
    for code in sorted(set(codes)):
        responses[code] = {
            "description": _STATUS_TEXT[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


_CREATES = {
    schemas.ClusterCreate,
    schemas.UserCreate,
    schemas.TokenCreate,
    schemas.SchedulerRegister,
    schemas.SeedPeerRegister,
    schemas.JobCreate,
}


def _query_params(kind: type) -> list[dict[str, Any]]:
    _, components = msgspec.json.schema_components([kind])
    body = components[kind.__name__]
    required = set(body.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in body["properties"].items()
    ]


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>d7y manager API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
.op{margin:.6rem 0;padding:.5rem .7rem;border:1px solid #e3e3e3;border-radius:6px}
.m{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}
.p{font-family:monospace} .s{color:#555} pre{background:#f6f6f6;padding:.5rem;overflow:auto}
</style></head><body>
<h1>d7y manager API</h1>
<p>The machine-readable document: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.
Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<div id="ops">loading /api/v1/openapi.json ...</div>
<script>
fetch('/api/v1/openapi.json').then(r => r.json()).then(doc => {
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method, path, op]);
  const out = document.getElementById('ops'); out.textContent = '';
  const schemas = doc.components.schemas;
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement('h2'); h.textContent = tag; out.appendChild(h);
    for (const [method, path, op] of ops) {
      const d = document.createElement('div'); d.className = 'op';
      const m = document.createElement('span'); m.className = 'm';
      m.textContent = method.toUpperCase();
      const p = document.createElement('span'); p.className = 'p'; p.textContent = path;
      const s = document.createElement('div'); s.className = 's';
      s.textContent = op.summary + ' - answers ' + Object.keys(op.responses).join(', ');
      d.append(m, p, s);
      const ref = op.requestBody && op.requestBody.content['application/json'].schema.$ref;
      if (ref) {
        const pre = document.createElement('pre');
        pre.textContent = JSON.stringify(schemas[ref.split('/').pop()], null, 1);
        d.appendChild(pre);
      }
      out.appendChild(d);
    }
  }
});
</script></body></html>
"""
