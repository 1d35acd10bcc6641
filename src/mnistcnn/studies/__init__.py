"""Studies: study files, sweeps, questions and their statistics, the book and publishing."""
