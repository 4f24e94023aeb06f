"""What every page shows about calls: the count of missed calls not yet seen (the nav badge),
and whether a ringing page negotiates before the answer (CALL_EARLY_ICE)."""

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from .selectors import missed_count_for


def missed_calls(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # Lazy: only pages that render the badge pay for the query.
    return {
        "missed_count": SimpleLazyObject(lambda: missed_count_for(user=user)),
        "early_ice": settings.CALL_EARLY_ICE,
    }
