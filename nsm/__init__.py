"""The ``nsm`` command line: one entry point for train → export → compile → sim."""
