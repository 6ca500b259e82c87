"""The research questions the report answers, and how it names where a figure comes from."""

from evaluation.mlflow_layout import FULL, PROXY

QUESTIONS = {
    "q1": "1. How does the mono/cross ratio move retrieval (MRR@10, mAP) on held-out and out-of-domain data?",
    "q2": "2. Does hybrid training lose ground on high-resource pairs vs monolingual-only (alpha = 1)?",
    "q3": "3. How do results scale with the number of training languages?",
    "q4": "4. How does the ratio change calibration (ECE, reliability)?",
    "q5": "5. How robust is retrieval across language pairs as the ratio moves?",
}
# Beyond the paper (issue 24): read off the same runs, answered at a glance beside the five.
BEYOND = {
    "length": "Does the references' gap open or close with training length?",
    "merge": "Does merging the two references (weight averaging) do as well as hybrid batching?",
    "schedule": "Does an alpha schedule (X-X first or X-Y first) beat a constant alpha?",
}
SOURCES = {
    PROXY: "proxy (sweep-time) evaluation",
    FULL: "full evaluation",
    "mixed": "full evaluation where present, else proxy (mixed)",
}
