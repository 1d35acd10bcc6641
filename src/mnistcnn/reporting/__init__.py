"""Documents and figures: blocks rendered to Markdown and HTML, plots, probes, metrics, the
run report and the comparison of runs."""
