"""Studies: where they are kept (journal or any Optuna storage), studies as pandas tables,
plots, and the export script of a study's settings."""
