"""The two-alternative forced-choice (2AFC) reader study of the paper (section 2.3.2).

build.make_study builds it: section 1, pairs of a real and a generated slice at the same
position and plane, "which is real?" plus a 1-5 difficulty rating; section 2, pairs of
slices from model A and model B, "which is more realistic?". Readers get one
self-contained HTML file (page.html filled in: images embedded, no network, no
pause/resume, answers exported as CSV); the key that says which side is what is written to
a separate folder. analyze reads the key and the answer CSVs. The CLIs are
`python -m tools.make_2afc` and `python -m tools.analyze_2afc`.

What the page, the key and the answers share is defined here.
"""

DIFFICULTY = {1: "Extremely subtle", 2: "Moderately subtle", 3: "Fairly subtle",
              4: "Moderately obvious", 5: "Obvious"}
ANSWER_COLUMNS = ("study_id", "reader", "question", "section", "choice", "difficulty",
                  "response_ms")
PROMPTS = {1: "One image is from a real CT scan, the other was generated. Which one is real?",
           2: "Both images were generated. Which one looks more like a real CT?"}


class StudyError(Exception):
    """Bad study input, or answers that do not belong to the study."""
