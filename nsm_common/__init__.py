"""What every stage shares and none owns: small, dependency-free helpers.

Training (:mod:`nsm_train`) and the IR, compiler and exporters (:mod:`nsm_export`) are siblings;
neither imports the other, so a helper both need lives here.
"""
