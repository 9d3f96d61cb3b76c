"""Figures, written as PNG (or SVG by extension) with titles, labelled axes and legends."""
