"""`python -m kinepy` runs the same CLI as the `kinepy` console script."""

from kinepy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
