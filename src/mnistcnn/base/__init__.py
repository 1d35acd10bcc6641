"""The ground floor: config schemas and checks, errors, the run folder's files and names,
provenance, signals, number formats. Imports nothing else of mnistcnn."""
