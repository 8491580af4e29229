"""Experts: their credentials (subspecialties), the reading room queue, accepting and assigning."""
