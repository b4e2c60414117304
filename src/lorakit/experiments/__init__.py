"""Experiments over several methods and seeds: statistics, plots and the written report."""
