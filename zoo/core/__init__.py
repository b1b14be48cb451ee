"""The lowest layer, used by every other folder of the zoo: errors, atomic files, file locks,
typed config fields, file reading, finiteness checks and the processes of a run."""
