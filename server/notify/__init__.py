"""Notifications: experts and the coordinator are told by e-mail and a signed webhook when a
request arrives and when an open one is about to be due (a durable outbox, no patient data)."""
