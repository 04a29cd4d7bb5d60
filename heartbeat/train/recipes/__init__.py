"""One module per training recipe, each with fit(study, plan, sources) -> Fit."""
