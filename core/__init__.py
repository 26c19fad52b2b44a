"""Small types and helpers that every other package may import: the concept spec, option
passing, image helpers and DreamBench facts. Imports nothing of the project."""
