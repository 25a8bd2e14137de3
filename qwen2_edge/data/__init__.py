"""Text data: the built-in corpus (Python's standard library) and packing text into token chunks."""
