"""Consultations: the request and its clinical context, its life cycle, who may see it, and the
record and queue views."""
