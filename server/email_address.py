"""E-mail addresses as notifications take them: one plain mailbox, nothing a header could hide.

Deliberately narrower than RFC 5321 (no quoted local parts, no address literals, no comments):
an address is written into an SMTP envelope and a `To:` header, so anything that could end a
line or add a recipient is refused rather than escaped.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

ADDRESS_MAX_CHARS = 254
LOCAL_PART_MAX_CHARS = 64
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
ADDRESS_RULE = "must be one e-mail address like name@hospital.example (no display name)"


def check_address(value: str) -> str:
    """The address, trimmed; ValueError saying what an address must look like."""
    address = value.strip()
    local, at, domain = address.rpartition("@")
    labels = domain.split(".")
    if (
        not at
        or len(address) > ADDRESS_MAX_CHARS
        or len(local) > LOCAL_PART_MAX_CHARS
        or not _LOCAL.fullmatch(local)
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise ValueError(ADDRESS_RULE)
    return address


def parse_addresses(value: str) -> tuple[str, ...]:
    """Comma-separated addresses, without repeats (compared case-insensitively), in order;
    ValueError naming the entry that is not an address."""
    found: dict[str, str] = {}
    for n, entry in enumerate((e.strip() for e in value.split(",")), 1):
        if not entry:
            continue
        try:
            address = check_address(entry)
        except ValueError:
            raise ValueError(f"entry {n} {ADDRESS_RULE}") from None
        found.setdefault(address.lower(), address)
    return tuple(found.values())


# A validated address in a request body (an expert's `email`).
EmailAddress = Annotated[str, AfterValidator(check_address)]
