"""Measures: ranking metrics, ranking of test cases, beyond-accuracy measures, the
`Recommender` interface they rank, and the rendering of results (tables, plots)."""
