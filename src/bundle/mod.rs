//! Bundle files: the sealed, signed, encrypted unit that carries row changes between nodes.
