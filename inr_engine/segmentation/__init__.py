"""Segmentation by fitting an INR to an image's intensities (MetaSeg, NISF): the labels come out of the fit.

``segment`` is the entry point the command line and the Slicer logic call; ``volume`` prepares an
image; ``metaseg`` and ``nisf`` are the methods; ``morse`` and ``refinement`` refine boundaries;
``training`` and ``strainer`` make priors.
"""
