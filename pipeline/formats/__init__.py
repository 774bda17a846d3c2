"""The data formats every stage reads and writes: the utterance manifest, the feature store and the
stage report. Built on the core only."""
