"""Admin changelists refuse lookups that touch a secret field, at any depth.

A changelist filters by any lookup in the query string that Django's `lookup_allowed` lets
through, and staff with only the view permission could read a "write-only" relay secret one
character at a time (`?secret__regex=^a`, `?relay__secret__startswith=…` from probe results,
`?participants__relay__secret…` from calls). Django's own UserAdmin refuses `password`
lookups the same way; this mixin does it for every secret of ours. Every ModelAdmin in the
project uses it, and tests/test_admin_secret_lookups.py walks every registered admin.
"""

from django.db.models.constants import LOOKUP_SEP

SECRET_FIELDS = frozenset({"secret", "next_secret", "previous_secret", "password"})


class RefuseSecretLookups:
    def lookup_allowed(self, lookup, value, request=None):
        if SECRET_FIELDS & set(lookup.split(LOOKUP_SEP)):
            return False
        return super().lookup_allowed(lookup, value, request)  # type: ignore[misc]
