"""The OpenAPI schema's account of authentication, scopes and errors (drf-spectacular).

- API keys (`Authorization: Bearer <key>`) and end users' device tokens
  (`Authorization: Device <token>`) as security schemes, beside the session cookie.
- Every operation names the scope an API key needs for it (`x-traverse-scope`, and in its
  description), or says that keys can't use it.
- Every operation documents the error responses it can give, all in the one error shape.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Machine-readable: invalid, bad_json, unauthenticated, "
                    "forbidden, not_found, rate_limited, conflict, unavailable, … (the "
                    "signaling socket's error codes are the same list).",
                },
                "message": {"type": "string", "description": "For a person."},
                "fields": {
                    "type": "object",
                    "description": "With `invalid`: field name -> what is wrong with it.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}

ERRORS = {
    "400": "The request is not valid (bad JSON, a wrong type, an unknown value): `fields` "
    "names each field.",
    "401": "No credentials, or ones that are not valid (unknown, revoked or expired key; a "
    "used or expired ticket). Comes with `WWW-Authenticate: Bearer`.",
    "403": "Authenticated, but not allowed: an API key without the scope, or an endpoint for "
    "people, not keys.",
    "404": "Not found, or not yours: other integrators' and other people's things look the same "
    "as missing ones.",
    "429": "Too many requests (per API key, or per person): `Retry-After` says when to retry.",
}


class BearerKeyScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.auth.BearerKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An integrator's API key (manage.py apikeys create, or admin).",
        }


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.auth.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Device <token>`: the device token an end user's socket got in "
            "its welcome, for that person's own requests.",
        }


def _scopes_by_operation(generator) -> dict[tuple[str, str], str | None]:
    found = {}
    for path, _regex, method, view in getattr(generator, "endpoints", None) or []:
        cls = getattr(view, "cls", None)
        scopes = getattr(cls, "key_scopes", None) or {}
        found[(path, method.lower())] = scopes.get(method.upper())
    return found


def document_errors_and_scopes(result, generator, request, public):
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    scopes = _scopes_by_operation(generator)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            scope = scopes.get((path, method))
            if scope == "*":
                note = "API keys: any valid key."
            elif scope:
                note = f"API keys: scope `{scope}`."
            else:
                note = "Not for API keys (signed-in people, or an end user's device token)."
            operation["x-traverse-scope"] = scope
            operation["description"] = (operation.get("description", "") + "\n\n" + note).strip()
            for status, text in ERRORS.items():
                operation["responses"].setdefault(
                    status,
                    {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
    return result
