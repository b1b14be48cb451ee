"""The command line: the shared option definitions and one module per command (`crossan train`,
`crossan evaluate`, `crossan tune`, `crossan experiments`). The top layer of the zoo."""
