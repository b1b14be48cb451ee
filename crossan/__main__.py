"""`python -m crossan` is the `crossan` command."""

from crossan.command import main

if __name__ == "__main__":
    main()
