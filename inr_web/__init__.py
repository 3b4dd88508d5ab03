"""A browser front end for the INR methods on trame-slicer: ``inr-engine web`` (needs the ``web`` extra).

It runs the Slicer modules' logic (:mod:`inr_slicer`) on trame-slicer's MRML scene; the engine
knows nothing of it (the command reaches the CLI through the ``inr_engine.commands`` entry point).
"""
