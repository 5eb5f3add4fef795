"""The blinded physician preference study: export a self-contained page, analyze the answers.

``export_study`` pairs images of two methods (same label and prompt) into one offline HTML page
(``study.html``) and writes the unblinding key (``key.json``) beside it, never into the page.
``analyze_study`` reads the raters' exported answer files, unblinds them with the key and reports
win rates with binomial tests, Wilson intervals and inter-rater agreement.
"""

from craft.study.analyze import analyze_study
from craft.study.export import export_study

__all__ = ["analyze_study", "export_study"]
