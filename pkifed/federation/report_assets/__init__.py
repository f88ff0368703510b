"""The HTML report's parts: its stylesheet, its SVG drawings and the page.

Everything is inlined into one file, with no scripts and no external fonts,
images or stylesheets, so the report opens offline and can be attached to a
ticket or mailed as is.
"""
