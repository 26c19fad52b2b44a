"""CLIF's augmented data (G/R/M-Aug) from segmented concepts: one file per kind.

``cutout.py`` turns a photo and its mask into a pasteable cut-out; ``m_aug.py`` composes two
concepts side by side. (G-Aug, R-Aug and the cached build are still to come: issue 11.)
"""
