"""`python -m server` runs the probelink command line."""

from server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
