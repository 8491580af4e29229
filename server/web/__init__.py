"""The HTTP edge shared by every feature: typed app keys, authentication and the request guards,
middleware (errors, headers, revoked access), outages as 503s, audited refusals, the vocabulary."""
