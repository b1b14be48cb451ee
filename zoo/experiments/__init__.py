"""The paper's experiment tables as data files, trained and summarised by `crossan experiments`."""

from crossan.zoo.experiments.definition import RunSpec, Sweep, TableDefinition, builtin_tables, load_table

__all__ = ["RunSpec", "Sweep", "TableDefinition", "builtin_tables", "load_table"]
