"""`python -m attnopt`: the same CLI as the `attnopt` console script."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="attnopt")
