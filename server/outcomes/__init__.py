"""Outcomes after a second opinion and the accuracy ledger they feed."""
