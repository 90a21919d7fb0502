"""The artifact store: content-addressed stage outputs on a disk or an object store, cached per machine."""
