"""The core: errors, atomic writes, fingerprints, params, progress, media probing. Imports nothing
else of the project, so every other layer can build on it."""
