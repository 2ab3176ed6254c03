"""An example mlprune plugin (entries in `entries`, code in `nets`, `criteria`, `blobs`)."""
