"""The study runner: executes the numbered notebooks with papermill into reports/ and checks
the results against the committed ones."""
