"""The generated worlds behind envs.make: one module per world, with its scripted expert and explorer."""
