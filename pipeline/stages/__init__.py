"""One module per pipeline stage (the `mer` subcommands DVC runs). Stages are the only code that
wires corpora, extractors, the data formats and the model together."""
