"""Results: the table writer, the results index, and the builder of each table and plot."""
