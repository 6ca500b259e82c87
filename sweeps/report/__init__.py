"""The sweep report: load a sweep from MLflow (`data`), compute the comparisons (`analysis`), state the
answers to the research questions (`findings`, the answer table `glance`), draw them (`figures`) and
write one offline HTML (`html`).

Only `data` talks to MLflow; `analysis`, `findings` and `glance` are pure functions of DataFrames;
`figures` uses the object-oriented matplotlib API (no pyplot, no global state).
"""
